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

/// A workflow and its three steps, all completed (step 1's id sorts after
/// step 2's; step 3 is a workflow with a step of its own), a refund whose
/// compensation failed and a charge whose outcome is unknown: the two dead
/// letters. Seven records.
async fn seed(store: &dyn Store) {
    let flow = id("shop.checkout", "o-1");
    let w = claim(store, &flow, Kind::Workflow, None).await;
    for (op, n) in [("shop.reserve", 1), ("shop.charge", 2)] {
        let step = id(op, &format!("shop.checkout/o-1#{n}"));
        let r = claim(store, &step, Kind::Idempotent, Some((&flow, n))).await;
        move_to(store, r, Status::Completed, None).await;
    }
    let gift = id("shop.gift", "shop.checkout/o-1#3");
    let g = claim(store, &gift, Kind::Workflow, Some((&flow, 3))).await;
    let wrap = id("shop.wrap", "shop.gift/shop.checkout/o-1#3#1");
    let r = claim(store, &wrap, Kind::Idempotent, Some((&gift, 1))).await;
    move_to(store, r, Status::Completed, None).await;
    move_to(store, g, Status::Completed, None).await;
    move_to(store, w, Status::Completed, None).await;

    let refund = claim(store, &id("shop.refund", "ch-9"), Kind::Idempotent, None).await;
    let refund = move_to(store, refund, Status::Completed, None).await;
    let refund = move_to(store, refund, Status::Compensating, None).await;
    let error = Some("provider down\nsee \u{1b}[31mlog");
    move_to(store, refund, Status::CompensationFailed, error).await;

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
        .env_remove("TEMPOX_PREFIX")
        .env_remove("TEMPOX_TLS_CA")
        .env_remove("TEMPOX_TLS_CERT")
        .env_remove("TEMPOX_TLS_KEY")
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

/// What every store answers the same: lists, filters, pages, one record with
/// its steps in step order, every JSON key, counts.
fn reads(store: &str) {
    let table = ok(&["--store", store, "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 1 + 7, "{table}");
    assert!(lines[0].starts_with("ID"), "{table}");
    let refund = lines
        .iter()
        .find(|l| l.starts_with("shop.refund/ch-9"))
        .unwrap();
    assert!(refund.contains("compensation_failed"), "{refund}");
    // Control characters are written as escapes, on one line.
    assert!(
        refund.ends_with(r"provider down\nsee \u{1b}[31mlog"),
        "{refund}"
    );
    let first = ok(&["--store", store, "list", "--limit", "2"]);
    assert!(
        first.ends_with("(more may follow: --after 'shop.charge/shop.checkout/o-1#2')\n"),
        "{first}"
    );

    let completed = json(&["--store", store, "--json", "list", "--status", "completed"]);
    let expected = [
        "shop.charge/shop.checkout/o-1#2",
        "shop.checkout/o-1",
        "shop.gift/shop.checkout/o-1#3",
        "shop.reserve/shop.checkout/o-1#1",
        "shop.wrap/shop.gift/shop.checkout/o-1#3#1",
    ];
    assert_eq!(
        ids(&completed),
        expected.map(|i| (i.to_owned(), "completed".to_owned()))
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
    assert_eq!(steps, [1, 2, 3], "steps in step order");
    // Every key is there, null when the record has none.
    for key in [
        "lease_until",
        "due_at",
        "error",
        "note",
        "input_hex",
        "output_hex",
    ] {
        assert!(
            flow.get(key).is_some_and(serde_json::Value::is_null),
            "{key}: {flow}"
        );
    }
    assert_eq!(flow["fingerprint"].as_str().unwrap().len(), 32);
    let (created, updated) = (&flow["created_at"], &flow["updated_at"]);
    assert!(created["utc"].as_str().unwrap().ends_with('Z'), "{created}");
    assert!(updated["utc"].as_str().unwrap().ends_with('Z'), "{updated}");
    // A workflow that is a step has steps of its own; a plain record none.
    let gift = json(&[
        "--store",
        store,
        "--json",
        "show",
        "shop.gift/shop.checkout/o-1#3",
    ]);
    assert_eq!(
        gift["steps"][0]["id"],
        "shop.wrap/shop.gift/shop.checkout/o-1#3#1"
    );
    let charge = json(&["--store", store, "--json", "show", "shop.charge/o-2"]);
    assert!(
        charge.get("steps").is_some_and(serde_json::Value::is_null),
        "{charge}"
    );
    let text = ok(&["--store", store, "show", "shop.checkout/o-1"]);
    assert!(text.contains("status       completed"), "{text}");
    let reserve = text.find("shop.reserve/").unwrap();
    let charge = text.find("shop.charge/").unwrap();
    assert!(reserve < charge, "{text}");
    let text = ok(&["--store", store, "show", "shop.refund/ch-9"]);
    assert!(
        text.contains("error        provider down\\nsee \\u{1b}[31mlog\n"),
        "{text}"
    );

    let stats = json(&["--store", store, "--json", "stats"]);
    assert_eq!(stats["completed"], 5);
    assert_eq!(stats["compensation_failed"], 1);
    assert_eq!(stats["outcome_unknown"], 1);
    assert_eq!(stats["total"], 7);
    let text = ok(&["--store", store, "stats"]);
    let total = text.lines().last().unwrap();
    assert_eq!(total.split_whitespace().collect::<Vec<_>>(), ["total", "7"]);
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
    let err = fails(
        &[
            "--store",
            store,
            "resolve",
            "shop.charge/o-2",
            "--note",
            " ",
        ],
        2,
    );
    assert!(err.contains("the note is empty"), "{err}");
    // `--store` may come after the command too.
    let resolved = ok(&[
        "resolve",
        "shop.charge/o-2",
        "--note",
        note,
        "--retention",
        "1h",
        "--store",
        store,
    ]);
    assert!(resolved.contains("status       resolved"), "{resolved}");
    assert!(resolved.contains(note), "{resolved}");
    let shown = json(&["--store", store, "--json", "show", "shop.charge/o-2"]);
    assert_eq!(shown["status"], "resolved");
    assert!(shown["note"].as_str().unwrap().contains(note));
    let ms = |key: &str| shown[key]["ms"].as_u64().unwrap();
    assert_eq!(
        ms("expires_at") - ms("updated_at"),
        3_600_000,
        "kept for --retention"
    );
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

    // `recover` runs a workflow's code: the stock binary links none, and
    // says where to run it from; nothing changes.
    let out = tempox(&["--store", &store, "recover", "shop.checkout/o-1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no workflow named `shop.checkout` is linked into this program")
            && stderr.contains("recover it from a process that links it"),
        "{stderr}"
    );
    assert!(ok(&["--store", &store, "show", "shop.checkout/o-1"]).contains("completed"));
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_repairs_a_redis_store() {
    use tempox::store::RedisStore;
    let server = tokio::task::spawn_blocking(support::redis::RedisServer::start)
        .await
        .unwrap();
    let url = server.url();
    // An empty server: nothing to read, and nothing is written.
    let err = fails(&["--store", &url, "stats"], 1);
    assert!(
        err.contains("holds no tempox data under prefix `tempox`"),
        "{err}"
    );
    assert_eq!(server.cli(&["DBSIZE"]).trim(), "0");

    let store = RedisStore::builder(&url)
        .prefix("shop")
        .connect()
        .await
        .unwrap();
    seed(&store).await;
    let keys = server.cli(&["DBSIZE"]);
    let stats = json(&["--store", &url, "--prefix", "shop", "--json", "stats"]);
    assert_eq!(stats["total"], 7);
    // A mistyped prefix is an error, not an empty store, and writes nothing.
    let err = fails(&["--store", &url, "--prefix", "shopp", "list"], 1);
    assert!(err.contains("no tempox data under prefix `shopp`"), "{err}");
    let err = fails(
        &[
            "--store",
            &url,
            "--prefix",
            "shop",
            "--buckets",
            "8",
            "list",
        ],
        1,
    );
    assert!(err.contains("written with 16 buckets"), "{err}");
    assert_eq!(server.cli(&["DBSIZE"]), keys);

    // The rest as on SQLite, through the default prefix.
    let plain = RedisStore::connect(&url).await.unwrap();
    seed(&plain).await;
    reads(&url);
    repairs(&url);
}

/// With `--wait-replicas`, a repair is reported done only once a replica
/// holds it: without one it fails and says so; with one it is done and on the
/// replica. A count of 0 or the option on a SQLite file are bad arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repairs_wait_for_replicas_when_asked() {
    use support::redis::RedisServer;
    use tempox::store::RedisStore;
    let primary = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let url = primary.url();
    let store = RedisStore::connect(&url).await.unwrap();
    seed(&store).await;

    let err = fails(
        &[
            "--store",
            &url,
            "--wait-replicas",
            "1",
            "retry",
            "shop.refund/ch-9",
        ],
        1,
    );
    assert!(
        err.contains("but 0 of the 1 replica(s) it must wait for"),
        "{err}"
    );
    assert!(err.contains("`--wait-replicas`"), "{err}");

    let (_primary, replica) = tokio::task::spawn_blocking(move || {
        let replica = RedisServer::start_replica_of(&primary);
        (primary, replica)
    })
    .await
    .unwrap();
    let resolved = ok(&[
        "--store",
        &url,
        "--wait-replicas",
        "1",
        "resolve",
        "shop.charge/o-2",
        "--note",
        "checked with the provider",
    ]);
    assert!(resolved.contains("status       resolved"), "{resolved}");
    let key = store.record_key(&id("shop.charge", "o-2"));
    assert_eq!(replica.cli(&["HGET", &key, "status"]).trim(), "resolved");

    let err = fails(&["--store", &url, "--wait-replicas", "0", "stats"], 2);
    assert!(err.contains("0 replicas"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_store(dir.path()).await;
    let err = fails(&["--store", &db, "--wait-replicas", "1", "stats"], 2);
    assert!(
        err.contains("`--wait-replicas` is for Redis stores"),
        "{err}"
    );
}

/// A `rediss://` server is read through TLS: its authority given with
/// `--tls-ca`, a client certificate with `--tls-cert` and `--tls-key` when
/// the server asks for one; files that cannot be read are bad arguments.
#[cfg(feature = "redis-tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_a_redis_store_over_tls() {
    use support::redis::{RedisServer, Tls};
    use tempox::store::RedisStore;
    let server = tokio::task::spawn_blocking(|| RedisServer::start_tls(Tls::new(true)))
        .await
        .unwrap();
    let tls = server.tls().unwrap().clone();
    let store = RedisStore::builder(&server.url())
        .tls_root_certificates(tls.ca.clone())
        .tls_client_certificate(tls.client_cert.clone(), tls.client_key.clone())
        .connect()
        .await
        .unwrap();
    seed(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let (ca, cert, key) = (
        file("ca.pem", &tls.ca),
        file("client.pem", &tls.client_cert),
        file("client.key", &tls.client_key),
    );
    let url = server.url();
    let tls_args: &[&str] = &[
        "--store",
        &url,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    let stats = json(&[tls_args, &["--json", "stats"]].concat());
    assert_eq!(stats["total"], 7);
    // The system's authorities do not know this server's.
    let err = fails(&["--store", &url, "stats"], 1);
    assert!(err.contains("invalid peer certificate"), "{err}");
    // The server asks for a client certificate.
    let err = fails(&["--store", &url, "--tls-ca", &ca, "stats"], 1);
    assert!(err.contains("`tls_client_certificate`"), "{err}");
    // Bad arguments: a file that is not there, a certificate without its key,
    // TLS for a SQLite file.
    let missing = dir.path().join("nowhere.pem").display().to_string();
    let err = fails(&["--store", &url, "--tls-ca", &missing, "stats"], 2);
    assert!(err.contains("cannot read `--tls-ca` file"), "{err}");
    assert!(err.contains("nowhere.pem"), "{err}");
    let err = fails(&["--store", &url, "--tls-cert", &cert, "stats"], 2);
    assert!(err.contains("--tls-key"), "{err}");
    let db = dir.path().join("t.db").display().to_string();
    let err = fails(&["--store", &db, "--tls-ca", &ca, "stats"], 2);
    assert!(err.contains("`--tls-ca` is for Redis stores"), "{err}");
}

/// `--cluster` with `rediss://` nodes: every node is reached through TLS,
/// each trusted through `--tls-ca`.
#[cfg(feature = "redis-tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_a_redis_cluster_over_tls() {
    use support::redis::{RedisCluster, Tls};
    use tempox::store::RedisStore;
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start_tls(Tls::new(false)))
        .await
        .unwrap();
    let urls = cluster.urls();
    assert!(urls.iter().all(|u| u.starts_with("rediss://")), "{urls:?}");
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    let tls = cluster.tls().unwrap().clone();
    let store = RedisStore::cluster_builder(&nodes)
        .tls_root_certificates(tls.ca.clone())
        .connect()
        .await
        .unwrap();
    seed(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca).unwrap();
    let ca = ca.display().to_string();
    let all = urls.join(",");
    let stats = json(&[
        "--cluster",
        "--store",
        &all,
        "--tls-ca",
        &ca,
        "--json",
        "stats",
    ]);
    assert_eq!(stats["total"], 7);
    let err = fails(&["--cluster", "--store", &all, "stats"], 1);
    assert!(err.contains("invalid peer certificate"), "{err}");
}

/// `--cluster` reads a Redis Cluster through its nodes' URLs; a write
/// (`resolve`) lands where the store's own client finds it.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_repairs_a_redis_cluster() {
    use tempox::store::RedisStore;
    let cluster = tokio::task::spawn_blocking(support::redis::RedisCluster::start)
        .await
        .unwrap();
    let urls = cluster.urls();
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = RedisStore::cluster_builder(&nodes)
        .prefix("shop")
        .connect()
        .await
        .unwrap();
    seed(&store).await;
    let all = urls.join(",");
    let on_cluster: &[&str] = &["--cluster", "--store", &all, "--prefix", "shop"];
    let run = |args: &[&str]| json(&[on_cluster, args].concat());
    assert_eq!(run(&["--json", "stats"])["total"], 7);
    let resolved = run(&["--json", "resolve", "shop.charge/o-2", "--note", "checked"]);
    assert_eq!(resolved["status"], "resolved");
    let record = store.get(&id("shop.charge", "o-2")).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Resolved);
}

#[test]
fn bad_arguments_are_named_and_change_nothing() {
    let err = fails(&["list"], 2);
    assert!(err.contains("no store: give `--store`"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo.db");
    let store = format!("sqlite:{}", missing.display());
    let err = fails(&["--store", &store, "list"], 1);
    assert!(
        err.ends_with("typo.db: no tempox store there: the file does not exist\n"),
        "{err}"
    );
    assert!(!missing.exists(), "a missing store was created");
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, "").unwrap();
    let err = fails(&["--store", &empty.display().to_string(), "stats"], 1);
    assert!(
        err.contains("no tempox store there: the database is empty"),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);

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
    let resolve = |retention: &str| {
        let args = ["resolve", "a/b", "--note", "n", "--retention", retention];
        fails(&[&["--store", store.as_str()], &args[..]].concat(), 2)
    };
    let err = resolve("soon");
    assert!(
        err.contains("invalid value 'soon' for '--retention"),
        "{err}"
    );
    let err = resolve("1us");
    assert!(
        err.contains("under 1ms: the record would be removed at once"),
        "{err}"
    );
    let err = resolve("500000000y");
    assert!(
        err.contains("'--retention") && err.contains("over a century"),
        "{err}"
    );
    // `sqlite:` names a file, whatever its path holds; and names one.
    let odd = format!("sqlite:{}/with://inside.db", dir.path().display());
    let err = fails(&["--store", &odd, "list"], 1);
    assert!(
        err.contains("with://inside.db: no tempox store there"),
        "{err}"
    );
    let err = fails(&["--store", "sqlite:", "list"], 2);
    assert!(err.contains("`--store sqlite:` names no file"), "{err}");
    let err = fails(&["--store", &store, "forget", "a/b"], 2);
    assert!(err.contains("unrecognized subcommand 'forget'"), "{err}");
    for option in [["--prefix", "p"], ["--buckets", "8"]] {
        let err = fails(&[&["--store", &store], &option[..], &["list"]].concat(), 2);
        assert!(
            err.contains(&format!("`{}` is for Redis stores", option[0])),
            "{err}"
        );
    }
    let err = fails(&["--store", &store, "--cluster", "list"], 2);
    assert!(err.contains("`--cluster` is for Redis stores"), "{err}");
    let err = fails(&["--store", "redis://127.0.0.1:1/x", "list"], 2);
    assert!(err.contains("invalid redis url"), "{err}");
    // Nothing listens on port 1. Any URL goes to the Redis client, and no
    // message repeats its password.
    for url in ["redis://127.0.0.1:1", "valkey://user:s3cret@127.0.0.1:1"] {
        let err = fails(&["--store", url, "list"], 1);
        assert!(err.contains("is unavailable"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
    let err = fails(&["--store", "http://user:s3cret@127.0.0.1:1", "list"], 2);
    assert!(
        err.contains("invalid redis url `http://***@127.0.0.1:1`"),
        "{err}"
    );
    // The password in TEMPOX_STORE is not shown by --help.
    let out = Command::new(env!("CARGO_BIN_EXE_tempox"))
        .env("TEMPOX_STORE", "redis://admin:s3cret@127.0.0.1:1")
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret"));
}

/// Inputs are shown as they were recorded (every digit of a big number; hex
/// when they are not JSON), and ids that could upset a terminal or a shell
/// are escaped and quoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_shown_as_recorded_and_safely() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.db");
    let sqlite = SqliteStore::open(&path).unwrap();
    let bidi = id("shop.odd2", "x\u{202e}y");
    for (op, key, input) in [
        (
            "shop.big",
            "n",
            &b"{\"n\":123456789012345678901234567890}"[..],
        ),
        ("shop.raw", "bytes", &b"\x00\xff"[..]),
        ("shop.odd", "o'brien", &b"{}"[..]),
        ("shop.odd2", bidi.key(), &b"{}"[..]),
    ] {
        let req = ClaimRequest {
            id: id(op, key),
            kind: Kind::Idempotent,
            fingerprint: Fingerprint::of(&key).unwrap(),
            input: input.to_vec().into(),
            lease: Duration::from_secs(30),
            on_expired: OnExpired::TakeOver,
            workflow: None,
            step: None,
        };
        sqlite.claim(&req).await.unwrap();
    }
    drop(sqlite);
    let store = path.display().to_string();

    // (Read as text: a JSON parser would round the number again.)
    let big = ok(&["--store", &store, "--json", "show", "shop.big/n"]);
    assert!(
        big.contains(r#""input": {"n":123456789012345678901234567890},"#),
        "{big}"
    );
    let text = ok(&["--store", &store, "show", "shop.big/n"]);
    assert!(
        text.contains(r#"input        {"n":123456789012345678901234567890}"#),
        "{text}"
    );
    let raw = json(&["--store", &store, "--json", "show", "shop.raw/bytes"]);
    assert!(raw["input"].is_null(), "{raw}");
    assert_eq!(raw["input_hex"], "00ff");

    // The next page's hint, quoted for a shell.
    let page = ok(&["--store", &store, "list", "--limit", "2"]);
    assert!(
        page.ends_with("(more may follow: --after 'shop.odd/o'\\''brien')\n"),
        "{page}"
    );
    // An id that could turn the line around is escaped, and the hint does
    // not offer its escaped form as the id.
    let page = ok(&["--store", &store, "list", "--limit", "3"]);
    let row = page.lines().find(|l| l.starts_with("shop.odd2/")).unwrap();
    assert!(row.starts_with(r"shop.odd2/x\u{202e}y "), "{row}");
    assert!(
        page.ends_with("(more may follow: give --after the last id)\n"),
        "{page}"
    );
}

/// A reader that stops early (`| head`) ends the command quietly; an output
/// that cannot be written (a full disk) is an error, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_or_full_output_is_handled() {
    use std::process::Stdio;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.db");
    let sqlite = Arc::new(SqliteStore::open(&path).unwrap());
    // More than a pipe holds (64 KiB): about 100 bytes a row.
    let claims = (0..1000).map(|i| {
        let sqlite = sqlite.clone();
        tokio::spawn(async move {
            let key = format!("order-{i:04}");
            claim(&*sqlite, &id("shop.many", &key), Kind::Idempotent, None).await
        })
    });
    for claim in claims {
        claim.await.unwrap();
    }
    drop(sqlite);
    let store = path.display().to_string();
    let args = ["--store", store.as_str(), "list", "--limit", "10000"];

    let mut child = Command::new(env!("CARGO_BIN_EXE_tempox"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    #[cfg(target_os = "linux")]
    {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tempox"))
            .args(args)
            .stdout(full)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("tempox: cannot write the answer:"), "{err}");
    }
}

/// Damaged-data issue, item 6: an error that quotes store data shows it,
/// never lets the terminal obey it (a status holding a screen-clearing
/// escape).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_data_in_an_error_is_shown_not_obeyed() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path()).await;
    let conn = rusqlite::Connection::open(dir.path().join("records.db")).unwrap();
    conn.execute(
        "UPDATE tempox_records SET status = 'done\u{1b}[2J\u{7}' WHERE id = 'shop.refund/ch-9'",
        [],
    )
    .unwrap();
    drop(conn);
    let err = fails(&["--store", &store, "show", "shop.refund/ch-9"], 1);
    assert!(!err.contains('\u{1b}') && !err.contains('\u{7}'), "{err:?}");
    assert!(err.contains("done\\u{1b}[2J\\u{7}"), "{err}");
    assert!(err.contains("`shop.refund/ch-9`"), "{err}");
}
