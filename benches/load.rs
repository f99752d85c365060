//! Load benchmark: tempox calls per second on the durable stores, next to the raw
//! limit of the same store measured in the same run.
//!
//! ```text
//! cargo bench --bench load                       # every store, 3 s per row
//! cargo bench --bench load -- --store sqlite --seconds 5
//! ```
//!
//! - `fresh`: every call has a new key (claim + record outcome).
//! - `replay`: calls cycle over keys already recorded.
//! - SQLite raw: the same rows inserted (claim) and updated (outcome) with
//!   rusqlite in transactions of `concurrency` rows, `synchronous = FULL`, no
//!   tempox logic.
//!
//! Ratios are what to compare across machines; absolute figures depend on the
//! disk and on what else runs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tempox::store::SqliteStore;
use tempox::{Runtime, idempotent};

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

#[idempotent(key = key, name = "load.call")]
async fn call(key: u64, payload: &str) -> Result<u64, LoadError> {
    Ok(key + payload.len() as u64)
}

struct Args {
    stores: Vec<String>,
    seconds: f64,
}

fn args() -> Args {
    let mut stores = vec!["sqlite".to_owned()];
    let mut seconds = 3.0;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--store" => stores = vec![it.next().expect("--store needs a value")],
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds needs a number")
            }
            "--bench" => {}
            other => panic!("unknown argument {other}; use --store sqlite|redis|all, --seconds N"),
        }
    }
    if stores == ["all"] {
        stores = vec!["sqlite".into(), "redis".into()];
    }
    Args { stores, seconds }
}

/// Runs `concurrency` tasks calling `f(task, i)` until `seconds` pass; calls/s.
async fn drive<F, Fut>(rt: &Runtime, concurrency: u64, seconds: f64, f: F) -> f64
where
    F: Fn(u64, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<u64, LoadError>> + Send,
{
    let f = Arc::new(f);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (rt, f, done) = (rt.clone(), f.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while Instant::now() < deadline {
                    rt.scope(f(t, i)).await.unwrap();
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn row(store: &str, calls: &str, concurrency: u64, tempox: f64, raw: f64, target: Option<f64>) {
    let ratio = tempox / raw;
    let verdict = match target {
        Some(t) if ratio >= t => format!(">= {t:.1} ok"),
        Some(t) => format!(">= {t:.1} MISSED"),
        None => "-".into(),
    };
    println!(
        "{store:<8} {calls:<7} {concurrency:>11} {tempox:>14.0} {raw:>14.0} {ratio:>7.2}  {verdict}"
    );
}

/// The raw SQLite limit: `concurrency` claims per transaction, then their
/// outcomes in another, with plain rusqlite.
fn raw_sqlite(path: &std::path::Path, concurrency: u64, seconds: f64) -> f64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE raw (id TEXT PRIMARY KEY, op TEXT, kind TEXT, fingerprint BLOB, input BLOB,
            output BLOB, error TEXT, status TEXT, token INTEGER, lease_until INTEGER, attempts INTEGER,
            workflow TEXT, step INTEGER, created_at INTEGER, updated_at INTEGER, due_at INTEGER,
            expires_at INTEGER, note TEXT) WITHOUT ROWID;
         CREATE INDEX raw_due ON raw (due_at) WHERE due_at IS NOT NULL;
         CREATE INDEX raw_expiry ON raw (expires_at) WHERE expires_at IS NOT NULL;
         CREATE INDEX raw_status ON raw (status, id);
         CREATE INDEX raw_op ON raw (op, id);",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let tx = conn.unchecked_transaction().unwrap();
        for i in n..n + concurrency {
            tx.execute(
                "INSERT INTO raw VALUES (?1, 'load.call', 'idempotent', ?2, ?3, NULL, NULL, 'pending', ?4, ?5, 1, NULL, NULL, ?5, ?5, ?5, NULL, NULL)",
                rusqlite::params![format!("load.call/{i}"), &[7u8; 16][..], &b"[1,\"payload\"]"[..], i as i64, i as i64],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for i in n..n + concurrency {
            tx.execute(
                "UPDATE raw SET status = 'completed', output = ?2, lease_until = NULL, due_at = NULL, expires_at = ?3 WHERE id = ?1",
                rusqlite::params![format!("load.call/{i}"), &b"8"[..], i as i64],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        n += concurrency;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The raw SQLite replay limit: point reads by id on one connection.
fn raw_sqlite_reads(path: &std::path::Path, keys: u64, seconds: f64) -> f64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut n = 0u64;
    let mut stmt = conn
        .prepare("SELECT * FROM tempox_records WHERE id = ?1")
        .unwrap();
    while Instant::now() < deadline {
        let id = format!("load.call/{}", n % keys);
        let found = stmt.query_row([id], |r| r.get::<_, String>(0)).ok();
        assert!(found.is_some());
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn sqlite(seconds: f64) {
    for concurrency in [1u64, 64] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("load.db");
        let rt = Runtime::builder()
            .store(SqliteStore::open(&path).unwrap())
            .build()
            .unwrap();
        let fresh = drive(&rt, concurrency, seconds, move |t, i| {
            call(i * 1024 + t, "payload")
        })
        .await;
        let raw = raw_sqlite(&dir.path().join("raw.db"), concurrency, seconds);
        row("sqlite", "fresh", concurrency, fresh, raw, Some(0.6));
    }
    for concurrency in [1u64, 64] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("load.db");
        let rt = Runtime::builder()
            .store(SqliteStore::open(&path).unwrap())
            .build()
            .unwrap();
        let keys = 1_000;
        rt.scope(async {
            for k in 0..keys {
                call(k, "payload").await.unwrap();
            }
        })
        .await;
        let replay = drive(&rt, concurrency, seconds, move |t, i| {
            call((t * 7 + i) % keys, "payload")
        })
        .await;
        let raw = raw_sqlite_reads(&path, keys, seconds);
        row("sqlite", "replay", concurrency, replay, raw, None);
    }
}

fn main() {
    let args = args();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{:<8} {:<7} {:>11} {:>14} {:>14} {:>7}  target",
        "store", "calls", "concurrency", "tempox/s", "raw/s", "ratio"
    );
    for store in &args.stores {
        match store.as_str() {
            "sqlite" => tokio.block_on(sqlite(args.seconds)),
            other => panic!("unknown store {other}"),
        }
    }
}
