//! The recovery simulation by the hundred thousand: the schedules of
//! `tests/sim` (several processes on one store, crashes, stalls, reconciler
//! passes, retention, operator actions, store faults) run in threads of
//! their own, then a table of what they did and what broke.
//!
//! ```text
//! cargo bench --features redis --bench soak -- --memory 100000 --sqlite 2000 --redis 2000
//! ```
//!
//! Options: `--memory N`, `--sqlite N`, `--redis N` (schedules per store; 0
//! skips one), `--steps N` (per schedule, default 80; 40 on Redis), `--first
//! SEED` (default 1 000 000, past the suite's seeds), `--threads N` (default:
//! the cores; Redis schedules mostly wait, so twice that for them). A
//! violation prints its seed and the command that replays it, and the run
//! exits 1.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../tests/support/mod.rs"]
#[macro_use]
#[allow(unused_macros)]
mod support;

#[path = "../tests/sim/ops.rs"]
mod ops;
#[path = "../tests/sim/world.rs"]
mod world;

use std::process::ExitCode;
use std::time::Instant;

use world::{Backend, Outcome};

struct Args {
    counts: Vec<(Backend, u64)>,
    steps: Option<usize>,
    first: u64,
    threads: usize,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        counts: vec![
            (Backend::Memory, 100_000),
            (Backend::Sqlite, 2_000),
            (Backend::Redis, 2_000),
        ],
        steps: None,
        first: 1_000_000,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value"))?
                .parse::<u64>()
                .map_err(|e| format!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--memory" | "--sqlite" | "--redis" => {
                let backend = Backend::parse(&flag[2..]).unwrap();
                let n = value()?;
                for (b, count) in &mut args.counts {
                    if *b == backend {
                        *count = n;
                    }
                }
            }
            "--steps" => args.steps = Some(usize::try_from(value()?).map_err(|e| e.to_string())?),
            "--first" => args.first = value()?,
            "--threads" => {
                args.threads = usize::try_from(value()?.max(1)).map_err(|e| e.to_string())?
            }
            other => {
                return Err(format!(
                    "unknown option `{other}`; see the header of benches/soak.rs"
                ));
            }
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for &(backend, count) in &args.counts {
        if count == 0 {
            continue;
        }
        let server = (backend == Backend::Redis).then(support::redis::RedisServer::start);
        let url = server.as_ref().map(|s| s.url());
        let steps = args
            .steps
            .unwrap_or(if backend == Backend::Redis { 40 } else { 80 });
        let threads = if backend == Backend::Redis {
            args.threads * 2
        } else {
            args.threads
        };
        let started = Instant::now();
        let per = count.div_ceil(threads as u64);
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads as u64)
                .map(|t| {
                    let first = args.first + t * per;
                    let n = per.min((args.first + count).saturating_sub(first));
                    let url = url.clone();
                    scope.spawn(move || world::run_many(backend, first, n, steps, url.as_deref()))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut total = Outcome::default();
        for (out, failed) in results {
            total.crashes += out.crashes;
            total.calls += out.calls;
            total.effects += out.effects;
            total.passes += out.passes;
            total.violations.extend(out.violations);
            for (seed, v) in failed {
                failures.push((backend, seed, steps, v));
            }
        }
        rows.push((backend, count, total, started.elapsed()));
    }
    println!(
        "| store | schedules | crashes injected | calls | effects | passes | violations | seconds |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (backend, count, t, took) in &rows {
        println!(
            "| {} | {count} | {} | {} | {} | {} | {} | {:.0} |",
            backend.name(),
            t.crashes,
            t.calls,
            t.effects,
            t.passes,
            t.violations.len(),
            took.as_secs_f64()
        );
    }
    if failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    for (backend, seed, steps, violations) in failures.iter().take(10) {
        eprintln!(
            "{} seed {seed}:\n  {}",
            backend.name(),
            violations.join("\n  ")
        );
        eprintln!(
            "  replay: {}",
            world::replay_command(*backend, *seed, *steps)
        );
    }
    ExitCode::FAILURE
}
