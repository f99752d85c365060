//! The operator command line, `tempox` (feature `cli`): list and show the
//! records of a store, list the dead letters, retry or resolve one, count
//! records by status. Human tables by default, JSON with `--json`.
//!
//! ```text
//! tempox --store sqlite:orders.db list --status pending
//! tempox --store redis://127.0.0.1:6379 dead-letters
//! tempox --store redis://127.0.0.1:6379 resolve 'payments.charge/o-17' --note 'not charged; ticket 4411'
//! TEMPOX_STORE=orders.db tempox --json show 'shop.checkout/order-4'
//! ```
//!
//! Only `retry` and `resolve` change records. A SQLite file that does not
//! exist is an error, never a new empty store. Exit status: 0 done, 1 the
//! command failed (no such record, a record in the wrong status, a store
//! error), 2 bad arguments.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::record::{Blob, Record, RecordId, Status, Timestamp};
use crate::store::Query;
use crate::{Error, Runtime};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "tempox",
    version,
    about = "Inspect and repair the operation records of a tempox store"
)]
pub struct Cli {
    /// Where the records are: a SQLite file (`sqlite:PATH`, or just its
    /// path), or a Redis server (`redis://[user:password@]host[:port][/db]`,
    /// `unix:///path/to/socket`); with `--cluster`, the comma-separated URLs
    /// of Redis Cluster nodes.
    #[arg(long, env = "TEMPOX_STORE", value_name = "STORE")]
    store: String,
    /// The Redis URLs are nodes of a Redis Cluster.
    #[arg(long)]
    cluster: bool,
    /// The prefix of the Redis keys (as given to `RedisStoreBuilder::prefix`).
    #[arg(long, default_value = "tempox", value_name = "PREFIX")]
    prefix: String,
    /// JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Records in id order, filtered by status, operation or workflow.
    List {
        /// Only records in this status (repeat for several).
        #[arg(long, value_name = "STATUS")]
        status: Vec<Status>,
        /// Only records of this operation (its name, e.g. `payments.charge`).
        #[arg(long, value_name = "NAME")]
        op: Option<String>,
        /// Only the steps of this workflow (its record id).
        #[arg(long, value_name = "ID", value_parser = RecordId::parse)]
        workflow: Option<RecordId>,
        /// Only records whose id sorts after this one (the next page).
        #[arg(long, value_name = "ID", value_parser = RecordId::parse)]
        after: Option<RecordId>,
        /// At most this many.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// One record, whole (a workflow with its steps).
    Show {
        /// The record's id, `<operation>/<key>`.
        #[arg(value_parser = RecordId::parse)]
        id: RecordId,
    },
    /// The records parked for an operator: `outcome_unknown` and
    /// `compensation_failed`.
    DeadLetters,
    /// Sends a `compensation_failed` record back to be compensated, its
    /// attempts reset.
    Retry {
        /// The record's id, `<operation>/<key>`.
        #[arg(value_parser = RecordId::parse)]
        id: RecordId,
    },
    /// Closes a dead letter (or a stalled rollback) as `resolved`, keeping the
    /// note on the record.
    Resolve {
        /// The record's id, `<operation>/<key>`.
        #[arg(value_parser = RecordId::parse)]
        id: RecordId,
        /// What was done, for whoever reads the record next.
        #[arg(long)]
        note: String,
    },
    /// How many records are in each status. Reads every record.
    Stats,
}

/// Runs the command line of this process and says how it went: prints the
/// answer on standard output, or the error on standard error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let tokio = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(tokio) => tokio,
        Err(e) => {
            eprintln!("tempox: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match tokio.block_on(run(&cli)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tempox: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `cli` and returns what it prints.
///
/// # Errors
/// The store cannot be opened or fails, or the command is refused (no such
/// record, a record in the wrong status), as a message for the operator.
pub async fn run(cli: &Cli) -> Result<String, String> {
    let rt = Runtime::builder()
        .store(open(cli).await?)
        .build()
        .map_err(|e| e.to_string())?;
    let failed = |e: Error| e.to_string();
    let json = cli.json;
    match &cli.command {
        Command::List {
            status,
            op,
            workflow,
            after,
            limit,
        } => {
            let query = Query {
                statuses: status.clone(),
                op: op.clone(),
                workflow: workflow.clone(),
                after: after.clone(),
                limit: usize::try_from(*limit).unwrap_or(usize::MAX),
            };
            let records = rt.store().list(&query).await.map_err(|e| e.to_string())?;
            Ok(records_out(&records, json))
        }
        Command::Show { id } => {
            let record = rt
                .record(id)
                .await
                .map_err(failed)?
                .ok_or_else(|| format!("no record `{id}`"))?;
            let mut steps = if record.workflow.is_none() {
                rt.list_all(Query {
                    workflow: Some(id.clone()),
                    ..Query::default()
                })
                .await
                .map_err(failed)?
            } else {
                Vec::new()
            };
            steps.sort_by_key(|s| s.step);
            Ok(show_out(&record, &steps, json))
        }
        Command::DeadLetters => Ok(records_out(&rt.dead_letters().await.map_err(failed)?, json)),
        Command::Retry { id } => Ok(show_out(&rt.retry(id).await.map_err(failed)?, &[], json)),
        Command::Resolve { id, note } => Ok(show_out(
            &rt.resolve(id, note).await.map_err(failed)?,
            &[],
            json,
        )),
        Command::Stats => {
            let mut counts = BTreeMap::new();
            for status in Status::ALL {
                let n = rt
                    .list_all(Query::statuses(&[*status]))
                    .await
                    .map_err(failed)?
                    .len();
                counts.insert(status.as_str(), n);
            }
            Ok(stats_out(&counts, json))
        }
    }
}

/// The store named by `--store`, opened as it is.
async fn open(cli: &Cli) -> Result<std::sync::Arc<dyn crate::store::Store>, String> {
    let store = cli.store.trim();
    let redis = ["redis://", "rediss://", "unix://"]
        .iter()
        .any(|scheme| store.starts_with(scheme));
    if redis || cli.cluster {
        return open_redis(cli, store).await;
    }
    if cli.prefix != "tempox" {
        return Err("`--prefix` is for Redis stores; this store is a SQLite file".to_owned());
    }
    open_sqlite(store.strip_prefix("sqlite:").unwrap_or(store))
}

#[cfg(feature = "redis")]
async fn open_redis(
    cli: &Cli,
    urls: &str,
) -> Result<std::sync::Arc<dyn crate::store::Store>, String> {
    use crate::store::RedisStore;
    let builder = if cli.cluster {
        let urls: Vec<&str> = urls.split(',').map(str::trim).collect();
        RedisStore::cluster_builder(&urls)
    } else {
        RedisStore::builder(urls)
    };
    let store = builder
        .prefix(cli.prefix.clone())
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(std::sync::Arc::new(store))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(
    _cli: &Cli,
    urls: &str,
) -> Result<std::sync::Arc<dyn crate::store::Store>, String> {
    Err(format!(
        "`{urls}` is a Redis store, and this tempox was built without Redis (feature `redis`)"
    ))
}

#[cfg(feature = "sqlite")]
fn open_sqlite(path: &str) -> Result<std::sync::Arc<dyn crate::store::Store>, String> {
    let file = std::path::Path::new(path);
    if path.is_empty() {
        return Err("`--store` is empty: give a SQLite file or a Redis URL".to_owned());
    }
    if !file.exists() {
        return Err(format!(
            "no SQLite store at {path}: the file does not exist (tempox opens a store, it never creates one here)"
        ));
    }
    let store = crate::store::SqliteStore::open(file).map_err(|e| e.to_string())?;
    Ok(std::sync::Arc::new(store))
}

#[cfg(not(feature = "sqlite"))]
fn open_sqlite(path: &str) -> Result<std::sync::Arc<dyn crate::store::Store>, String> {
    Err(format!(
        "`{path}` is a SQLite store, and this tempox was built without SQLite (feature `sqlite`)"
    ))
}

/// A time as RFC 3339 in UTC, or its milliseconds when past what the system
/// clock can hold.
fn time(t: Timestamp) -> String {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(t.as_millis()))
        .filter(|at| *at < SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799))
        .map_or_else(
            || format!("{} ms", t.as_millis()),
            |at| humantime::format_rfc3339_millis(at).to_string(),
        )
}

/// A recorded input or output: its JSON, or its bytes' length when it is none.
fn blob_json(blob: &Blob) -> serde_json::Value {
    serde_json::from_slice(blob.as_bytes()).unwrap_or_else(|_| {
        serde_json::Value::String(format!("<{} bytes, not JSON>", blob.as_bytes().len()))
    })
}

/// A record as `--json` prints it.
#[derive(Serialize)]
struct RecordView<'a> {
    id: &'a str,
    op: &'a str,
    key: &'a str,
    kind: &'a str,
    status: &'a str,
    attempts: u32,
    token: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    workflow: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<u32>,
    created_at: String,
    updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    due_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    input: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<Vec<RecordView<'a>>>,
}

impl<'a> RecordView<'a> {
    fn of(r: &'a Record) -> Self {
        RecordView {
            id: r.id.as_str(),
            op: r.op(),
            key: r.key(),
            kind: r.kind.as_str(),
            status: r.status.as_str(),
            attempts: r.attempts,
            token: r.token,
            workflow: r.workflow.as_ref().map(RecordId::as_str),
            step: r.step,
            created_at: time(r.created_at),
            updated_at: time(r.updated_at),
            lease_until: r.lease_until.map(time),
            due_at: r.due_at.map(time),
            expires_at: r.expires_at.map(time),
            input: blob_json(&r.input),
            output: r.output.as_ref().map(blob_json),
            error: r.error.as_deref(),
            note: r.note.as_deref(),
            steps: None,
        }
    }
}

fn to_json(value: &impl Serialize) -> String {
    // Records hold only strings, numbers and JSON values: nothing here can
    // fail to serialize.
    let mut out = serde_json::to_string_pretty(value).unwrap_or_default();
    out.push('\n');
    out
}

fn records_out(records: &[Record], json: bool) -> String {
    if json {
        return to_json(&records.iter().map(RecordView::of).collect::<Vec<_>>());
    }
    if records.is_empty() {
        return "no records\n".to_owned();
    }
    let width = records
        .iter()
        .map(|r| r.id.as_str().chars().count())
        .max()
        .unwrap_or(0)
        .max(2);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:<21}  {:>8}  {:<24}  ERROR",
        "ID", "STATUS", "ATTEMPTS", "UPDATED"
    );
    for r in records {
        let error = r.error.as_deref().unwrap_or("").replace('\n', " ");
        let error: String = if error.chars().count() > 60 {
            error.chars().take(59).chain(['…']).collect()
        } else {
            error
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:<21}  {:>8}  {:<24}  {error}",
            r.id.as_str(),
            r.status.as_str(),
            r.attempts,
            time(r.updated_at),
        );
    }
    out
}

fn show_out(record: &Record, steps: &[Record], json: bool) -> String {
    if json {
        let mut view = RecordView::of(record);
        if !steps.is_empty() {
            view.steps = Some(steps.iter().map(RecordView::of).collect());
        }
        return to_json(&view);
    }
    let v = RecordView::of(record);
    let mut out = String::new();
    let mut line = |name: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(out, "{name:<12} {value}");
    };
    line("id", &v.id);
    line("kind", &v.kind);
    line("status", &v.status);
    line("attempts", &v.attempts);
    line("token", &v.token);
    if let (Some(workflow), Some(step)) = (v.workflow, v.step) {
        line("workflow", &format!("{workflow} (step {step})"));
    }
    line("created", &v.created_at);
    line("updated", &v.updated_at);
    for (name, at) in [
        ("lease until", &v.lease_until),
        ("due", &v.due_at),
        ("expires", &v.expires_at),
    ] {
        if let Some(at) = at {
            line(name, at);
        }
    }
    line("input", &v.input);
    if let Some(output) = &v.output {
        line("output", output);
    }
    if let Some(error) = v.error {
        line("error", &error);
    }
    if let Some(note) = v.note {
        for (i, note_line) in note.lines().enumerate() {
            line(if i == 0 { "note" } else { "" }, &note_line);
        }
    }
    if !steps.is_empty() {
        out.push_str("\nsteps:\n");
        out.push_str(&records_out(steps, false));
    }
    out
}

fn stats_out(counts: &BTreeMap<&str, usize>, json: bool) -> String {
    let total: usize = counts.values().sum();
    if json {
        let mut all: BTreeMap<&str, usize> = counts.clone();
        all.insert("total", total);
        return to_json(&all);
    }
    let mut out = String::new();
    // In the state machine's order, not the alphabet's.
    for status in Status::ALL {
        let n = counts.get(status.as_str()).copied().unwrap_or(0);
        let _ = writeln!(out, "{:<21} {n:>10}", status.as_str());
    }
    let _ = writeln!(out, "{:<21} {total:>10}", "total");
    out
}
