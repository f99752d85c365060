//! A seeded simulation of several processes sharing one store, under the
//! faults of production: crashes at any await point (a process's tokio
//! runtime dropped with every task in it), leases running out in any order
//! (a process not polled while time passes), reconciler passes from several
//! processes, retention passing, operator actions, store outages and replies
//! lost after the write applied.
//!
//! Safety is checked against the ledger the operations write
//! ([`crate::ops::World`]) and by a store wrapper that sees every takeover;
//! liveness by passes once the faults stop. The same seed replays the same
//! schedule (exactly on the memory store, whose clock and tokio's are
//! virtual; on SQLite and Redis the store's own timing varies).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempox::clock::ManualClock;
use tempox::record::{ClaimRequest, Claimed, LeaseChange, OnExpired, Transition, Transitioned};
use tempox::store::{MemoryStore, Query, SqliteStore, Store};
use tempox::{
    Fingerprint, Key, Kind, Record, RecordId, Runtime, Status, StoreError, StoreErrorKind,
    Timestamp,
};

use crate::ops::{self, with};

/// Which store the processes share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Sqlite,
    Redis,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sqlite => "sqlite",
            Backend::Redis => "redis",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Backend::Memory, Backend::Sqlite, Backend::Redis]
            .into_iter()
            .find(|b| b.name() == s)
    }
}

/// What one schedule did.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub crashes: u64,
    pub effects: u64,
    pub calls: u64,
    pub passes: u64,
    pub violations: Vec<String>,
}

/// Store calls one drive of a process may make before it counts as a loop
/// polling the store without backoff.
const SPIN_LIMIT: u64 = 20_000;

/// The times of a backend: virtual on memory and SQLite, real on Redis.
struct Times {
    lease: Duration,
    retention: Duration,
    tick: Duration,
    pause: Duration,
}

fn times(backend: Backend) -> Times {
    match backend {
        Backend::Redis => Times {
            lease: Duration::from_millis(120),
            retention: Duration::from_millis(700),
            tick: Duration::from_millis(30),
            pause: Duration::from_millis(15),
        },
        _ => Times {
            lease: Duration::from_secs(30),
            retention: Duration::from_secs(3 * 3600),
            tick: Duration::from_secs(8),
            pause: Duration::from_secs(12),
        },
    }
}

/// Faults injected into one process's view of the store, and what is
/// counted there.
#[derive(Default)]
struct Faults {
    /// Calls sent and not yet answered (a store on a thread of its own, or
    /// a server, answers while the process is not polled).
    in_flight: AtomicU64,
    down: AtomicBool,
    /// Replies lost after the write applied, per thousand writes.
    lose_per_mille: AtomicU32,
    /// Store calls since the process was last driven.
    calls: AtomicU64,
}

/// What every process's wrapper shares: the lease each record was last
/// given (claims, renewals, takeovers), to check that no takeover applies
/// while a lease is live (invariant 12), on a virtual clock.
#[derive(Default)]
struct Leases {
    until: Mutex<HashMap<RecordId, Timestamp>>,
}

#[derive(Clone)]
struct Faulty {
    inner: Arc<dyn Store>,
    faults: Arc<Faults>,
    leases: Arc<Leases>,
    clock: Option<ManualClock>,
    lease: Duration,
}

impl std::fmt::Debug for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Faulty")
    }
}

/// Counts a call in flight until it is answered or dropped.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn new(n: &'a AtomicU64) -> Self {
        n.fetch_add(1, SeqCst);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl Faulty {
    fn count(&self) {
        let n = self.faults.calls.fetch_add(1, SeqCst);
        if n == SPIN_LIMIT {
            ops::violation(format!(
                "a loop polled the store without backoff ({SPIN_LIMIT} calls in one drive)"
            ));
        }
        if n >= SPIN_LIMIT {
            // Ends the spinning task (the panic stays in it).
            panic!("spinning");
        }
    }

    /// A store slow to answer now and then (virtual time, on memory and
    /// SQLite): others run meanwhile, between a reconciler's listing and its
    /// writes, or a holder's claim and its body.
    async fn latency(&self) {
        if self.clock.is_none() {
            return;
        }
        let max = u64::try_from(self.lease.as_millis() / 8).unwrap_or(0);
        let d = with(|w| {
            let r = w.rng.as_mut()?;
            (r.u32(0..100) < 20).then(|| Duration::from_millis(r.u64(0..=max)))
        });
        if let Some(d) = d {
            tokio::time::sleep(d).await;
        }
    }

    fn before_write(&self) -> Result<bool, StoreError> {
        self.count();
        if self.faults.down.load(SeqCst) {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "store down (simulated outage)",
            ));
        }
        let per_mille = self.faults.lose_per_mille.load(SeqCst);
        let lose =
            per_mille > 0 && with(|w| w.rng.as_mut().is_some_and(|r| r.u32(0..1000) < per_mille));
        Ok(lose)
    }

    fn lost<T>(&self, lose: bool, answer: T) -> Result<T, StoreError> {
        if lose {
            Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "reply lost after the write applied (simulated)",
            ))
        } else {
            Ok(answer)
        }
    }

    /// The lease `t`'s record was last given, if `t` is a takeover.
    fn live_lease(&self, t: &Transition) -> Option<Timestamp> {
        self.clock.as_ref()?;
        if !t.if_lease_expired {
            return None;
        }
        self.leases.until.lock().unwrap().get(&t.id).copied()
    }

    /// Before `t` is sent: a write that ends the lease is taken as done,
    /// since a store may apply it while its caller never hears back (a
    /// crash on the way). Missing a lease only ever hides a violation.
    fn untrack(&self, t: &Transition) {
        if !t.to.is_active() || t.lease == LeaseChange::Clear {
            self.leases.until.lock().unwrap().remove(&t.id);
        }
    }

    /// After `t` applied: the lease it took.
    fn track(&self, t: &Transition, written: Option<&Record>) {
        if let (LeaseChange::Acquire(_), Some(r)) = (t.lease, written)
            && let Some(until) = r.lease_until
        {
            self.leases
                .until
                .lock()
                .unwrap()
                .insert(t.id.clone(), until);
        }
    }

    /// A takeover that applied: its write came before `now` (read after
    /// the store answered; a store may write on a thread of its own while
    /// the clock moves), so a lease ending after `now` was live when it
    /// wrote.
    fn check_takeover(&self, t: &Transition, until: Option<Timestamp>) {
        let Some(clock) = &self.clock else {
            return;
        };
        let now = tempox::clock::Clock::now(clock);
        if let Some(until) = until.filter(|until| *until > now) {
            ops::violation(format!(
                "{} -> {} of `{}` applied while its lease was live (until {until}, now {now})",
                t.from, t.to, t.id
            ));
        }
    }
}

#[async_trait::async_trait]
impl Store for Faulty {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claimed, StoreError> {
        self.latency().await;
        let _in_flight = InFlight::new(&self.faults.in_flight);
        let lose = self.before_write()?;
        let claimed = self.inner.claim(req).await?;
        trace_write(
            &req.id,
            || format!("claim -> {}", claimed_text(&claimed)),
            lose,
        );
        if let Claimed::Acquired { record, .. } = &claimed
            && let Some(until) = record.lease_until
        {
            self.leases
                .until
                .lock()
                .unwrap()
                .insert(record.id.clone(), until);
        }
        self.lost(lose, claimed)
    }
    async fn transition(&self, t: &Transition) -> Result<Transitioned, StoreError> {
        self.latency().await;
        let _in_flight = InFlight::new(&self.faults.in_flight);
        let lose = self.before_write()?;
        let live = self.live_lease(t);
        self.untrack(t);
        let answer = self.inner.transition(t).await?;
        trace_write(
            &t.id,
            || {
                format!(
                    "{} -> {} ({}) applied {}",
                    t.from,
                    t.to,
                    t.token,
                    matches!(answer, Transitioned::Applied(_))
                )
            },
            lose,
        );
        if let Transitioned::Applied(r) = &answer {
            self.check_takeover(t, live);
            self.track(t, Some(r));
        }
        self.lost(lose, answer)
    }
    async fn apply(&self, t: &Transition) -> Result<bool, StoreError> {
        self.latency().await;
        let _in_flight = InFlight::new(&self.faults.in_flight);
        let lose = self.before_write()?;
        let live = self.live_lease(t);
        self.untrack(t);
        let applied = self.inner.apply(t).await?;
        trace_write(
            &t.id,
            || format!("{} -> {} ({}) applied {applied}", t.from, t.to, t.token),
            lose,
        );
        if applied {
            self.check_takeover(t, live);
            self.track(t, None);
        }
        self.lost(lose, applied)
    }
    async fn renew(
        &self,
        id: &RecordId,
        status: Status,
        token: u64,
        lease: Duration,
    ) -> Result<Option<Timestamp>, StoreError> {
        self.latency().await;
        let _in_flight = InFlight::new(&self.faults.in_flight);
        let lose = self.before_write()?;
        let until = self.inner.renew(id, status, token, lease).await?;
        if let Some(until) = until {
            self.leases.until.lock().unwrap().insert(id.clone(), until);
        }
        self.lost(lose, until)
    }
    async fn get(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        self.latency().await;
        let _in_flight = InFlight::new(&self.faults.in_flight);
        self.count();
        self.inner.get(id).await
    }
    async fn due(&self, limit: usize) -> Result<Vec<Record>, StoreError> {
        self.latency().await;
        let _in_flight = InFlight::new(&self.faults.in_flight);
        self.count();
        self.inner.due(limit).await
    }
    async fn list(&self, query: &Query) -> Result<Vec<Record>, StoreError> {
        self.latency().await;
        let _in_flight = InFlight::new(&self.faults.in_flight);
        self.count();
        self.inner.list(query).await
    }
    async fn expire(&self, limit: usize) -> Result<usize, StoreError> {
        self.latency().await;
        let _in_flight = InFlight::new(&self.faults.in_flight);
        self.count();
        self.inner.expire(limit).await
    }
    async fn now(&self) -> Result<Timestamp, StoreError> {
        self.inner.now().await
    }
}

/// One simulated process: a tokio runtime of its own (dropped to crash it)
/// and a tempox runtime on its view of the store.
struct Proc {
    tokio: tokio::runtime::Runtime,
    rt: Runtime,
    faults: Arc<Faults>,
    /// When it was last polled (real time).
    last_driven: std::time::Instant,
    /// How far its clock jumps when it is next polled (it was stalled).
    jump: Duration,
    _reconciler: tempox::ReconcilerHandle,
}

/// The shared store and how to reach it.
struct Shared {
    backend: Backend,
    base: Arc<dyn Store>,
    clock: Option<ManualClock>,
    redis: Option<(String, String)>,
    leases: Arc<Leases>,
    _dir: Option<tempfile::TempDir>,
}

pub struct Sim {
    shared: Shared,
    times: Times,
    procs: Vec<Proc>,
    /// The harness's own runtime, for reading the store.
    home: tokio::runtime::Runtime,
    outcome: Outcome,
    /// Keys of the current generation (retired when retention passes).
    generation: u32,
    /// Callers' answers: the record and the output they were given.
    answers: Arc<Mutex<Vec<(RecordId, String)>>>,
    foreign: Vec<Record>,
    alerted: Arc<Mutex<BTreeSet<RecordId>>>,
    /// Alerts raised, newest last, for the operator to answer.
    paged: Arc<Mutex<Vec<RecordId>>>,
    /// The operator's command line: a runtime of its own on the store.
    operator: Runtime,
}

fn tokio_runtime(backend: Backend) -> tokio::runtime::Runtime {
    let mut b = tokio::runtime::Builder::new_current_thread();
    b.enable_all();
    if backend != Backend::Redis {
        b.start_paused(true);
    }
    b.build().unwrap()
}

impl Sim {
    /// A new world for schedule `seed`: an empty store, `processes` processes.
    pub fn new(backend: Backend, seed: u64, processes: usize, redis_url: Option<&str>) -> Self {
        fastrand::seed(seed);
        let rng = fastrand::Rng::with_seed(seed);
        let times = times(backend);
        with(|w| {
            *w = ops::World {
                rng: Some(rng),
                max_pause: times.pause,
                ..ops::World::default()
            }
        });
        let home = tokio_runtime(backend);
        let (base, clock, redis, dir): (Arc<dyn Store>, _, _, _) = match backend {
            Backend::Memory => {
                let clock = ManualClock::new();
                (
                    Arc::new(MemoryStore::with_clock(clock.clone())),
                    Some(clock),
                    None,
                    None,
                )
            }
            Backend::Sqlite => {
                let clock = ManualClock::new();
                let dir = tempfile::tempdir().unwrap();
                let store = SqliteStore::builder(dir.path().join("sim.db"))
                    .clock(clock.clone())
                    .synchronous(tempox::store::Synchronous::Normal)
                    .open()
                    .unwrap();
                (Arc::new(store), Some(clock), None, Some(dir))
            }
            Backend::Redis => {
                let url = redis_url.expect("a Redis URL").to_owned();
                // A prefix of its own: schedules never meet.
                let prefix = format!("sim{seed}-{}", fastrand::u64(..));
                let store = home.block_on(redis_store(&url, &prefix));
                (store, None, Some((url, prefix)), None)
            }
        };
        let operator = Runtime::builder()
            .shared_store(base.clone())
            .lease(times.lease)
            .retention(times.retention)
            .build()
            .unwrap();
        let shared = Shared {
            backend,
            base,
            clock,
            redis,
            leases: Arc::new(Leases::default()),
            _dir: dir,
        };
        let mut sim = Sim {
            shared,
            times,
            procs: Vec::new(),
            home,
            outcome: Outcome::default(),
            generation: 0,
            answers: Arc::new(Mutex::new(Vec::new())),
            foreign: Vec::new(),
            alerted: Arc::new(Mutex::new(BTreeSet::new())),
            paged: Arc::new(Mutex::new(Vec::new())),
            operator,
        };
        for _ in 0..processes {
            let p = sim.start_process();
            sim.procs.push(p);
        }
        sim.foreign_records();
        sim
    }

    fn start_process(&self) -> Proc {
        let tokio = tokio_runtime(self.shared.backend);
        let inner = match &self.shared.redis {
            Some((url, prefix)) => tokio.block_on(redis_store(url, prefix)),
            None => self.shared.base.clone(),
        };
        let faults = Arc::new(Faults::default());
        let store = Faulty {
            inner,
            faults: faults.clone(),
            leases: self.shared.leases.clone(),
            clock: self.shared.clock.clone(),
            lease: self.times.lease,
        };
        let (base, cap) = match self.shared.backend {
            Backend::Redis => (Duration::from_millis(5), Duration::from_millis(40)),
            _ => (Duration::from_secs(4), Duration::from_secs(30)),
        };
        let rt = Runtime::builder()
            .store(store)
            .lease(self.times.lease)
            .retention(self.times.retention)
            .in_flight_wait(self.times.lease)
            .retry_backoff(base, cap)
            .compensation_attempts(2)
            .recovery_attempts(2)
            .build()
            .unwrap();
        // Each process runs a reconciler in the background, as services do.
        let every = match self.shared.backend {
            Backend::Redis => Duration::from_millis(60),
            _ => Duration::from_secs(10),
        };
        let reconciler = {
            let _inside = tokio.enter();
            self.paging(rt.reconciler().interval(every)).spawn()
        };
        Proc {
            tokio,
            rt,
            faults,
            last_driven: std::time::Instant::now(),
            jump: Duration::ZERO,
            _reconciler: reconciler,
        }
    }

    /// `r` with the schedule's batch and the alert hook that pages the
    /// operator.
    fn paging(&self, r: tempox::Reconciler) -> tempox::Reconciler {
        let (alerted, paged) = (self.alerted.clone(), self.paged.clone());
        r.batch(4).concurrency(2).alert(move |r| {
            alerted.lock().unwrap().insert(r.id.clone());
            paged.lock().unwrap().push(r.id.clone());
        })
    }

    /// Records of another service (operations no process here links): they
    /// must be left as they are, and must not starve the others.
    fn foreign_records(&mut self) {
        let store = self.shared.base.clone();
        let lease = self.times.lease;
        let mut made = Vec::new();
        for (i, (op, kind)) in [
            ("other.flow", Kind::Workflow),
            ("other.flow", Kind::Workflow),
            ("other.charge", Kind::NonIdempotent),
            ("other.count", Kind::Idempotent),
            ("other.flow", Kind::Workflow),
        ]
        .into_iter()
        .enumerate()
        {
            let req = ClaimRequest {
                id: RecordId::new(op, &Key::new(format!("f{i}")).unwrap()),
                kind,
                fingerprint: Fingerprint::from_bytes([1; 16]),
                input: b"[]".to_vec().into(),
                lease,
                on_expired: OnExpired::TakeOver,
                workflow: None,
                step: None,
            };
            if let Claimed::Acquired { record, .. } = self.home.block_on(store.claim(&req)).unwrap()
            {
                made.push(record);
            }
        }
        self.foreign = made;
    }

    fn rng<T>(&self, f: impl FnOnce(&mut fastrand::Rng) -> T) -> T {
        with(|w| f(w.rng.as_mut().unwrap()))
    }

    /// Lets `d` pass on the store's clock (a real sleep on Redis).
    fn advance(&mut self, d: Duration) {
        match &self.shared.clock {
            Some(clock) => clock.advance(d),
            None => std::thread::sleep(d),
        }
    }

    /// Polls process `p`'s tasks while `d` passes on its tokio clock, then
    /// crashes it if a poisoned body asked for it.
    fn drive(&mut self, p: usize, d: Duration) {
        with(|w| w.process = p);
        if self.shared.backend == Backend::Redis {
            // On a real clock a process not polled for long stalls as a
            // paused one would: its leases may run out under its bodies.
            let idle = self.procs[p].last_driven.elapsed();
            if idle > self.times.lease / 2 {
                with(|w| *w.stalls.entry(p).or_default() += 1);
            }
        }
        self.procs[p].faults.calls.store(0, SeqCst);
        let d = if self.shared.backend == Backend::Redis {
            d.min(Duration::from_millis(5))
        } else {
            d
        };
        let jump = std::mem::take(&mut self.procs[p].jump);
        let paused = self.shared.backend != Backend::Redis;
        self.procs[p].tokio.block_on(async move {
            if paused && !jump.is_zero() {
                tokio::time::advance(jump).await;
            }
            tokio::time::sleep(d).await;
            tokio::task::yield_now().await;
        });
        // A store that answers from a thread of its own (SQLite's writer) or
        // a server: its answers are taken before time moves on, or the
        // process would stall past its leases while it waits.
        for _ in 0..20_000 {
            if self.procs[p].faults.in_flight.load(SeqCst) == 0 {
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
            self.procs[p].tokio.block_on(async {
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
            });
        }
        self.procs[p].last_driven = std::time::Instant::now();
        if with(|w| w.crash_requests.remove(&p)) {
            self.crash(p);
        }
    }

    /// Time passes for everyone: the clock, and each process's timers.
    fn tick(&mut self, d: Duration) {
        self.pass_time(d, None, true);
    }

    /// `d` passes for the store and for every process but `stalled`, in
    /// steps short enough for their renewals to keep their leases.
    fn pass_time(&mut self, d: Duration, stalled: Option<usize>, on_call: bool) {
        let step = self.times.lease / 4;
        let mut left = d;
        if let Some(p) = stalled {
            // When it goes on, its clock has jumped, as a paused machine's
            // does (its timers fire, and it can tell its leases ran out).
            self.procs[p].jump += d;
        }
        while !left.is_zero() {
            let chunk = left.min(step);
            left -= chunk;
            self.advance(chunk);
            for q in (0..self.procs.len()).filter(|q| Some(*q) != stalled) {
                self.drive(q, chunk);
            }
            // An operator on call answers some pages as they come.
            if on_call && !self.paged.lock().unwrap().is_empty() && self.rng(|r| r.bool()) {
                self.operator(0);
            }
        }
    }

    /// Kills process `p` with every task in it, and starts a new one there.
    fn crash(&mut self, p: usize) {
        self.outcome.crashes += 1;
        let fresh = self.start_process();
        let dead = std::mem::replace(&mut self.procs[p], fresh);
        drop(dead.rt);
        // Its reconciler dies with it, as in a crash (not stopped).
        dead.tokio.shutdown_background();
        drop(dead._reconciler);
    }

    fn key(&self, kind: &str, n: u32, flags: &str) -> String {
        format!("{kind}{}-{n}{flags}", self.generation)
    }

    /// A caller on process `p`.
    fn call(&mut self, p: usize) {
        self.outcome.calls += 1;
        let (which, n, flag) = self.rng(|r| (r.u32(0..5), r.u32(0..4), r.u32(0..40)));
        let flags = match flag {
            0 => "-poison",
            1..=6 => "-noship",
            _ => "",
        };
        let rt = self.procs[p].rt.clone();
        let answers = self.answers.clone();
        let task = match which {
            0 | 1 => {
                let order = self.key("o", n, flags);
                let id = RecordId::new("sim.order", &Key::new(order.clone()).unwrap());
                boxed(async move {
                    if let Ok(out) = rt.scope(ops::order(order)).await {
                        answers.lock().unwrap().push((id, format!("{out:?}")));
                    }
                })
            }
            2 => {
                let order = self.key("r", n, flags);
                let id = RecordId::new("sim.order_rb", &Key::new(order.clone()).unwrap());
                boxed(async move {
                    if let Ok(out) = rt.scope(ops::order_rb(order)).await {
                        answers.lock().unwrap().push((id, format!("{out:?}")));
                    }
                })
            }
            3 => {
                let key = self.key("p", n, "");
                boxed(async move {
                    let _ = rt.scope(ops::pay(key)).await;
                })
            }
            _ => {
                let key = self.key("c", n, if flag == 0 { "-poison" } else { "" });
                boxed(async move {
                    let _ = rt.scope(ops::count(key)).await;
                })
            }
        };
        self.procs[p].tokio.spawn(task);
    }

    fn reconcile(&mut self, p: usize) -> tokio::task::JoinHandle<Option<tempox::PassReport>> {
        self.outcome.passes += 1;
        let r = self.paging(self.procs[p].rt.reconciler());
        self.procs[p]
            .tokio
            .spawn(async move { r.run_once().await.ok() })
    }

    /// An operator on process `p`: retries or resolves a dead letter, or
    /// asks a stopped rollback to go on.
    fn operator(&mut self, p: usize) {
        let store = self.shared.base.clone();
        let parked = self
            .home
            .block_on(async {
                store
                    .list(&Query {
                        statuses: vec![
                            Status::CompensationFailed,
                            Status::OutcomeUnknown,
                            Status::RecoveryFailed,
                            Status::PartiallyRolledBack,
                        ],
                        limit: 1000,
                        ..Query::default()
                    })
                    .await
            })
            .unwrap_or_default();
        let parked: Vec<Record> = parked
            .into_iter()
            .filter(|r| r.op().starts_with("sim."))
            .collect();
        if parked.is_empty() {
            return;
        }
        // An operator answers the page just raised first.
        let paged = self.paged.lock().unwrap().pop();
        let pick = self.rng(|r| r.usize(0..parked.len()));
        let r = paged
            .and_then(|id| parked.iter().find(|r| r.id == id))
            .unwrap_or(&parked[pick])
            .clone();
        let resolve = self.rng(|r| r.bool());
        if r.status == Status::PartiallyRolledBack && !resolve {
            // Runs compensations: in a process, which may crash.
            let rt = self.procs[p].rt.clone();
            self.procs[p].tokio.spawn(async move {
                let _ = rt.recover_workflow(&r.id).await;
            });
            return;
        }
        // The operator's own command line, at once.
        let rt = self.operator.clone();
        self.home.block_on(async move {
            match (r.status, resolve) {
                (Status::CompensationFailed, false) => {
                    let _ = rt.retry(&r.id).await;
                }
                _ => {
                    // Resolving a step of an order means undoing by hand
                    // what it did, then saying so (the answer may be lost).
                    let order = r.workflow.as_ref().map(|w| w.key().to_owned());
                    with(|w| match (r.op(), order) {
                        ("sim.charge", Some(order)) if w.charges.contains_key(&order) => {
                            w.refunded.insert(order);
                        }
                        ("sim.reserve", Some(order)) => {
                            w.released.insert(order);
                        }
                        _ => {}
                    });
                    let _ = rt.resolve(&r.id, "settled by hand").await;
                }
            }
        });
    }

    /// One step of the schedule, chosen by the seed.
    fn step(&mut self) {
        let n = self.procs.len();
        let (action, p, frac) = self.rng(|r| (r.u32(0..100), r.usize(0..n), r.f64()));
        let tick = self.times.tick.mul_f64(frac);
        if tracing_on() {
            let now = self
                .shared
                .clock
                .as_ref()
                .map(|c| tempox::clock::Clock::now(c).to_string());
            eprintln!("step: action {action} process {p} tick {tick:?} at {now:?}");
        }
        match action {
            0..=27 => self.call(p),
            28..=45 => self.drive(p, tick),
            46..=60 => self.tick(tick),
            61..=66 => {
                // Process p stalls while the others go on past its leases.
                with(|w| *w.stalls.entry(p).or_default() += 1);
                self.pass_time(self.times.lease + tick, Some(p), true);
            }
            67..=71 => self.crash(p),
            72..=81 => {
                self.reconcile(p);
            }
            82..=88 => self.operator(p),
            89 => {
                // Retention passes (a weekend): the keys of before are
                // not called again; what is still under way goes on.
                // Nobody answers pages over the weekend.
                self.generation += 1;
                let d = self.times.retention + self.times.lease;
                self.pass_time(d, None, false);
            }
            90..=93 => {
                let down = &self.procs[p].faults.down;
                let now_down = !down.load(SeqCst);
                down.store(now_down, SeqCst);
                if now_down {
                    // Its holders can no longer renew: like a stall, their
                    // claims may be taken over while their bodies go on.
                    with(|w| *w.stalls.entry(p).or_default() += 1);
                }
            }
            94..=96 => {
                let lose = &self.procs[p].faults.lose_per_mille;
                let now = if lose.load(SeqCst) == 0 { 150 } else { 0 };
                lose.store(now, SeqCst);
            }
            _ => with(|w| w.compensations_fail = !w.compensations_fail),
        }
    }

    /// Runs `steps` steps, then lets the system settle with the faults
    /// stopped, and checks the invariants. Returns what happened.
    pub fn run(mut self, steps: usize) -> Outcome {
        for _ in 0..steps {
            self.step();
        }
        // Faults stop: no outage, no lost reply, compensations work.
        for proc in &self.procs {
            proc.faults.down.store(false, SeqCst);
            proc.faults.lose_per_mille.store(0, SeqCst);
        }
        with(|w| w.compensations_fail = false);
        let lease = self.times.lease;
        // The callers still under way finish (or time out).
        for _ in 0..6 {
            self.tick(lease / 3);
        }
        let mut settled = false;
        for _ in 0..60 {
            let pass = self.reconcile(0);
            for _ in 0..200 {
                if pass.is_finished() {
                    break;
                }
                self.tick(lease / 10);
            }
            if !pass.is_finished() {
                ops::violation("a reconciler pass never ended".into());
                break;
            }
            if self.unsettled().is_empty() {
                settled = true;
                break;
            }
            self.tick(lease + Duration::from_millis(5));
        }
        if !settled && with(|w| w.violations.is_empty()) {
            let stuck = self.unsettled();
            let mut v = String::from("not settled after 60 passes once faults stopped:");
            for r in stuck.iter().take(6) {
                let _ = write!(
                    v,
                    " {} {} (due {:?});",
                    r.id,
                    r.status,
                    r.due_at.map(|d| d.to_string())
                );
            }
            ops::violation(v);
        }
        self.check_ledger();
        let (effects, violations) = with(|w| (w.effects, std::mem::take(&mut w.violations)));
        self.outcome.effects = effects;
        self.outcome.violations = violations;
        for proc in self.procs.drain(..) {
            drop(proc.rt);
            proc.tokio.shutdown_background();
            drop(proc._reconciler);
        }
        self.outcome.clone()
    }

    fn all_records(&self) -> Vec<Record> {
        let store = self.shared.base.clone();
        self.home.block_on(async move {
            let mut all = Vec::new();
            let mut q = Query {
                limit: 1000,
                ..Query::default()
            };
            loop {
                let page = store.list(&q).await.unwrap();
                let done = page.len() < q.limit;
                q.after = page.last().map(|r| r.id.clone());
                all.extend(page);
                if done {
                    return all;
                }
            }
        })
    }

    /// Our records that are not where they may rest: final (a workflow with
    /// its follow-up done), a dead letter whose alert was raised, or a
    /// stopped rollback held back by a dead letter.
    fn unsettled(&self) -> Vec<Record> {
        let all = self.all_records();
        let parked_step = |wf: &RecordId| {
            all.iter().any(|s| {
                s.workflow.as_ref() == Some(wf)
                    && (s.status.is_dead_letter() || s.status == Status::PartiallyRolledBack)
            })
        };
        all.iter()
            .filter(|r| r.op().starts_with("sim."))
            .filter(|r| {
                let rests = if r.status.is_final() || r.status.is_dead_letter() {
                    r.due_at.is_none()
                } else if r.status == Status::PartiallyRolledBack {
                    parked_step(&r.id)
                } else {
                    false
                };
                !rests
            })
            .cloned()
            .collect()
    }

    fn check_ledger(&self) {
        let all = self.all_records();
        let by_id: BTreeMap<_, _> = all.iter().map(|r| (r.id.clone(), r)).collect();
        with(|w| {
            for r in all
                .iter()
                .filter(|r| r.kind == Kind::Workflow && r.workflow.is_none())
            {
                let order = r.key().to_owned();
                if w.zombie_charges.contains(&order) {
                    continue;
                }
                let charged = w.charges.contains_key(&order);
                let refunded = w.refunded.contains(&order);
                let reserved = w.reserved.contains(&order);
                let released = w.released.contains(&order);
                match r.status {
                    Status::Completed if refunded || released => w.violations.push(format!(
                        "{} completed, but its effects were undone (refunded {refunded}, released {released})",
                        r.id
                    )),
                    Status::RolledBack if charged != refunded || reserved != released => {
                        let steps: Vec<String> = all
                            .iter()
                            .filter(|s| s.workflow.as_ref() == Some(&r.id))
                            .map(|s| format!("{} {} {:?}", s.id, s.status, s.error))
                            .collect();
                        let writes = ops::writes_of(w, &order);
                        let v = format!(
                            "{} rolled back, but charged {charged} refunded {refunded}, reserved {reserved} released {released}; steps: {steps:#?}; writes: {writes:#?}",
                            r.id
                        );
                        w.violations.push(v)
                    }
                    _ => {}
                }
            }
        });
        for (id, answer) in self.answers.lock().unwrap().iter() {
            if let Some(r) = by_id.get(id)
                && r.status == Status::Completed
            {
                let recorded: Option<String> = r
                    .output
                    .as_deref()
                    .and_then(|o| serde_json::from_slice(o).ok());
                if recorded.map(|o| format!("{o:?}")).as_deref() != Some(answer.as_str()) {
                    ops::violation(format!(
                        "a caller of {id} was answered {answer}, the record holds {:?}",
                        r.output
                    ));
                }
            }
        }
        for before in &self.foreign {
            match by_id.get(&before.id) {
                Some(now) if now.status == before.status && now.token == before.token => {}
                other => ops::violation(format!(
                    "another service's record {} was touched: {:?}",
                    before.id,
                    other.map(|r| r.status)
                )),
            }
        }
        let alerted = self.alerted.lock().unwrap();
        for r in all
            .iter()
            .filter(|r| r.status.is_dead_letter() && r.op().starts_with("sim."))
        {
            if !alerted.contains(&r.id) {
                ops::violation(format!(
                    "{} is a dead letter whose alert was never raised",
                    r.id
                ));
            }
        }
    }
}

/// Keeps every write in the schedule's log (a violation quotes those of
/// its records), and prints those matching `TEMPOX_SIM_TRACE`.
fn trace_write(id: &RecordId, what: impl FnOnce() -> String, lost: bool) {
    let line = with(|w| {
        let line = format!(
            "p{} {id}: {}{}",
            w.process,
            what(),
            if lost { " (reply lost)" } else { "" }
        );
        w.log.push(line.clone());
        line
    });
    if let Ok(filter) = std::env::var("TEMPOX_SIM_TRACE")
        && id.as_str().contains(&filter)
    {
        eprintln!("    {line}");
    }
}

fn claimed_text(c: &Claimed) -> String {
    match c {
        Claimed::Acquired { record, previous } => {
            format!("acquired token {} after {previous:?}", record.token)
        }
        Claimed::Existing(r) => format!("existing {} token {}", r.status, r.token),
        Claimed::MarkedUnknown(_) => "marked unknown".into(),
    }
}

/// Whether to say what each step does (`TEMPOX_SIM_TRACE=1`).
pub fn tracing_on() -> bool {
    std::env::var_os("TEMPOX_SIM_TRACE").is_some()
}

fn boxed(
    f: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(f)
}

async fn redis_store(url: &str, prefix: &str) -> Arc<dyn Store> {
    Arc::new(
        tempox::store::RedisStore::builder(url)
            .prefix(prefix)
            .buckets(4)
            .response_timeout(Duration::from_millis(500))
            .connect()
            .await
            .unwrap(),
    )
}

/// Runs `count` schedules from `first`, `steps` steps each; the seeds that
/// broke an invariant, with what broke.
pub fn run_many(
    backend: Backend,
    first: u64,
    count: u64,
    steps: usize,
    redis_url: Option<&str>,
) -> (Outcome, Vec<(u64, Vec<String>)>) {
    let mut total = Outcome::default();
    let mut failed = Vec::new();
    for seed in first..first + count {
        let out = Sim::new(backend, seed, 3, redis_url).run(steps);
        total.crashes += out.crashes;
        total.effects += out.effects;
        total.calls += out.calls;
        total.passes += out.passes;
        if !out.violations.is_empty() {
            failed.push((seed, out.violations.clone()));
            total.violations.extend(out.violations);
        }
    }
    (total, failed)
}

/// The command that replays schedule `seed` on `backend`.
pub fn replay_command(backend: Backend, seed: u64, steps: usize) -> String {
    format!(
        "TEMPOX_SIM_STORE={} TEMPOX_SIM_SEED={seed} TEMPOX_SIM_STEPS={steps} cargo test --all-features --test sim replay -- --nocapture",
        backend.name()
    )
}
