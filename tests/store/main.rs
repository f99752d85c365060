//! The store conformance suite: every promise of the `Store` trait, checked
//! against every backend. Each check is written once (`checks.rs`) and stamped
//! into one test per backend, so a failure names both.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../support/mod.rs"]
#[macro_use]
mod support;

mod checks;
#[cfg(feature = "redis")]
mod faults;
mod fixture;
#[cfg(feature = "redis")]
mod replicas;
mod sqlite_only;

/// Stamps every check for one backend: `$make` returns a `fixture::Fixture`.
macro_rules! all_checks {
    ($backend:ident => $make:expr) => {
        stamp!($backend => $make; checks;
            claim_writes_a_pending_record_with_a_lease,
            claim_is_atomic_under_contention,
            claim_is_atomic_across_handles,
            claim_answers_existing_records_without_writing,
            claim_takes_a_released_key_for_any_request,
            claim_takes_over_an_expired_lease_with_a_newer_token,
            claim_never_takes_over_for_other_arguments,
            claim_parks_an_expired_non_idempotent_call,
            transition_is_a_compare_and_set_on_status_and_token,
            apply_is_the_same_compare_and_set_without_the_record,
            apply_writes_what_transition_writes,
            transition_refuses_what_the_table_does_not_allow,
            transition_records_outcome_retention_and_due_time,
            tokens_increase_across_takeovers_and_recreation,
            renew_extends_only_the_holders_lease,
            due_lists_expired_leases_and_retries_earliest_first,
            expire_removes_only_final_records_past_retention,
            records_round_trip_byte_for_byte,
            list_filters_and_pages_by_id,
            a_takeover_applies_only_once_the_lease_ran_out,
            retry_after_reschedules_without_changing_the_record,
        );
    };
}

all_checks!(memory => crate::fixture::memory());
all_checks!(sqlite => crate::fixture::sqlite());
#[cfg(feature = "redis")]
all_checks!(redis => crate::fixture::redis());
#[cfg(feature = "redis")]
all_checks!(redis_replicated => crate::fixture::redis_replicated());
#[cfg(feature = "redis")]
all_checks!(redis_cluster => crate::fixture::redis_cluster());
#[cfg(feature = "redis-tls")]
all_checks!(redis_tls => crate::fixture::redis_tls());
#[cfg(feature = "redis-tls")]
all_checks!(redis_cluster_tls => crate::fixture::redis_cluster_tls());
