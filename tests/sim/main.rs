//! The recovery simulation: many seeded schedules of several processes on
//! one store, with crashes, stalls, reconciler passes, retention, operator
//! actions and store faults in between; the invariants checked against a
//! ledger of effects. A failing schedule names its seed and the command that
//! replays it. `benches/soak.rs` runs the same schedules by the hundred
//! thousand.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../support/mod.rs"]
#[macro_use]
mod support;

mod ops;
mod world;

use world::{Backend, run_many};

fn check(backend: Backend, first: u64, count: u64, steps: usize, url: Option<&str>) {
    // More schedules when hunting (`TEMPOX_SIM_SCHEDULES`).
    let count = std::env::var("TEMPOX_SIM_SCHEDULES")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|_| count > 1)
        .unwrap_or(count);
    let (total, failed) = run_many(backend, first, count, steps, url);
    eprintln!(
        "{}: {count} schedules, {} crashes injected, {} calls, {} effects, {} passes, {} violations",
        backend.name(),
        total.crashes,
        total.calls,
        total.effects,
        total.passes,
        total.violations.len()
    );
    assert!(
        total.crashes > 0 && total.effects > 0,
        "the schedules did nothing"
    );
    if let Some((seed, violations)) = failed.first() {
        panic!(
            "{} schedule(s) broke an invariant; the first, seed {seed}:\n  {}\nreplay it with:\n  {}",
            failed.len(),
            violations.join("\n  "),
            world::replay_command(backend, *seed, steps)
        );
    }
}

#[test]
fn schedules_on_memory() {
    check(Backend::Memory, 0, 300, 80, None);
}

#[test]
fn schedules_on_sqlite() {
    check(Backend::Sqlite, 0, 30, 60, None);
}

#[test]
fn schedules_on_redis() {
    let server = support::redis::RedisServer::start();
    check(Backend::Redis, 0, 12, 40, Some(&server.url()));
}

/// Replays one schedule: `TEMPOX_SIM_STORE` (memory, sqlite or redis),
/// `TEMPOX_SIM_SEED` and `TEMPOX_SIM_STEPS`, as a failing schedule prints
/// them. Without them it replays seed 0 on memory twice and checks that both
/// runs did the same.
#[test]
fn replay() {
    let var = |name: &str| std::env::var(name).ok();
    let Some(seed) = var("TEMPOX_SIM_SEED").and_then(|s| s.parse::<u64>().ok()) else {
        let a = world::Sim::new(Backend::Memory, 0, 3, None).run(80);
        let b = world::Sim::new(Backend::Memory, 0, 3, None).run(80);
        assert_eq!(
            (a.crashes, a.calls, a.effects, a.passes),
            (b.crashes, b.calls, b.effects, b.passes),
            "one seed, two schedules"
        );
        assert!(a.violations.is_empty(), "{:?}", a.violations);
        return;
    };
    let backend = var("TEMPOX_SIM_STORE")
        .and_then(|s| Backend::parse(&s))
        .unwrap_or(Backend::Memory);
    let steps = var("TEMPOX_SIM_STEPS")
        .and_then(|s| s.parse().ok())
        .unwrap_or(80);
    let server = (backend == Backend::Redis).then(support::redis::RedisServer::start);
    let url = server.as_ref().map(|s| s.url());
    check(backend, seed, 1, steps, url.as_deref());
}
