//! The reconciler on every store: racing reconcilers, takeover after a crash,
//! backoff and dead letters, operator actions, crashed calls settled, mirrors.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../support/mod.rs"]
#[macro_use]
mod support;

mod ops;
mod scenarios;

/// Stamps every scenario for one backend: `$make` returns a `backend::Backend`.
macro_rules! scenarios {
    ($backend:ident => $make:expr) => {
        stamp!($backend => $make; scenarios;
            two_reconcilers_race_over_a_thousand_stale_compensations,
            eight_reconcilers_race_over_a_thousand_stale_compensations,
            a_reconciler_killed_mid_compensation_is_taken_over_after_the_lease,
            failing_twice_then_succeeding_ends_compensated_with_three_attempts,
            always_failing_ends_compensation_failed_with_its_last_error,
            operator_retry_and_resolve,
            crashed_calls_are_released_probed_or_parked,
            an_alert_cut_off_before_its_acknowledgement_is_raised_again,
            a_crashed_workflow_is_resumed_by_the_reconciler,
            a_mirror_with_injected_drift_converges,
            a_spawned_reconciler_works_in_the_background_and_stops_cleanly,
        );
    };
}

scenarios!(memory => crate::support::backend::memory());
scenarios!(sqlite => crate::support::backend::sqlite());
#[cfg(feature = "redis")]
scenarios!(redis => crate::support::backend::redis());
