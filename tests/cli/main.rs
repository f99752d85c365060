//! The operator command line, `tempox`, run as a process against a real
//! SQLite file and a real redis-server: what it prints, what it changes, and
//! how it refuses bad arguments.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../support/mod.rs"]
#[macro_use]
mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tempox::record::{ClaimRequest, Claimed, OnExpired, Transition, Transitioned};
use tempox::store::{SqliteStore, Store};
use tempox::{Fingerprint, Key, Kind, Record, RecordId, Status};

fn id(op: &str, key: &str) -> RecordId {
    RecordId::new(op, &Key::new(key).unwrap())
}

async fn claim(
    store: &dyn Store,
    id: &RecordId,
    kind: Kind,
    step: Option<(&RecordId, u32)>,
) -> Record {
    let req = ClaimRequest {
        id: id.clone(),
        kind,
        fingerprint: Fingerprint::of(&id.as_str()).unwrap(),
        input: serde_json::to_vec(&serde_json::json!({ "order": id.key() }))
            .unwrap()
            .into(),
        lease: Duration::from_secs(30),
        on_expired: OnExpired::TakeOver,
        workflow: step.map(|(w, _)| w.clone()),
        step: step.map(|(_, n)| n),
    };
    match store.claim(&req).await.unwrap() {
        Claimed::Acquired { record, .. } => record,
        other => panic!("claim of {id}: {other:?}"),
    }
}

async fn move_to(store: &dyn Store, r: Record, to: Status, error: Option<&str>) -> Record {
    let mut t = Transition::new(r.id.clone(), r.status, r.token, to);
    if to == Status::Completed {
        t.output = Some(b"\"ok\"".to_vec().into());
    }
    t.error = error.map(str::to_owned);
    match store.transition(&t).await.unwrap() {
        Transitioned::Applied(record) => record,
        other => panic!("{} to {to}: {other:?}", r.id),
    }
}

/// A workflow and its two steps, all completed (step 1's id sorts after step
/// 2's), a refund whose compensation failed and a charge whose outcome is
/// unknown: the two dead letters.
async fn seed(store: &dyn Store) {
    let flow = id("shop.checkout", "o-1");
    let w = claim(store, &flow, Kind::Workflow, None).await;
    for (op, n) in [("shop.reserve", 1), ("shop.charge", 2)] {
        let step = id(op, &format!("shop.checkout/o-1#{n}"));
        let r = claim(store, &step, Kind::Idempotent, Some((&flow, n))).await;
        move_to(store, r, Status::Completed, None).await;
    }
    move_to(store, w, Status::Completed, None).await;

    let refund = claim(store, &id("shop.refund", "ch-9"), Kind::Idempotent, None).await;
    let refund = move_to(store, refund, Status::Completed, None).await;
    let refund = move_to(store, refund, Status::Compensating, None).await;
    move_to(
        store,
        refund,
        Status::CompensationFailed,
        Some("provider down"),
    )
    .await;

    let charge = claim(store, &id("shop.charge", "o-2"), Kind::NonIdempotent, None).await;
    move_to(store, charge, Status::OutcomeUnknown, Some("lease expired")).await;
}

async fn sqlite_store(dir: &Path) -> String {
    let path = dir.join("records.db");
    seed(&SqliteStore::open(&path).unwrap()).await;
    format!("sqlite:{}", path.display())
}

/// `tempox` with `args`, `TEMPOX_STORE` unset.
fn tempox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tempox"))
        .env_remove("TEMPOX_STORE")
        .args(args)
        .output()
        .unwrap()
}

/// Its standard output, after checking it succeeded.
fn ok(args: &[&str]) -> String {
    let out = tempox(args);
    assert!(
        out.status.success(),
        "tempox {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Its standard error, after checking it failed with `code`.
fn fails(args: &[&str], code: i32) -> String {
    let out = tempox(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "tempox {args:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).unwrap()
}

/// The ids of a JSON list of records, with their statuses.
fn ids(list: &serde_json::Value) -> Vec<(String, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// What every store answers the same: lists, filters, one record with its
/// steps in step order, counts.
fn reads(store: &str) {
    let table = ok(&["--store", store, "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 1 + 5, "{table}");
    assert!(lines[0].starts_with("ID"), "{table}");
    let refund = lines
        .iter()
        .find(|l| l.starts_with("shop.refund/ch-9"))
        .unwrap();
    assert!(refund.contains("compensation_failed"), "{refund}");
    assert!(refund.ends_with("provider down"), "{refund}");

    let completed = json(&["--store", store, "--json", "list", "--status", "completed"]);
    assert_eq!(
        ids(&completed),
        [
            ("shop.charge/shop.checkout/o-1#2", "completed"),
            ("shop.checkout/o-1", "completed"),
            ("shop.reserve/shop.checkout/o-1#1", "completed"),
        ]
        .map(|(i, s)| (i.to_owned(), s.to_owned()))
    );
    // Pages of one operation's records.
    let charges = |page: &[&str]| {
        let list: &[&str] = &["--store", store, "--json", "list", "--op", "shop.charge"];
        ids(&json(&[list, page].concat()))
    };
    assert_eq!(charges(&["--limit", "1"])[0].0, "shop.charge/o-2");
    let next = charges(&["--after", "shop.charge/o-2"]);
    assert_eq!(next[0].0, "shop.charge/shop.checkout/o-1#2");

    let flow = json(&["--store", store, "--json", "show", "shop.checkout/o-1"]);
    assert_eq!(flow["kind"], "workflow");
    assert_eq!(flow["output"], "ok");
    assert_eq!(flow["input"]["order"], "o-1");
    let steps: Vec<_> = flow["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2], "steps in step order");
    let text = ok(&["--store", store, "show", "shop.checkout/o-1"]);
    assert!(text.contains("status       completed"), "{text}");
    let reserve = text.find("shop.reserve/").unwrap();
    let charge = text.find("shop.charge/").unwrap();
    assert!(reserve < charge, "{text}");

    let stats = json(&["--store", store, "--json", "stats"]);
    assert_eq!(stats["completed"], 3);
    assert_eq!(stats["compensation_failed"], 1);
    assert_eq!(stats["outcome_unknown"], 1);
    assert_eq!(stats["total"], 5);
    let text = ok(&["--store", store, "stats"]);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().eq(["total", "5"])),
        "{text}"
    );
}

/// The operator's actions write what they say, and only to the record named.
fn repairs(store: &str) {
    let dead = json(&["--store", store, "--json", "dead-letters"]);
    assert_eq!(
        ids(&dead),
        [
            ("shop.charge/o-2", "outcome_unknown"),
            ("shop.refund/ch-9", "compensation_failed"),
        ]
        .map(|(i, s)| (i.to_owned(), s.to_owned()))
    );

    let retried = json(&["--store", store, "--json", "retry", "shop.refund/ch-9"]);
    assert_eq!(retried["status"], "compensating");
    assert_eq!(retried["attempts"], 0);
    assert!(retried["note"].as_str().unwrap().contains("operator retry"));

    let note = "provider says: not charged; ticket 4411";
    let resolved = ok(&[
        "--store",
        store,
        "resolve",
        "shop.charge/o-2",
        "--note",
        note,
    ]);
    assert!(resolved.contains("status       resolved"), "{resolved}");
    assert!(resolved.contains(note), "{resolved}");
    let shown = json(&["--store", store, "--json", "show", "shop.charge/o-2"]);
    assert_eq!(shown["status"], "resolved");
    assert!(shown["note"].as_str().unwrap().contains(note));
    assert_eq!(ok(&["--store", store, "dead-letters"]), "no records\n");

    // Refused, and nothing changes.
    let err = fails(&["--store", store, "retry", "shop.checkout/o-1"], 1);
    assert_eq!(
        err,
        "tempox: cannot retry `shop.checkout/o-1`: it is completed\n"
    );
    let err = fails(
        &["--store", store, "resolve", "shop.x/none", "--note", "n"],
        1,
    );
    assert_eq!(err, "tempox: no record `shop.x/none`\n");
    let err = fails(&["--store", store, "show", "shop.x/none"], 1);
    assert_eq!(err, "tempox: no record `shop.x/none`\n");
    let flow = json(&["--store", store, "--json", "show", "shop.checkout/o-1"]);
    assert_eq!(flow["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_repairs_a_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path()).await;
    reads(&store);
    repairs(&store);
    // A bare path is a SQLite file too, and TEMPOX_STORE names the store.
    let path = dir.path().join("records.db");
    let out = Command::new(env!("CARGO_BIN_EXE_tempox"))
        .env("TEMPOX_STORE", &path)
        .args(["--json", "stats"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["resolved"], 1);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_repairs_a_redis_store() {
    use tempox::store::RedisStore;
    let server = tokio::task::spawn_blocking(support::redis::RedisServer::start)
        .await
        .unwrap();
    let store = RedisStore::builder(&server.url())
        .prefix("shop")
        .connect()
        .await
        .unwrap();
    seed(&store).await;
    let url = server.url();
    let stats = json(&["--store", &url, "--prefix", "shop", "--json", "stats"]);
    assert_eq!(stats["total"], 5);
    // Under the default prefix there is nothing.
    assert_eq!(json(&["--store", &url, "--json", "stats"])["total"], 0);
    // The rest as on SQLite, through a store whose prefix is the default.
    let plain = RedisStore::connect(&server.url()).await.unwrap();
    seed(&plain).await;
    reads(&url);
    repairs(&url);
}

#[test]
fn bad_arguments_are_named_and_change_nothing() {
    let err = fails(&["list"], 2);
    assert!(err.contains("--store <STORE>"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo.db");
    let store = format!("sqlite:{}", missing.display());
    let err = fails(&["--store", &store, "list"], 1);
    assert!(err.contains("no SQLite store at"), "{err}");
    assert!(err.contains("the file does not exist"), "{err}");
    assert!(!missing.exists(), "a missing store was created");

    let err = fails(&["--store", &store, "show", "no-slash"], 2);
    assert!(
        err.contains("`no-slash` is not a record id: expected `<operation>/<key>`"),
        "{err}"
    );
    let err = fails(&["--store", &store, "list", "--status", "done"], 2);
    assert!(
        err.contains("unknown status `done`; expected one of pending"),
        "{err}"
    );
    let err = fails(&["--store", &store, "list", "--limit", "0"], 2);
    assert!(err.contains("0 is not in 1..=10000"), "{err}");
    let err = fails(&["--store", &store, "resolve", "a/b"], 2);
    assert!(err.contains("--note <NOTE>"), "{err}");
    let err = fails(&["--store", &store, "forget", "a/b"], 2);
    assert!(err.contains("unrecognized subcommand 'forget'"), "{err}");
    let err = fails(&["--store", &store, "--prefix", "p", "list"], 1);
    assert!(err.contains("`--prefix` is for Redis stores"), "{err}");
    let err = fails(&["--store", "redis//127.0.0.1:1", "list"], 1);
    assert!(
        err.contains("no SQLite store at redis//127.0.0.1:1"),
        "{err}"
    );
    let err = fails(&["--store", "redis://127.0.0.1:1/x", "list"], 1);
    assert!(err.contains("invalid redis url"), "{err}");
}
