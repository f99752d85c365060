//! The reconciler on every store: racing reconcilers, takeover after a crash,
//! backoff and dead letters, operator actions, crashed calls settled, mirrors.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../support/mod.rs"]
#[macro_use]
mod support;

mod ops;
mod scenarios;
mod timing;

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

/// Stamps the timing scenarios for one backend.
macro_rules! timing {
    ($backend:ident => $make:expr) => {
        stamp!($backend => $make; timing;
            a_holder_that_renews_after_the_listing_keeps_its_claim,
            a_running_compensation_renewed_late_is_not_claimed_again,
            a_clock_ahead_takes_over_nothing_held,
            records_a_pass_cannot_settle_do_not_starve_the_rest,
            another_services_records_are_left_alone,
            a_call_that_crashes_every_run_is_parked,
            a_renewal_held_by_the_store_does_not_stall_the_body,
            settings_at_their_limits_and_a_pass_that_panics,
            a_completed_record_without_its_output_is_corrupt,
        );
    };
}

mod timing_on {
    timing!(memory => crate::support::backend::memory());
    timing!(sqlite => crate::support::backend::sqlite());
    #[cfg(feature = "redis")]
    timing!(redis => crate::support::backend::redis());
    // Item 14: on a Cluster each record's lease is checked by the node that
    // holds it, whatever clock the runtime read.
    #[cfg(feature = "redis")]
    stamp!(redis_cluster => crate::support::backend::redis_cluster(); timing;
        a_clock_ahead_takes_over_nothing_held,
        a_holder_that_renews_after_the_listing_keeps_its_claim,
    );
}
