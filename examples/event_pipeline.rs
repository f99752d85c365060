//! An event pipeline on tempox: a queue delivers each event at least once,
//! so some arrive twice; the handler is `#[idempotent]` by event id, so each
//! is applied once and a redelivery replays its recorded outcome. Downstream,
//! a search index (a cache that evicts) loses entries: a state [`Mirror`]
//! compares it with the records of the applied events, and a reconciler pass
//! puts back what is missing.
//!
//! ```text
//! cargo run --example event_pipeline
//! ```

mod support;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tempox::mirror::{Drift, Mirror, MirrorError};
use tempox::store::{Query, SqliteStore, Store};
use tempox::{Runtime, Status, idempotent};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Event {
    id: String,
    account: String,
    cents: i64,
}

#[derive(Debug, thiserror::Error)]
enum PipelineError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

/// The effects the handler has: balances, and the search index.
static BALANCES: Mutex<BTreeMap<String, i64>> = Mutex::new(BTreeMap::new());
static INDEX: Mutex<BTreeMap<String, i64>> = Mutex::new(BTreeMap::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps are consistent after every statement: a panic elsewhere
    // leaves nothing to repair.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Applies one event. Keyed by the event's id: a redelivered event replays
/// the recorded amount instead of counting it again.
#[idempotent(key = event.id, name = "pipeline.apply")]
async fn apply(event: &Event) -> Result<i64, PipelineError> {
    *lock(&BALANCES).entry(event.account.clone()).or_default() += event.cents;
    lock(&INDEX).insert(event.id.clone(), event.cents);
    Ok(event.cents)
}

/// The search index must hold every applied event: what should be there is
/// read from the records of `pipeline.apply`, what is there from the index.
struct SearchIndex {
    store: SqliteStore,
}

#[async_trait::async_trait]
impl Mirror for SearchIndex {
    type Value = i64;

    fn name(&self) -> &str {
        "search-index"
    }

    fn interval(&self) -> Duration {
        // Compared on every pass here; a service would say minutes.
        Duration::ZERO
    }

    async fn intended(&self) -> Result<BTreeMap<String, i64>, MirrorError> {
        let query = Query {
            op: Some("pipeline.apply".into()),
            statuses: vec![Status::Completed],
            limit: 1000,
            ..Query::default()
        };
        let mut intended = BTreeMap::new();
        for record in self.store.list(&query).await? {
            let cents = match &record.output {
                Some(output) => serde_json::from_slice(output)?,
                None => continue,
            };
            intended.insert(record.key().to_owned(), cents);
        }
        Ok(intended)
    }

    async fn observed(&self) -> Result<BTreeMap<String, i64>, MirrorError> {
        Ok(lock(&INDEX).clone())
    }

    async fn repair(&self, drift: &Drift<i64>) -> Result<(), MirrorError> {
        let mut index = lock(&INDEX);
        for (id, cents) in &drift.missing {
            index.insert(id.clone(), *cents);
        }
        for (id, _) in &drift.unexpected {
            index.remove(id);
        }
        for (id, intended, _) in &drift.changed {
            index.insert(id.clone(), *intended);
        }
        Ok(())
    }
}

fn event(id: &str, account: &str, cents: i64) -> Event {
    Event {
        id: id.into(),
        account: account.into(),
        cents,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = support::database("tempox-event-pipeline.db", true)?;
    let store = SqliteStore::open(&path)?;
    let rt = Runtime::builder()
        .store(store.clone())
        .mirror(SearchIndex { store })
        .build()?;
    println!("records: {}\n", path.display());

    // The queue redelivers e-2 and e-4 (their consumer timed out), and e-2
    // once more.
    let deliveries = [
        event("e-1", "alice", 1_500),
        event("e-2", "bob", 700),
        event("e-3", "alice", -300),
        event("e-2", "bob", 700),
        event("e-4", "carol", 2_000),
        event("e-4", "carol", 2_000),
        event("e-5", "bob", 250),
        event("e-2", "bob", 700),
    ];
    println!("1. {} deliveries of 5 events", deliveries.len());
    for e in &deliveries {
        let before = rt.counters().executions;
        let cents = rt.scope(apply(e)).await?;
        let how = if rt.counters().executions > before {
            "applied "
        } else {
            "replayed"
        };
        println!("    {how} {} {:>6} cents for {}", e.id, cents, e.account);
    }
    println!("    balances: {:?}", lock(&BALANCES));

    println!("\n2. the search index evicts e-1 and e-4, and keeps a stray entry");
    {
        let mut index = lock(&INDEX);
        index.remove("e-1");
        index.remove("e-4");
        index.insert("e-9".into(), 42);
        println!("    index: {:?}", index.keys().collect::<Vec<_>>());
    }

    println!("\n3. a reconciler pass compares it with the records and repairs it");
    let pass = rt.reconciler().run_once().await?;
    for m in &pass.mirrors {
        println!(
            "    mirror {}: {} key(s) drifted, {} repaired{}",
            m.name,
            m.drift,
            m.repaired,
            m.error
                .as_deref()
                .map(|e| format!(" (error: {e})"))
                .unwrap_or_default()
        );
    }
    println!("    index: {:?}", lock(&INDEX).keys().collect::<Vec<_>>());

    let c = rt.counters();
    println!(
        "\ncalls {}  bodies run {}  replayed {}",
        c.calls, c.executions, c.replays
    );
    Ok(())
}
