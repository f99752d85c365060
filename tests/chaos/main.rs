//! Crash tests with real processes: a child process is killed with SIGKILL
//! mid-load, and what it left on disk is checked from a fresh process state.
//!
//! This binary is its own harness: run without arguments it is the parent and
//! runs every scenario; with `TEMPOX_CHAOS_CHILD` set it is the child doing the
//! load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempox::store::{Query, SqliteStore, Store};
use tempox::{Runtime, Status, idempotent};

const CHILD_ENV: &str = "TEMPOX_CHAOS_CHILD";

#[derive(Debug, thiserror::Error)]
enum ChaosError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent(key = key, name = "chaos.step")]
async fn step(key: String) -> Result<String, ChaosError> {
    // The claim is durable before the body runs (write-ahead): say so.
    line(&format!("claimed {key}"));
    tokio::task::yield_now().await;
    Ok(format!("done-{key}"))
}

fn line(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// The child: calls `step` for keys 0.. from 8 tasks until it is killed.
fn child(path: &str) {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let rt = Runtime::builder()
            .store(SqliteStore::open(path).unwrap())
            .build()
            .unwrap();
        let tasks: Vec<_> = (0..8u32)
            .map(|t| {
                let rt = rt.clone();
                tokio::spawn(async move {
                    for i in 0..100_000u32 {
                        let key = format!("k{}", i * 8 + t);
                        match rt.scope(step(key.clone())).await {
                            Ok(out) => line(&format!("completed {key} {out}")),
                            Err(e) => line(&format!("failed {key} {e}")),
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// Kills a child mid-load; every claim it reported is on disk and every call
/// it saw complete is recorded as completed with its output.
fn sqlite_process_killed_mid_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chaos.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut claimed = BTreeSet::new();
    let mut completed = BTreeMap::new();
    let started = Instant::now();
    let mut killed = false;
    for l in stdout.lines() {
        let l = l.unwrap();
        let mut parts = l.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("claimed"), Some(k), None) => {
                claimed.insert(k.to_owned());
            }
            (Some("completed"), Some(k), Some(out)) => {
                completed.insert(k.to_owned(), out.to_owned());
            }
            _ => panic!("child reported: {l}"),
        }
        if !killed && (completed.len() >= 2_000 || started.elapsed() > Duration::from_secs(20)) {
            child.kill().unwrap(); // SIGKILL: no destructor, no flush, no goodbye
            killed = true;
        }
    }
    child.wait().unwrap();
    assert!(killed, "the child finished before it could be killed");
    assert!(
        completed.len() >= 100,
        "too little load before the kill: {}",
        completed.len()
    );

    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let store = SqliteStore::open(&path).unwrap();
        let mut on_disk = BTreeMap::new();
        let mut query = Query { op: Some("chaos.step".into()), limit: 10_000, ..Query::default() };
        loop {
            let page = store.list(&query).await.unwrap();
            query.after = page.last().map(|r| r.id.clone());
            let done = page.len() < query.limit;
            on_disk.extend(page.into_iter().map(|r| (r.key().to_owned(), r)));
            if done {
                break;
            }
        }
        for key in &claimed {
            assert!(on_disk.contains_key(key), "claim of {key} was lost");
        }
        for (key, out) in &completed {
            let r = &on_disk[key];
            assert_eq!(r.status, Status::Completed, "{key}");
            let recorded: String = serde_json::from_slice(r.output.as_deref().unwrap()).unwrap();
            assert_eq!(&recorded, out, "{key}");
        }
        let pending = on_disk.values().filter(|r| r.status == Status::Pending).count();
        println!(
            "sqlite_process_killed_mid_load: {} claimed, {} completed before SIGKILL; on disk {} records ({} pending): ok",
            claimed.len(),
            completed.len(),
            on_disk.len(),
            pending
        );
    });
}

fn main() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        child(&path);
        return;
    }
    sqlite_process_killed_mid_load();
}
