//! State mirroring: the Blueprint's third strategy, for state that drifts on
//! its own (a cache that evicts, a replica that misses writes).
//!
//! A [`Mirror`] says what the state should be (`intended`), what it is
//! (`observed`), and how to repair a [`Drift`] between them. Registered on the
//! runtime ([`RuntimeBuilder::mirror`](crate::RuntimeBuilder::mirror)), it is
//! compared on its own interval by the reconciler's passes; a repair that fails
//! is tried again on the next pass and reported.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

/// An error from a mirror's own code.
pub type MirrorError = Box<dyn std::error::Error + Send + Sync>;

/// A state that tempox keeps in line with what it should be.
///
/// ```
/// # extern crate tempox_runtime as tempox;
/// use std::collections::BTreeMap;
/// use std::sync::Mutex;
/// use tempox::mirror::{Drift, Mirror, MirrorError};
///
/// /// Orders marked paid in the database must be in the fulfilment queue.
/// struct PaidOrders { db: Vec<String>, queue: Mutex<BTreeMap<String, ()>> }
///
/// #[async_trait::async_trait]
/// impl Mirror for PaidOrders {
///     type Value = ();
///     fn name(&self) -> &str { "fulfilment-queue" }
///     async fn intended(&self) -> Result<BTreeMap<String, ()>, MirrorError> {
///         Ok(self.db.iter().map(|id| (id.clone(), ())).collect())
///     }
///     async fn observed(&self) -> Result<BTreeMap<String, ()>, MirrorError> {
///         Ok(self.queue.lock().map_err(|_| "poisoned")?.clone())
///     }
///     async fn repair(&self, drift: &Drift<()>) -> Result<(), MirrorError> {
///         let mut queue = self.queue.lock().map_err(|_| "poisoned")?;
///         for (id, ()) in &drift.missing { queue.insert(id.clone(), ()); }
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Mirror: Send + Sync + 'static {
    /// What each key maps to; compared with `==`.
    type Value: PartialEq + fmt::Debug + Send + Sync + 'static;

    /// The mirror's name in reports.
    fn name(&self) -> &str;

    /// How often it is compared (default one minute).
    fn interval(&self) -> Duration {
        Duration::from_secs(60)
    }

    /// What the state should be.
    async fn intended(&self) -> Result<BTreeMap<String, Self::Value>, MirrorError>;

    /// What the state is.
    async fn observed(&self) -> Result<BTreeMap<String, Self::Value>, MirrorError>;

    /// Makes the observed state match the intended one for every entry of `drift`.
    /// Must be safe to call again with the same drift.
    async fn repair(&self, drift: &Drift<Self::Value>) -> Result<(), MirrorError>;
}

/// How observed state differs from intended state.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift<V> {
    /// Intended but not observed: `(key, intended value)`.
    pub missing: Vec<(String, V)>,
    /// Observed but not intended: `(key, observed value)`.
    pub unexpected: Vec<(String, V)>,
    /// Observed with another value: `(key, intended, observed)`.
    pub changed: Vec<(String, V, V)>,
}

impl<V> Drift<V> {
    /// How many keys differ.
    pub fn len(&self) -> usize {
        self.missing.len() + self.unexpected.len() + self.changed.len()
    }

    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V: PartialEq> Drift<V> {
    /// The drift from `observed` to `intended`.
    pub fn between(intended: BTreeMap<String, V>, mut observed: BTreeMap<String, V>) -> Self {
        let mut drift = Drift {
            missing: Vec::new(),
            unexpected: Vec::new(),
            changed: Vec::new(),
        };
        for (key, want) in intended {
            match observed.remove(&key) {
                None => drift.missing.push((key, want)),
                Some(have) if have != want => drift.changed.push((key, want, have)),
                Some(_) => {}
            }
        }
        drift.unexpected = observed.into_iter().collect();
        drift
    }
}

/// What one comparison of a mirror found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorReport {
    /// The mirror's name.
    pub name: String,
    /// Keys that differed.
    pub drift: usize,
    /// Keys repaired (all of `drift` when the repair succeeded).
    pub repaired: usize,
    /// Why reading or repairing failed; it is tried again on the next pass.
    pub error: Option<String>,
}

/// A mirror's totals since the runtime was built; see
/// [`Runtime::mirrors`](crate::Runtime::mirrors).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorStats {
    /// The mirror's name.
    pub name: String,
    /// Comparisons run.
    pub runs: u64,
    /// Keys found drifted, summed over runs.
    pub drift_found: u64,
    /// Keys repaired, summed over runs.
    pub repaired: u64,
    /// Runs whose reading or repair failed.
    pub failures: u64,
    /// The last failure.
    pub last_error: Option<String>,
}

/// A mirror with its type erased, and its schedule.
pub(crate) struct Registered {
    mirror: Arc<dyn Erased>,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for Registered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirror")
            .field("name", &self.mirror.name())
            .finish()
    }
}

struct State {
    next_run: Option<Instant>,
    running: bool,
    stats: MirrorStats,
}

#[async_trait]
trait Erased: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn interval(&self) -> Duration;
    async fn compare_and_repair(&self) -> (usize, usize, Option<String>);
}

#[async_trait]
impl<M: Mirror> Erased for M {
    fn name(&self) -> &str {
        Mirror::name(self)
    }

    fn interval(&self) -> Duration {
        Mirror::interval(self)
    }

    async fn compare_and_repair(&self) -> (usize, usize, Option<String>) {
        let intended = match self.intended().await {
            Ok(v) => v,
            Err(e) => return (0, 0, Some(format!("reading the intended state: {e}"))),
        };
        let observed = match self.observed().await {
            Ok(v) => v,
            Err(e) => return (0, 0, Some(format!("reading the observed state: {e}"))),
        };
        let drift = Drift::between(intended, observed);
        if drift.is_empty() {
            return (0, 0, None);
        }
        match self.repair(&drift).await {
            Ok(()) => (drift.len(), drift.len(), None),
            Err(e) => (drift.len(), 0, Some(format!("repairing: {e}"))),
        }
    }
}

impl Registered {
    pub(crate) fn new(mirror: impl Mirror) -> Self {
        let name = Mirror::name(&mirror).to_owned();
        Registered {
            mirror: Arc::new(mirror),
            state: Arc::new(Mutex::new(State {
                next_run: None,
                running: false,
                stats: MirrorStats {
                    name,
                    ..MirrorStats::default()
                },
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Compares and repairs if the mirror is due (its interval passed, or its
    /// last run failed) and no other pass of this process is running it.
    pub(crate) async fn run_if_due(&self) -> Option<MirrorReport> {
        {
            let mut state = self.lock();
            let due = state.next_run.is_none_or(|at| at <= Instant::now());
            if !due || state.running {
                return None;
            }
            state.running = true;
        }
        let (drift, repaired, error) = self.mirror.compare_and_repair().await;
        let mut state = self.lock();
        state.running = false;
        state.stats.runs += 1;
        state.stats.drift_found += drift as u64;
        state.stats.repaired += repaired as u64;
        // A failed run is tried again on the next pass; a good one waits its interval.
        state.next_run = error
            .is_none()
            .then(|| Instant::now() + self.mirror.interval());
        if let Some(e) = &error {
            state.stats.failures += 1;
            state.stats.last_error = Some(e.clone());
            tracing::warn!(mirror = self.mirror.name(), error = %e, "mirror run failed; next pass tries again");
        }
        Some(MirrorReport {
            name: self.mirror.name().to_owned(),
            drift,
            repaired,
            error,
        })
    }

    pub(crate) fn stats(&self) -> MirrorStats {
        self.lock().stats.clone()
    }
}
