//! The writer thread: owns the write connection and commits queued commands in
//! groups.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{db_error, final_statuses, get, insert_record, millis as to_millis, write_record};
use crate::clock::Clock;
use crate::error::{StoreError, StoreErrorKind};
use crate::record::{
    AttemptsChange, ClaimRequest, Claimed, LeaseChange, RecordId, Status, Timestamp, Transition,
    Transitioned, check_legal, plan_claim, plan_transition, schedule,
};

/// One write, and where its answer goes once committed.
pub(super) struct Command {
    pub(super) request: Request,
    pub(super) reply: oneshot::Sender<Result<Answer, StoreError>>,
}

#[derive(Debug)]
pub(super) enum Request {
    Claim(ClaimRequest),
    Transition(Transition),
    /// A transition whose caller needs only whether it was applied.
    Apply(Transition),
    Renew {
        id: RecordId,
        status: Status,
        token: u64,
        lease: Duration,
    },
    Expire {
        limit: usize,
    },
}

#[derive(Debug)]
pub(super) enum Answer {
    Claimed(Claimed),
    Transitioned(Transitioned),
    Applied(bool),
    Renewed(Option<Timestamp>),
    Expired(usize),
}

/// Counts of committed work, read by [`super::SqliteStore::write_stats`].
#[derive(Debug, Default)]
pub(super) struct Stats {
    transactions: AtomicU64,
    commands: AtomicU64,
}

impl Stats {
    pub(super) fn snapshot(&self) -> super::WriteStats {
        super::WriteStats {
            transactions: self.transactions.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
        }
    }
}

/// Runs until every sender is dropped.
pub(super) fn run(
    mut conn: Connection,
    rx: mpsc::Receiver<Command>,
    clock: Arc<dyn Clock>,
    max_batch: usize,
    stats: &Stats,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        commit(&mut conn, &mut batch, &*clock, stats);
    }
}

/// Applies every command of `batch` in one transaction and answers each only
/// after the commit (counted in `stats` before anyone is answered). If the
/// transaction cannot start or commit, or SQLite rolls it back, every command
/// gets the error and none took effect.
fn commit(conn: &mut Connection, batch: &mut Vec<Command>, clock: &dyn Clock, stats: &Stats) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            fail_all(batch, super::classify(&e), &format!("SQLite: {e}"));
            return;
        }
    };
    // Each command writes at most one statement, so a failed one leaves nothing
    // half-written in the transaction.
    let mut answers = Vec::with_capacity(batch.len());
    for cmd in batch.iter() {
        let answer = execute(&tx, &cmd.request, clock.now());
        if let Err(e) = &answer
            && tx.is_autocommit()
        {
            // SQLite rolled the whole transaction back (a full disk, an I/O
            // error, no memory): what ran before is undone, and what would run
            // after would be committed on its own. Nothing of the batch stays.
            let message = format!("SQLite rolled back the transaction: {e}; nothing was written");
            fail_all(batch, e.kind(), &message);
            return;
        }
        answers.push(answer);
    }
    match tx.commit() {
        Ok(()) => {
            stats.transactions.fetch_add(1, Ordering::Relaxed);
            stats
                .commands
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            for (cmd, answer) in batch.drain(..).zip(answers) {
                let _ = cmd.reply.send(answer);
            }
        }
        Err(e) => {
            let message = format!("SQLite commit failed: {e}");
            fail_all(batch, super::classify(&e), &message);
        }
    }
}

/// Answers every command of `batch` with the same error.
fn fail_all(batch: &mut Vec<Command>, kind: StoreErrorKind, message: &str) {
    for cmd in batch.drain(..) {
        let _ = cmd.reply.send(Err(StoreError::new(kind, message)));
    }
}

fn execute(conn: &Connection, request: &Request, now: Timestamp) -> Result<Answer, StoreError> {
    match request {
        Request::Claim(req) => {
            // Most claims are of keys never seen: the record plan_claim makes
            // for no record is inserted unless one exists, which then decides.
            let fresh = plan_claim(None, req, now);
            if let Claimed::Acquired { record, .. } = &fresh {
                match insert_record(conn, record) {
                    Ok(true) => return Ok(Answer::Claimed(fresh)),
                    Ok(false) => {}
                    // A value the file cannot hold (a lease beyond its
                    // timestamps): the record there, if any, decides.
                    Err(e) if e.kind() == StoreErrorKind::Invalid => {}
                    Err(e) => return Err(e),
                }
            }
            let existing = get(conn, &req.id)?;
            let outcome = plan_claim(existing.as_ref(), req, now);
            match &outcome {
                Claimed::Acquired { record, .. } | Claimed::MarkedUnknown(record) => {
                    write_record(conn, record, existing.is_some())?
                }
                Claimed::Existing(_) => {}
            }
            Ok(Answer::Claimed(outcome))
        }
        Request::Transition(t) => transition(conn, t, now).map(Answer::Transitioned),
        Request::Apply(t) => apply(conn, t, now).map(Answer::Applied),
        Request::Renew {
            id,
            status,
            token,
            lease,
        } => {
            let until = now.plus(*lease);
            let until_ms = to_millis(until)?;
            let token = i64::try_from(*token).unwrap_or(-1);
            let changed = conn
                .prepare_cached(
                    "UPDATE tempox_records SET lease_until = ?1, due_at = ?1 \
                     WHERE id = ?2 AND status = ?3 AND token = ?4",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![until_ms, id.as_str(), status.as_str(), token])
                })
                .map_err(db_error)?;
            Ok(Answer::Renewed((changed == 1).then_some(until)))
        }
        Request::Expire { limit } => {
            let sql = format!(
                // Through the expiry index, whatever the planner thinks of the
                // status index: the cost is what has expired, not what is stored.
                "DELETE FROM tempox_records WHERE id IN (SELECT id FROM tempox_records \
                 INDEXED BY tempox_records_expiry \
                 WHERE expires_at IS NOT NULL AND expires_at <= ?1 AND status IN ({}) \
                 ORDER BY expires_at LIMIT ?2)",
                final_statuses()
            );
            let limit = i64::try_from(*limit).unwrap_or(i64::MAX);
            let now_ms = to_millis(now)?;
            let removed = conn
                .prepare_cached(&sql)
                .and_then(|mut stmt| stmt.execute(params![now_ms, limit]))
                .map_err(db_error)?;
            Ok(Answer::Expired(removed))
        }
    }
}

/// [`Request::Transition`]: the record read, planned and written whole.
fn transition(
    conn: &Connection,
    t: &Transition,
    now: Timestamp,
) -> Result<Transitioned, StoreError> {
    let existing = get(conn, &t.id)?;
    let outcome = plan_transition(existing.as_ref(), t, now)?;
    if let Transitioned::Applied(record) = &outcome {
        write_record(conn, record, true)?;
    }
    Ok(outcome)
}

/// [`Request::Apply`]: `t` as [`plan_transition`] would apply it. When what
/// `t` writes does not depend on the record beyond the `(status, token)` it
/// compares (no lease kept, no attempt counted, no note appended, which is how
/// a call records its outcome), one `UPDATE` compares and writes only the
/// columns that change, without reading the record first (so a damaged
/// column it does not write is reported by the next read, not here; see
/// [`Store::apply`](crate::store::Store::apply)). When it changes nothing, the
/// full path answers: a conflict, or a clear error for a record that cannot be
/// read.
fn apply(conn: &Connection, t: &Transition, now: Timestamp) -> Result<bool, StoreError> {
    check_legal(t)?;
    let full = |conn| {
        Ok(matches!(
            transition(conn, t, now)?,
            Transitioned::Applied(_)
        ))
    };
    let reads_record = matches!(t.lease, LeaseChange::Keep)
        || matches!(t.attempts, AttemptsChange::Increment)
        || t.note.is_some();
    // No record holds a token beyond i64 (write_record refuses to store one).
    let (false, Ok(token)) = (reads_record, i64::try_from(t.token)) else {
        return full(conn);
    };
    let s = schedule(t, t.token, None, now);
    let ts = |v: Option<Timestamp>| v.map(to_millis).transpose();
    // A value the file cannot hold is refused only to the holder, as the full
    // path does: anyone else gets the conflict.
    let (Ok(new_token), Ok(updated_at), Ok(lease_until), Ok(due_at), Ok(expires_at)) = (
        i64::try_from(s.token),
        to_millis(now),
        ts(s.lease_until),
        ts(s.due_at),
        ts(s.expires_at),
    ) else {
        return full(conn);
    };
    let attempts = match t.attempts {
        AttemptsChange::Set(n) => Some(i64::from(n)),
        AttemptsChange::Keep | AttemptsChange::Increment => None,
    };
    let changed = conn
        .prepare_cached(
            "UPDATE tempox_records SET status = ?1, token = ?2, updated_at = ?3, \
             lease_until = ?4, due_at = ?5, expires_at = ?6, output = coalesce(?7, output), \
             error = coalesce(?8, error), attempts = coalesce(?9, attempts) \
             WHERE id = ?10 AND status = ?11 AND token = ?12 \
             AND (?13 = 0 OR lease_until IS NULL OR lease_until <= ?3)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                t.to.as_str(),
                new_token,
                updated_at,
                lease_until,
                due_at,
                expires_at,
                t.output.as_deref(),
                t.error,
                attempts,
                t.id.as_str(),
                t.from.as_str(),
                token,
                t.if_lease_expired,
            ])
        })
        .map_err(db_error)?;
    if changed == 1 { Ok(true) } else { full(conn) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::key::Fingerprint;
    use crate::record::{Kind, OnExpired};

    /// SQLite rolls a transaction back by itself on a full disk: the commands
    /// before the failing one are undone, and those after must not run on
    /// their own (each would then be committed while its caller hears of a
    /// failure).
    #[test]
    fn a_transaction_sqlite_rolls_back_fails_every_command_and_writes_nothing() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::SCHEMA).unwrap();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        // Room for a few of the records, not for all of them.
        conn.execute_batch(&format!("PRAGMA max_page_count = {}", pages + 4))
            .unwrap();
        let (mut batch, mut answers) = (Vec::new(), Vec::new());
        for i in 0..20 {
            let (reply, answer) = oneshot::channel();
            let claim = ClaimRequest {
                id: RecordId::parse(&format!("full/k{i}")).unwrap(),
                kind: Kind::Idempotent,
                fingerprint: Fingerprint::from_bytes([7; 16]),
                input: vec![b'x'; 3000].into(),
                lease: Duration::from_secs(30),
                on_expired: OnExpired::TakeOver,
                workflow: None,
                step: None,
            };
            batch.push(Command {
                request: Request::Claim(claim),
                reply,
            });
            answers.push(answer);
        }
        let stats = Stats::default();
        commit(&mut conn, &mut batch, &SystemClock, &stats);
        for mut answer in answers {
            let err = answer.try_recv().unwrap().unwrap_err();
            assert!(err.to_string().contains("rolled back"), "{err}");
        }
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM tempox_records", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0, "nothing of the batch is written");
        assert_eq!(stats.snapshot().transactions, 0);
    }
}
