//! What only the SQLite backend promises: group commit, schema versions,
//! refusing foreign or damaged files without touching them, durability.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use tempox::record::{Claimed, LeaseChange, RecordId, Transition, Transitioned};
use tempox::store::{SqliteStore, Store};
use tempox::{Status, StoreErrorKind};

use crate::checks::{complete, request};

#[tokio::test]
async fn concurrent_claims_share_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    // Another connection holds the write lock while the claims are sent, so
    // the writer's first transaction waits and the others queue behind it.
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (store, sent) = (store.clone(), sent.clone());
            tokio::spawn(async move {
                let req = request("group", &format!("k{i}"), "a");
                let mut claim = std::pin::pin!(store.claim(&req));
                // Polled once, a claim of a new key has been sent to the
                // writer (which waits for the lock): counted, then awaited.
                let first = std::future::poll_fn(|cx| Poll::Ready(claim.as_mut().poll(cx))).await;
                sent.fetch_add(1, Ordering::SeqCst);
                match first {
                    Poll::Ready(claimed) => claimed,
                    Poll::Pending => claim.await,
                }
                .unwrap()
            })
        })
        .collect();
    // Every claim is queued before the lock is given back.
    while sent.load(Ordering::SeqCst) < 200 {
        tokio::task::yield_now().await;
    }
    blocker.execute_batch("COMMIT").unwrap();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Claimed::Acquired { .. }));
    }
    let stats = store.write_stats();
    assert_eq!(stats.commands, 200);
    // The first claim may have gone alone; the rest shared one transaction.
    assert!(stats.transactions <= 2, "no group commit: {stats:?}");
    // All durable: a fresh store on the file sees every claim.
    drop(store);
    let reopened = SqliteStore::open(&path).unwrap();
    let q = tempox::store::Query {
        op: Some("group".into()),
        limit: 1000,
        ..Default::default()
    };
    assert_eq!(reopened.list(&q).await.unwrap().len(), 200);
}

/// A claim that leaves its record as it is (a replay, a duplicate in flight,
/// a reused key) is answered from a read, without the writer; one that
/// writes (a new key, a released one) still goes through it.
#[tokio::test]
async fn claims_that_change_nothing_are_answered_without_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("t.db")).unwrap();
    let writes = || store.write_stats().commands;

    let req = request("peek", "k", "a");
    let Claimed::Acquired { record, .. } = store.claim(&req).await.unwrap() else {
        panic!("a new key is acquired");
    };
    // In flight: found as it is.
    let before = writes();
    assert!(
        matches!(store.claim(&req).await.unwrap(), Claimed::Existing(r) if r.status == Status::Pending)
    );
    assert_eq!(writes(), before);

    assert!(matches!(
        store.transition(&complete(&record, b"1")).await.unwrap(),
        Transitioned::Applied(_)
    ));
    let before = writes();
    for args in ["a", "b"] {
        // The replay, and the reuse of the key with other arguments.
        match store.claim(&request("peek", "k", args)).await.unwrap() {
            Claimed::Existing(r) => {
                assert_eq!(r.status, Status::Completed);
                assert_eq!(r.output.as_deref(), Some(&b"1"[..]));
            }
            other => panic!("expected the completed record, got {other:?}"),
        }
    }
    assert_eq!(writes(), before, "nothing was sent to the writer");

    // A released key is claimed again: that writes.
    let other = request("peek", "released", "a");
    let Claimed::Acquired { record, .. } = store.claim(&other).await.unwrap() else {
        panic!("a new key is acquired");
    };
    let mut release = Transition::new(
        record.id.clone(),
        Status::Pending,
        record.token,
        Status::Released,
    );
    release.retention = Some(Duration::from_secs(3600));
    assert!(matches!(
        store.transition(&release).await.unwrap(),
        Transitioned::Applied(_)
    ));
    let before = writes();
    assert!(matches!(
        store.claim(&other).await.unwrap(),
        Claimed::Acquired {
            previous: Some(Status::Released),
            ..
        }
    ));
    assert_eq!(writes(), before + 1);

    // A record too big to decode on the caller's thread goes to the writer,
    // which answers the same.
    let big = request("peek", "big", "a");
    let Claimed::Acquired { record, .. } = store.claim(&big).await.unwrap() else {
        panic!("a new key is acquired");
    };
    let output = vec![b'x'; 100 * 1024];
    assert!(matches!(
        store.transition(&complete(&record, &output)).await.unwrap(),
        Transitioned::Applied(_)
    ));
    let before = writes();
    match store.claim(&big).await.unwrap() {
        Claimed::Existing(r) => assert_eq!(r.output.as_deref(), Some(&output[..])),
        other => panic!("expected the completed record, got {other:?}"),
    }
    assert_eq!(writes(), before + 1);
}

/// After a lease runs out, the claim that takes over (same arguments) goes
/// to the writer; one with other arguments finds the record as it is.
#[tokio::test]
async fn an_expired_claim_is_taken_over_through_the_writer_only() {
    let dir = tempfile::tempdir().unwrap();
    let clock = tempox::clock::ManualClock::new();
    let store = SqliteStore::builder(dir.path().join("t.db"))
        .clock(clock.clone())
        .open()
        .unwrap();
    let writes = || store.write_stats().commands;
    let req = request("peek", "expiring", "a");
    assert!(matches!(
        store.claim(&req).await.unwrap(),
        Claimed::Acquired { .. }
    ));
    clock.advance(Duration::from_secs(3600));

    let before = writes();
    match store
        .claim(&request("peek", "expiring", "b"))
        .await
        .unwrap()
    {
        Claimed::Existing(r) => assert_eq!(r.status, Status::Pending),
        other => panic!("another request finds the record as it is, got {other:?}"),
    }
    assert_eq!(writes(), before);
    assert!(matches!(
        store.claim(&req).await.unwrap(),
        Claimed::Acquired {
            previous: Some(Status::Pending),
            ..
        }
    ));
    assert_eq!(writes(), before + 1);
}

#[tokio::test]
async fn records_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path).unwrap();
    let r = match store.claim(&request("durable", "k", "a")).await.unwrap() {
        Claimed::Acquired { record, .. } => record,
        other => panic!("{other:?}"),
    };
    let Transitioned::Applied(done) = store.transition(&complete(&r, b"\"out\"")).await.unwrap()
    else {
        panic!("not applied")
    };
    drop(store);
    let again = SqliteStore::open(&path).unwrap();
    assert_eq!(again.get(&r.id).await.unwrap(), Some(done));
}

/// A record with a damaged column: reads and full transitions name it; a call
/// recording its outcome (`apply`, which does not read that column) still
/// lands, and leaves the damage to be reported by the next read.
#[tokio::test]
async fn a_damaged_record_is_named_by_reads_and_transitions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path).unwrap();
    let mut held = Vec::new();
    for key in ["a", "b"] {
        match store.claim(&request("damaged", key, "x")).await.unwrap() {
            Claimed::Acquired { record, .. } => held.push(record),
            other => panic!("{other:?}"),
        }
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE tempox_records SET kind = 'bogus' WHERE op = 'damaged'",
        [],
    )
    .unwrap();
    let corrupt = |e: tempox::StoreError| {
        assert_eq!(e.kind(), StoreErrorKind::Corrupt, "{e}");
        assert!(e.to_string().contains("`kind`"), "{e}");
    };
    let (a, b) = (&held[0], &held[1]);
    corrupt(store.get(&a.id).await.unwrap_err());
    corrupt(store.transition(&complete(a, b"1")).await.unwrap_err());
    let mut stale = complete(a, b"1");
    stale.token += 1;
    corrupt(store.apply(&stale).await.unwrap_err());
    assert!(store.apply(&complete(b, b"2")).await.unwrap());
    corrupt(store.get(&b.id).await.unwrap_err());
    let (status, output): (String, Vec<u8>) = conn
        .query_row(
            "SELECT status, output FROM tempox_records WHERE id = ?1",
            [b.id.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), &output[..]), ("completed", &b"2"[..]));
}

/// A value the file cannot hold (a lease or token past its 64-bit signed
/// columns) is refused only to a caller that would write it: one that finds
/// another's record, or none to hold, gets that answer.
#[tokio::test]
async fn values_past_the_columns_do_not_hide_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("t.db")).unwrap();
    let first = store.claim(&request("wide", "k", "a")).await.unwrap();
    assert!(matches!(first, Claimed::Acquired { .. }), "{first:?}");
    let mut forever = request("wide", "k", "a");
    forever.lease = Duration::MAX;
    let again = store.claim(&forever).await.unwrap();
    assert!(matches!(again, Claimed::Existing(_)), "{again:?}");
    let mut fresh = request("wide", "new", "a");
    fresh.lease = Duration::MAX;
    let err = store.claim(&fresh).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Invalid, "{err}");
    // A record nobody holds: the conflict, not the value's error.
    let nobody = RecordId::parse("wide/nobody").unwrap();
    let mut acquire = Transition::new(
        nobody.clone(),
        Status::Completed,
        i64::MAX as u64,
        Status::Compensating,
    );
    acquire.lease = LeaseChange::Acquire(Duration::from_secs(30));
    assert!(!store.apply(&acquire).await.unwrap());
    let mut keep = Transition::new(nobody, Status::Pending, 1, Status::Completed);
    keep.retention = Some(Duration::MAX);
    assert!(!store.apply(&keep).await.unwrap());
}

fn open_err(path: &std::path::Path) -> tempox::StoreError {
    SqliteStore::open(path).map(|_| ()).unwrap_err()
}

#[test]
fn a_file_that_is_not_sqlite_is_a_clear_corrupt_error_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.db");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = open_err(&path);
    assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("notes.db"), "{err}");
    assert!(
        err.to_string()
            .contains("not a SQLite database, or it is corrupt"),
        "{err}"
    );
    assert!(
        std::fs::read(&path).unwrap() == garbage,
        "the file was changed"
    );
}

#[tokio::test]
async fn a_damaged_database_is_a_corrupt_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path).unwrap();
    for i in 0..50 {
        store
            .claim(&request("damage", &format!("k{i}"), "a"))
            .await
            .unwrap();
    }
    drop(store);
    // Fold the WAL into the file, then smash its pages after the header.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;")
        .unwrap();
    drop(conn);
    let mut bytes = std::fs::read(&path).unwrap();
    for b in bytes.iter_mut().skip(100) {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = open_err(&path);
    assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err}");
}

#[test]
fn another_applications_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users VALUES (1, 'ada');").unwrap();
    drop(conn);
    let before = std::fs::read(&path).unwrap();
    let err = open_err(&path);
    assert_eq!(err.kind(), StoreErrorKind::Schema, "{err}");
    assert!(
        err.to_string()
            .contains("not a tempox database: it already holds the tables users"),
        "{err}"
    );
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the file was changed"
    );
}

#[test]
fn a_newer_schema_is_refused_with_the_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA user_version = 7;").unwrap();
    drop(conn);
    let err = open_err(&path);
    assert_eq!(err.kind(), StoreErrorKind::Schema, "{err}");
    assert!(
        err.to_string()
            .contains("written by a newer tempox (schema version 7)"),
        "{err}"
    );
}

#[test]
fn an_unopenable_path_is_unavailable_and_says_why() {
    let err = open_err(std::path::Path::new("/nonexistent-dir/sub/t.db"));
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    assert!(
        err.to_string().contains("/nonexistent-dir/sub/t.db"),
        "{err}"
    );
    assert!(
        err.to_string()
            .ends_with("the directory /nonexistent-dir/sub does not exist"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let err = open_err(dir.path());
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    assert!(
        err.to_string()
            .ends_with("it is a directory; give the path of a database file in it"),
        "{err}"
    );
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());

    // A file where a directory should be.
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "x").unwrap();
    let err = open_err(&file.join("t.db"));
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    assert!(
        err.to_string()
            .ends_with(&format!("{} is not a directory", file.display())),
        "{err}"
    );
}

/// With `create(false)` a file that holds no tempox store is refused and left
/// as it was: a missing file, an empty file, an empty database. A store that
/// is there opens.
#[tokio::test]
async fn a_store_that_must_exist_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let existing = |path: &std::path::Path| {
        SqliteStore::builder(path)
            .create(false)
            .open()
            .map(|_| ())
            .unwrap_err()
    };
    let missing = dir.path().join("typo.db");
    let err = existing(&missing);
    assert_eq!(err.kind(), StoreErrorKind::Schema, "{err}");
    assert!(
        err.to_string()
            .ends_with("no tempox store there: the file does not exist"),
        "{err}"
    );
    assert!(!missing.exists());

    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, "").unwrap();
    let err = existing(&empty);
    assert!(
        err.to_string()
            .ends_with("no tempox store there: the database is empty"),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);

    let blank = dir.path().join("blank.db");
    let conn = rusqlite::Connection::open(&blank).unwrap();
    conn.execute_batch("CREATE TABLE t (a); DROP TABLE t;")
        .unwrap();
    drop(conn);
    let before = std::fs::read(&blank).unwrap();
    let err = existing(&blank);
    assert_eq!(err.kind(), StoreErrorKind::Schema, "{err}");
    assert!(err.to_string().ends_with("the database is empty"), "{err}");
    assert_eq!(
        std::fs::read(&blank).unwrap(),
        before,
        "the file was changed"
    );

    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path).unwrap();
    store.claim(&request("made", "k", "a")).await.unwrap();
    drop(store);
    let reopened = SqliteStore::builder(&path).create(false).open().unwrap();
    assert!(
        reopened
            .get(&request("made", "k", "a").id)
            .await
            .unwrap()
            .is_some()
    );
}

/// A store error's message carries the backend's words, so they are not its
/// source too: a printer of the chain shows them once. The backend's error is
/// still there to inspect.
#[test]
fn a_store_error_shows_the_backends_words_once() {
    use std::error::Error as _;
    let err = open_err(std::path::Path::new("/nonexistent-dir/sub/t.db"));
    assert!(err.to_string().contains("unable to open"), "{err}");
    assert!(err.source().is_none());
    let sqlite = err
        .backend()
        .and_then(|b| b.downcast_ref::<rusqlite::Error>());
    assert!(sqlite.is_some(), "{:?}", err.backend());
    let err = tempox::Error::from(err);
    assert_eq!(
        err.to_string().matches("unable to open").count(),
        1,
        "{err}"
    );
    assert!(err.source().is_none(), "{:?}", err.source());
}

#[tokio::test]
async fn an_existing_database_opens_at_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (app, version): (i64, i64) = conn
        .query_row("SELECT (SELECT application_id FROM pragma_application_id), (SELECT user_version FROM pragma_user_version)", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!((app, version), (0x5450_4f58, 1));
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.get(&request("x", "y", "z").id).await.unwrap(), None);
    let _ = Status::Pending;
}

/// Damaged-data issue, item 3: a flipped byte in the header's file format
/// versions makes SQLite open the file read-only, and every write would then
/// fail like a read-only disk (an outage, retried for ever): it is refused
/// at open as corrupt, the file untouched.
#[tokio::test]
async fn a_damaged_header_is_corrupt_not_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path).unwrap();
    store.claim(&request("header", "k", "a")).await.unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;")
        .unwrap();
    drop(conn);
    for (offset, value) in [(18usize, 0x7fu8), (19, 0x03)] {
        let mut bytes = std::fs::read(&path).unwrap();
        let before = bytes[offset];
        bytes[offset] = value;
        std::fs::write(&path, &bytes).unwrap();
        let err = open_err(&path);
        assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err}");
        assert!(err.to_string().contains("file format versions"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file was changed");
        bytes[offset] = before;
        std::fs::write(&path, &bytes).unwrap();
    }
    assert!(SqliteStore::open(&path).is_ok());
}

/// Damaged-data issue, item 4: a tempox file (right application id and
/// version) whose table lost a column, or that lost an index or its table,
/// is refused at open, saying what is missing, the file untouched.
#[test]
fn a_schema_changed_by_hand_is_refused_saying_what_is_missing() {
    for (damage, missing) in [
        ("DROP INDEX tempox_records_due", "`tempox_records_due`"),
        (
            "ALTER TABLE tempox_records DROP COLUMN note",
            "the column `note`",
        ),
        (
            "ALTER TABLE tempox_records RENAME TO records",
            "`tempox_records`",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(SqliteStore::open(&path).unwrap());
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(damage).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        drop(conn);
        let before = std::fs::read(&path).unwrap();
        let err = open_err(&path);
        assert_eq!(err.kind(), StoreErrorKind::Schema, "{damage}: {err}");
        let text = err.to_string();
        assert!(
            text.contains(missing) && text.contains("changed by hand"),
            "{damage}: {text}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "{damage}: the file was changed"
        );
    }
}

/// Damaged-data issue, item 5: a record whose `id` column is not text is
/// named by what it holds, not by SQLite's column index.
#[tokio::test]
async fn a_damaged_id_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path).unwrap();
    store.claim(&request("ids", "k", "a")).await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    // A blob keeps its type in a text column (an integer would become text).
    conn.execute(
        "UPDATE tempox_records SET id = x'ff00' WHERE op = 'ids'",
        [],
    )
    .unwrap();
    let err = store
        .list(&tempox::store::Query::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("unreadable `id`") && text.contains("Blob"),
        "{text}"
    );
    assert!(!text.contains("index: 0"), "{text}");
}
