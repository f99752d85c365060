//! The writer thread: owns the write connection and commits queued commands in
//! groups.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{db_error, final_statuses, get, millis as to_millis, write_record};
use crate::clock::Clock;
use crate::error::StoreError;
use crate::record::{
    ClaimRequest, Claimed, RecordId, Status, Timestamp, Transition, Transitioned, plan_claim,
    plan_transition,
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
        let commands = batch.len() as u64;
        if commit(&mut conn, &mut batch, &*clock) {
            stats.transactions.fetch_add(1, Ordering::Relaxed);
            stats.commands.fetch_add(commands, Ordering::Relaxed);
        }
    }
}

/// Applies every command of `batch` in one transaction and answers each only
/// after the commit. If the transaction cannot start or commit, every command
/// gets the error and none took effect.
fn commit(conn: &mut Connection, batch: &mut Vec<Command>, clock: &dyn Clock) -> bool {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let message = e.to_string();
            let kind = super::classify(&e);
            for cmd in batch.drain(..) {
                let _ = cmd
                    .reply
                    .send(Err(StoreError::new(kind, format!("SQLite: {message}"))));
            }
            return false;
        }
    };
    // Each command writes at most one statement, so a failed one leaves nothing
    // half-written in the transaction.
    let answers: Vec<Result<Answer, StoreError>> = batch
        .iter()
        .map(|cmd| execute(&tx, &cmd.request, clock.now()))
        .collect();
    match tx.commit() {
        Ok(()) => {
            for (cmd, answer) in batch.drain(..).zip(answers) {
                let _ = cmd.reply.send(answer);
            }
            true
        }
        Err(e) => {
            let message = e.to_string();
            let kind = super::classify(&e);
            for cmd in batch.drain(..) {
                let _ = cmd.reply.send(Err(StoreError::new(
                    kind,
                    format!("SQLite commit failed: {message}"),
                )));
            }
            false
        }
    }
}

fn execute(conn: &Connection, request: &Request, now: Timestamp) -> Result<Answer, StoreError> {
    match request {
        Request::Claim(req) => {
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
        Request::Transition(t) => {
            let existing = get(conn, &t.id)?;
            let outcome = plan_transition(existing.as_ref(), t, now)?;
            if let Transitioned::Applied(record) = &outcome {
                write_record(conn, record, true)?;
            }
            Ok(Answer::Transitioned(outcome))
        }
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
