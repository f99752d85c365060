//! Group sending of claims, transitions and lease renewals: the requests
//! that wait while a script is in flight go together in its next call.
//!
//! Redis runs a script's commands for little, but every call of a script has
//! a fixed cost on the server (reading the call, setting up Lua, the reply, the
//! `MULTI`/`EXEC` around its effects in the append-only file). Under
//! concurrency that fixed cost (and, with `appendfsync always`, the fsync
//! after each round of the server's event loop) is what limits a single
//! server, so the state changes that arrive while a call is in flight share
//! the next one. A request sent while no call is in flight goes
//! at once, alone. While one is in flight, the requests that arrive wait for
//! it (at most its round trip), unless [`SECOND_CALL_AT`] of them are
//! waiting: then they go as a second call, so the server has work while the
//! first call's callers turn around. Each call's sender, once answered, sends
//! whatever waits by then, however little, until nothing does: the threshold
//! only decides when a second call starts. (A sender that left a few waiting
//! requests to the other call in flight measured 7 % slower at 64 in flight.)
//! The script runs its requests in order, each exactly as if it had been sent
//! alone, so grouping changes no outcome. On a single server one lane serves
//! every bucket; on Redis Cluster a script may only touch one hash slot, so
//! there is a lane per bucket.
//!
//! Measured on the load bench's 2-core machine (fresh calls, paired runs):
//! - Sending a second call as soon as one request waited (the first design)
//!   split unevenly at 64 in flight, calls of about 57, 7 and 1 requests, 21
//!   per fsync; at 4 to 16 in flight it paid an fsync for every few requests.
//!   Waiting for [`SECOND_CALL_AT`] gained 20-30 % at 4 to 16 in flight and
//!   was even at 64 and 256.
//! - Making every call carry about 32 requests at 64 in flight (a sender that
//!   waited for its own callers) gained 1 %: there redis-server's CPU is the
//!   limit (77 % busy), not its fsyncs.
//!
//! A call is sent from a task of its own, on the first caller's runtime when
//! that is multi-threaded, else on the store's own thread: a single-threaded
//! runtime may be left idle once its own answer is in, and must hold up
//! nobody else (see `Driver`).

use std::sync::{Arc, Mutex, MutexGuard};

use ::redis::{Arg, Cmd, RedisError, Value};
use tokio::sync::oneshot;

use super::RedisStore;
use super::scripts::ScriptCall;
use crate::record::RecordId;

/// The most requests one script call carries. The server does nothing else
/// while a script runs: 128 claims and transitions take about 1.3 ms on the
/// 2-core machine of the load bench (10 us each), the longest a lane holds up
/// other clients of the server. Past 64 calls in flight, 128 rather than 64
/// shares each fsync among more requests (fresh calls at concurrency 256:
/// 29-30k/s with 64, 32k/s with 128 on a driver of the store alone; 256
/// gained nothing more).
const MAX_GROUP: usize = 128;
/// The most calls of one lane in flight at once.
const IN_FLIGHT: usize = 2;
/// How many requests must be waiting before a second call goes out while one
/// is in flight. Below it they wait for the call in flight and go together in
/// the next: fewer, fuller calls, each with one fsync (fresh calls at 4, 8
/// and 16 in flight: +20-30 % over sending a second call at once). From it
/// on, a second call keeps the server busy while the first one's callers turn
/// around (64 and 256 in flight: even, within the noise of paired runs).
const SECOND_CALL_AT: usize = 16;

/// Why a request got no reply of its own.
#[derive(Clone, Debug)]
pub(super) enum Failure {
    /// The call failed; every request in it gets the same error.
    Redis(Arc<RedisError>),
    /// The call (or the wait for it) took longer than the store's timeout.
    Timeout,
    /// The reply did not have one item per request.
    Reply(Value),
    /// The server applied the call, but fewer of its replicas than the store
    /// waits for acknowledged it in time.
    Unreplicated {
        /// How many did.
        acknowledged: i64,
        /// What the server answered (for one request of a group call, its
        /// own item): a claim it took is given back.
        reply: Value,
    },
    /// The call was never sent or its answer never came back: the runtime
    /// sending it stopped (shut down, or the store was being dropped).
    Abandoned,
}

impl From<RedisError> for Failure {
    fn from(e: RedisError) -> Self {
        Failure::Redis(Arc::new(e))
    }
}

/// One request: its bucket, its record key and its arguments (its share of
/// `ARGV` in the script's order, but for its bucket's status-set prefix,
/// which [`append_args`] puts second).
pub(super) struct Job {
    pub(super) bucket: u16,
    pub(super) record_key: String,
    pub(super) args: Cmd,
    reply: oneshot::Sender<Result<Value, Failure>>,
}

impl Job {
    /// The record a claim is for; `None` for a transition or a renewal.
    fn claimed_id(&self) -> Option<RecordId> {
        let mut args = self.args.args_iter().filter_map(|arg| match arg {
            Arg::Simple(bytes) => Some(bytes),
            Arg::Cursor => None,
        });
        if args.next()? != b"claim" {
            return None;
        }
        RecordId::parse(std::str::from_utf8(args.next()?).ok()?).ok()
    }
}

#[derive(Default)]
struct State {
    /// Calls of this lane in flight (their senders take the queue next).
    in_flight: usize,
    queue: Vec<Job>,
}

impl State {
    /// Drops the queued requests whose callers stopped waiting (timed out, or
    /// dropped the call): nobody would learn their outcome, so they are not
    /// sent.
    fn drop_abandoned(&mut self) {
        self.queue.retain(|job| !job.reply.is_closed());
    }
}

/// The lane of one bucket, or of all of them.
#[derive(Default)]
pub(super) struct Lane {
    state: Mutex<State>,
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a flag and a queue, consistent after every statement:
        // a panic elsewhere while it was held leaves nothing to repair.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every lane of a store.
pub(super) struct Lanes {
    lanes: Vec<Lane>,
    per_bucket: bool,
}

impl Lanes {
    /// One lane, or with `per_bucket` one per bucket.
    pub(super) fn new(buckets: u16, per_bucket: bool) -> Self {
        let lanes = if per_bucket { usize::from(buckets) } else { 1 };
        Lanes {
            lanes: (0..lanes).map(|_| Lane::default()).collect(),
            per_bucket,
        }
    }

    fn get(&self, bucket: u16) -> &Lane {
        if self.per_bucket {
            &self.lanes[usize::from(bucket)]
        } else {
            &self.lanes[0]
        }
    }
}

/// Sends `args` for `record_key` through the lane of `bucket`, and waits (at
/// most the store's timeout) for its own item of the reply.
pub(super) async fn send(
    store: &RedisStore,
    bucket: u16,
    record_key: String,
    args: Cmd,
) -> Result<Value, Failure> {
    let (reply, answer) = oneshot::channel();
    let job = Job {
        bucket,
        record_key,
        args,
        reply,
    };
    let lead = {
        let mut state = store.inner.lanes.get(bucket).lock();
        // Requests whose callers stopped waiting neither go nor count.
        state.drop_abandoned();
        if state.in_flight == 0 {
            state.in_flight += 1;
            Some(vec![job])
        } else if state.in_flight < IN_FLIGHT && state.queue.len() + 1 >= SECOND_CALL_AT {
            // A second call, with what waits, oldest first.
            state.in_flight += 1;
            state.queue.push(job);
            let take = state.queue.len().min(MAX_GROUP);
            Some(state.queue.drain(..take).collect())
        } else {
            state.queue.push(job);
            None
        }
    };
    if let Some(jobs) = lead {
        // The slot is the guard's from here: if the task never runs (its
        // runtime is stopping), dropping it unpolled gives the slot back.
        let slot = Slot {
            store: store.clone(),
            bucket,
            held: true,
        };
        // Sent from a task of its own, so a caller that stops waiting does
        // not strand the requests queued behind its call.
        store.inner.driver.spawn(drive(slot, jobs));
    }
    let timeout = store.inner.timeout;
    let wait = async move {
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(Failure::Abandoned),
            Err(_) => Err(Failure::Timeout),
        }
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        wait.await
    } else {
        // Outside any Tokio runtime, the store's own keeps the time.
        store
            .inner
            .driver
            .handle
            .spawn(wait)
            .await
            .unwrap_or(Err(Failure::Abandoned))
    }
}

/// A lane's in-flight slot, held by the task sending on it. Given back when
/// that task stops for any reason other than an empty queue (its runtime
/// stopped before or while it ran, a panic): if no other call is in flight,
/// the queued requests then fail as abandoned instead of waiting for nobody,
/// and the next request takes the slot afresh.
struct Slot {
    store: RedisStore,
    bucket: u16,
    held: bool,
}

impl Slot {
    fn lane(&self) -> &Lane {
        self.store.inner.lanes.get(self.bucket)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.held {
            let mut state = self.lane().lock();
            state.in_flight -= 1;
            if state.in_flight == 0 {
                state.queue.clear();
            }
        }
    }
}

/// Sends `jobs`, then whatever queued meanwhile, until the lane is empty.
async fn drive(mut slot: Slot, mut jobs: Vec<Job>) {
    loop {
        let requests = jobs
            .iter()
            .map(|j| (j.bucket, j.record_key.as_str(), &j.args));
        let call = slot.store.group_call(requests);
        let result = slot.store.invoke_raw(call).await;
        answer(&slot.store, jobs, result);
        // Let the callers just answered run first: most send their next
        // request at once, and it can go in the next call.
        tokio::task::yield_now().await;
        let mut state = slot.lane().lock();
        state.drop_abandoned();
        if state.queue.is_empty() {
            state.in_flight -= 1;
            drop(state);
            slot.held = false;
            return;
        }
        let take = state.queue.len().min(MAX_GROUP);
        jobs = state.queue.drain(..take).collect();
    }
}

/// Hands each job its item of the reply.
fn answer(store: &RedisStore, jobs: Vec<Job>, result: Result<Value, Failure>) {
    match result {
        Ok(Value::Array(items)) if items.len() == jobs.len() => {
            for (job, item) in jobs.into_iter().zip(items) {
                // A caller that stopped waiting has dropped its receiver.
                let _ = job.reply.send(Ok(item));
            }
        }
        Ok(other) => {
            for job in jobs {
                let _ = job.reply.send(Err(Failure::Reply(other.clone())));
            }
        }
        Err(Failure::Unreplicated {
            acknowledged,
            reply: Value::Array(items),
        }) if items.len() == jobs.len() => {
            for (job, item) in jobs.into_iter().zip(items) {
                let failure = Failure::Unreplicated {
                    acknowledged,
                    reply: item,
                };
                // A caller still waiting gives its claim back itself; for
                // one that gave up, the lane does.
                let claimed = job.claimed_id();
                if let Err(Err(Failure::Unreplicated { reply, .. })) = job.reply.send(Err(failure))
                    && let Some(id) = claimed
                {
                    let _ = store.give_back(id, &reply);
                }
            }
        }
        Err(failure) => {
            for job in jobs {
                let _ = job.reply.send(Err(failure.clone()));
            }
        }
    }
}

/// Appends a request's arguments to `call`: its operation, its bucket's
/// status-set prefix, then the rest.
pub(super) fn append_args(call: &mut ScriptCall, args: &Cmd, status_prefix: &str) {
    let mut args = args.args_iter().filter_map(|arg| match arg {
        Arg::Simple(bytes) => Some(bytes),
        Arg::Cursor => None,
    });
    if let Some(op) = args.next() {
        call.arg(op);
    }
    call.arg(status_prefix);
    for bytes in args {
        call.arg(bytes);
    }
}
