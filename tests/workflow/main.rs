//! Workflows on every durable store: checkpointed steps, reverse-order
//! rollback, crash recovery in a fresh runtime, replay, nondeterminism.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../support/mod.rs"]
#[macro_use]
mod support;

mod recovery;
mod scenarios;
mod shop;

/// Stamps every scenario for one backend: `$make` returns a `shop::Backend`.
macro_rules! scenarios {
    ($backend:ident => $make:expr) => {
        stamp!($backend => $make; scenarios;
            failing_at_step_three_compensates_two_then_one,
            the_same_key_twice_replays,
            concurrent_runs_of_one_key_execute_once,
            a_changed_step_is_non_deterministic,
            crash_anywhere_then_resume_in_a_fresh_runtime,
            crash_anywhere_then_roll_back_in_a_fresh_runtime,
            cancelling_the_caller_during_rollback_does_not_stop_it,
            a_dead_lettered_compensation_stops_the_rollback_until_an_operator_acts,
            rollback_continue_goes_past_a_dead_letter,
            a_nested_workflow_is_a_step_and_is_rolled_back_with_its_parent,
        );
    };
}

/// Stamps the recovery scenarios for one backend.
macro_rules! recovery {
    ($backend:ident => $make:expr) => {
        stamp!($backend => $make; recovery;
            a_step_outlives_its_retention_while_its_workflow_is_not_done,
            a_parked_rollback_goes_on_after_the_operator_retries,
            a_parked_rollback_goes_on_after_the_operator_resolves,
            a_resumed_workflow_waits_for_a_step_whose_lease_ends_later,
            a_pending_step_under_a_stopped_rollback_is_settled,
            a_rollback_whose_step_is_resolved_meanwhile_goes_on,
            a_workflow_that_crashes_every_run_is_parked,
            a_workflow_past_its_deadline_is_rolled_back,
            a_crashed_workflow_past_its_deadline_is_rolled_back_not_resumed,
        );
    };
}

scenarios!(memory => crate::shop::memory());
scenarios!(sqlite => crate::shop::sqlite());
#[cfg(feature = "redis")]
scenarios!(redis => crate::shop::redis());

mod recovery_on {
    recovery!(memory => crate::shop::memory());
    recovery!(sqlite => crate::shop::sqlite());
    #[cfg(feature = "redis")]
    recovery!(redis => crate::shop::redis());
}
