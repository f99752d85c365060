//! The operator command line, `tempox` (feature `cli`): list and show the
//! records of a store, list the dead letters, retry or resolve one, recover
//! a workflow, count records by status. Human tables by default, JSON with
//! `--json`.
//!
//! ```text
//! tempox --store sqlite:orders.db list --status pending
//! tempox --store redis://127.0.0.1:6379 dead-letters
//! tempox --store redis://127.0.0.1:6379 resolve 'payments.charge/o-17' --note 'not charged; ticket 4411'
//! TEMPOX_STORE=orders.db tempox --json show 'shop.checkout/order-4'
//! ```
//!
//! Only `retry`, `resolve` and `recover` change records, and nothing starts
//! a store: a SQLite file that does not exist, or a Redis prefix with no
//! tempox data, is an error. Exit status: 0 done, 1 the command failed (no
//! such record, a record in the wrong status, a store error), 2 bad
//! arguments.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::{CommandFactory, Parser, Subcommand};
use serde::Serialize;
use serde_json::value::RawValue;
use unicode_width::UnicodeWidthStr;

use crate::record::{Blob, Kind, Record, RecordId, Status, Timestamp};
use crate::store::Query;
use crate::{Error, Runtime};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "tempox",
    version,
    about = "Inspect and repair the operation records of a tempox store"
)]
struct Cli {
    /// Where the records are: a SQLite file (`sqlite:PATH`, or just its
    /// path), or a Redis server (`redis://[user:password@]host[:port][/db]`,
    /// `rediss://…` for TLS, `unix:///path/to/socket`); with `--cluster`, the
    /// comma-separated URLs of Redis Cluster nodes.
    #[arg(
        long,
        global = true,
        env = "TEMPOX_STORE",
        hide_env_values = true,
        value_name = "STORE"
    )]
    store: Option<String>,
    /// The Redis URLs are nodes of a Redis Cluster.
    #[arg(long, global = true)]
    cluster: bool,
    /// The prefix of the Redis keys (`RedisStoreBuilder::prefix`).
    #[arg(long, global = true, env = "TEMPOX_PREFIX", value_name = "PREFIX")]
    prefix: Option<String>,
    /// The number of buckets of the Redis store (`RedisStoreBuilder::buckets`;
    /// the error says which when it differs).
    #[arg(long, global = true, value_name = "N")]
    buckets: Option<u16>,
    /// Report a change (`retry`, `resolve`) done only once N replicas of the
    /// Redis server hold it, waiting at most 1 s
    /// (`RedisStoreBuilder::wait_for_replicas`).
    #[arg(long, global = true, value_name = "N")]
    wait_replicas: Option<u32>,
    /// A PEM file of the certificate authorities to trust for `rediss://`
    /// servers, instead of the system's.
    #[cfg(feature = "redis-tls")]
    #[arg(long, global = true, env = "TEMPOX_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// A PEM file of the client certificate to present to `rediss://`
    /// servers that ask for one (with `--tls-key`).
    #[cfg(feature = "redis-tls")]
    #[arg(
        long,
        global = true,
        env = "TEMPOX_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM file of the key of `--tls-cert`.
    #[cfg(feature = "redis-tls")]
    #[arg(
        long,
        global = true,
        env = "TEMPOX_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<std::path::PathBuf>,
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
    Show(Target),
    /// The records parked for an operator: `outcome_unknown`,
    /// `compensation_failed` and `recovery_failed`.
    DeadLetters,
    /// Tries a dead letter again, its attempts reset: a
    /// `compensation_failed` record is compensated again; a
    /// `recovery_failed` workflow is run again, a call's key freed.
    Retry(Target),
    /// Recovers a workflow now instead of at the reconciler's next look:
    /// resumes or rolls back a crashed one, carries a stopped rollback on
    /// (once nothing blocks it), starts a finished one's retention. It runs
    /// the workflow's code, so run it from a program that links it (a
    /// service's own command line, `tempox::cli::main_from`).
    Recover(Target),
    /// Closes a dead letter (or a stalled rollback) as `resolved`, keeping the
    /// note on the record.
    Resolve {
        #[command(flatten)]
        target: Target,
        /// What was done, for whoever reads the record next.
        #[arg(long, value_parser = not_empty)]
        note: String,
        /// How long the resolved record is kept: your runtime's `retention`
        /// [default: the runtime's, 24h].
        #[arg(long, value_parser = retention)]
        retention: Option<Duration>,
    },
    /// How many records are in each status (reads every record, a page at a
    /// time; not a snapshot while others write).
    Stats,
}

/// The record a command acts on.
#[derive(Debug, clap::Args)]
struct Target {
    /// The record's id, `<operation>/<key>`.
    #[arg(value_parser = RecordId::parse)]
    id: RecordId,
}

fn retention(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(1) {
        return Err("under 1ms: the record would be removed at once".to_owned());
    }
    if d > crate::runtime::MAX_DURATION {
        return Err("over a century: no store can hold the time it ends at".to_owned());
    }
    Ok(d)
}

fn not_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("the note is empty: say what was done".to_owned());
    }
    Ok(s.to_owned())
}

/// Why a command did not run.
#[derive(Debug)]
enum Failure {
    /// The arguments are wrong (exit status 2).
    Usage(String),
    /// The command failed (exit status 1).
    Failed(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Failed(e.to_string())
    }
}

impl From<crate::StoreError> for Failure {
    fn from(e: crate::StoreError) -> Self {
        Failure::Failed(e.to_string())
    }
}

/// Runs the command line of this process: the answer on standard output, or
/// the error on standard error.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// [`main`] with the arguments given, the first naming the program. A
/// service builds its own operator command line with it, so that the
/// operations it links are there: `recover` runs a workflow's body or
/// compensations, which only a program that links them can.
///
/// ```no_run
/// # extern crate tempox_runtime as tempox;
/// // src/bin/shop-ops.rs of a service whose crate defines its operations.
/// fn main() -> std::process::ExitCode {
///     tempox::cli::main_from(std::env::args_os())
/// }
/// ```
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
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
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush())
            {
                // A reader that stopped early (`| head`) is not a failure.
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tempox: cannot write the answer: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(Failure::Usage(message)) => Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, message)
            .exit(),
        Err(Failure::Failed(message)) => {
            // Store data may be in the message: shown, never obeyed by the
            // terminal (escapes and control characters written out).
            eprintln!("tempox: {}", printable(&message));
            ExitCode::FAILURE
        }
    }
}

/// `text` with its control characters (terminal escapes among them)
/// written as escapes, its line breaks kept.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Runs `cli` and returns what it prints, or why it did not run: wrong
/// arguments, a store that cannot be opened or fails, or a refused command
/// (no such record, a record in the wrong status).
async fn run(cli: &Cli) -> Result<String, Failure> {
    let mut builder = Runtime::builder().shared_store(open(cli).await?);
    if let Command::Resolve {
        retention: Some(retention),
        ..
    } = &cli.command
    {
        // What `resolve` keeps the record for.
        builder = builder.retention(*retention);
    }
    let rt = builder.build().map_err(|e| Failure::Usage(e.to_string()))?;
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
            let records = rt.store().list(&query).await?;
            let mut out = records_out(&records, json);
            if !json
                && records.len() == query.limit
                && let Some(last) = records.last()
            {
                let id = last.id.as_str();
                if clean(id) == id {
                    let quoted = id.replace('\'', r"'\''");
                    let _ = writeln!(out, "(more may follow: --after '{quoted}')");
                } else {
                    // Its escaped form is not the id: the hint would skip or
                    // repeat records.
                    let _ = writeln!(out, "(more may follow: give --after the last id)");
                }
            }
            Ok(out)
        }
        Command::Show(Target { id }) => {
            let record = rt
                .record(id)
                .await?
                .ok_or_else(|| Failure::Failed(format!("no record `{id}`")))?;
            let steps = if record.kind == Kind::Workflow {
                let mut steps = rt
                    .list_all(Query {
                        workflow: Some(id.clone()),
                        ..Query::default()
                    })
                    .await?;
                steps.sort_by_key(|s| s.step);
                Some(steps)
            } else {
                None
            };
            Ok(show_out(&record, steps.as_deref(), json))
        }
        Command::DeadLetters => Ok(records_out(&rt.dead_letters().await?, json)),
        Command::Retry(Target { id }) => Ok(show_out(&rt.retry(id).await?, None, json)),
        Command::Recover(Target { id }) => {
            Ok(show_out(&rt.recover_workflow(id).await?, None, json))
        }
        Command::Resolve {
            target: Target { id },
            note,
            ..
        } => Ok(show_out(&rt.resolve(id, note).await?, None, json)),
        Command::Stats => {
            // One pass over every record, a page at a time.
            let mut counts: BTreeMap<&str, usize> =
                Status::ALL.iter().map(|s| (s.as_str(), 0)).collect();
            rt.for_each_page(Query::default(), |page| {
                for r in page {
                    *counts.entry(r.status.as_str()).or_default() += 1;
                }
            })
            .await?;
            Ok(stats_out(&counts, json))
        }
    }
}

/// The store named by `--store`, opened as it is.
async fn open(cli: &Cli) -> Result<std::sync::Arc<dyn crate::store::Store>, Failure> {
    let store = cli.store.as_deref().map(str::trim).unwrap_or_default();
    if store.is_empty() {
        return Err(Failure::Usage(
            "no store: give `--store` (a SQLite file or a Redis URL) or set TEMPOX_STORE"
                .to_owned(),
        ));
    }
    // `sqlite:` names a file whatever its path holds (even `://`).
    let file = store.strip_prefix("sqlite:");
    if file.is_some_and(|path| path.trim().is_empty()) {
        return Err(Failure::Usage(
            "`--store sqlite:` names no file: give its path, as in `sqlite:orders.db`".to_owned(),
        ));
    }
    // A URL (redis://, valkey://, unix://, ...) is for the Redis client,
    // which names what it accepts; anything else is a file.
    if file.is_none() && store.contains("://") {
        return open_redis(cli, store).await;
    }
    for (set, option) in [
        (cli.cluster, "--cluster"),
        (cli.prefix.is_some(), "--prefix"),
        (cli.buckets.is_some(), "--buckets"),
        (cli.wait_replicas.is_some(), "--wait-replicas"),
        #[cfg(feature = "redis-tls")]
        (cli.tls_ca.is_some(), "--tls-ca"),
        #[cfg(feature = "redis-tls")]
        (cli.tls_cert.is_some(), "--tls-cert"),
    ] {
        if set {
            return Err(Failure::Usage(format!(
                "`{option}` is for Redis stores, and the store given is a SQLite file"
            )));
        }
    }
    open_sqlite(file.unwrap_or(store))
}

#[cfg(feature = "redis")]
async fn open_redis(
    cli: &Cli,
    urls: &str,
) -> Result<std::sync::Arc<dyn crate::store::Store>, Failure> {
    use crate::StoreErrorKind;
    use crate::store::RedisStore;
    let mut builder = if cli.cluster {
        let urls: Vec<&str> = urls.split(',').map(str::trim).collect();
        RedisStore::cluster_builder(&urls)
    } else {
        RedisStore::builder(urls)
    };
    if let Some(prefix) = &cli.prefix {
        builder = builder.prefix(prefix.clone());
    }
    if let Some(buckets) = cli.buckets {
        builder = builder.buckets(buckets);
    }
    if let Some(replicas) = cli.wait_replicas {
        builder = builder.wait_for_replicas(replicas, std::time::Duration::from_secs(1));
    }
    #[cfg(feature = "redis-tls")]
    {
        let read = |path: &std::path::Path, option: &str| {
            std::fs::read(path).map_err(|e| {
                Failure::Usage(format!(
                    "cannot read `{option}` file `{}`: {e}",
                    path.display()
                ))
            })
        };
        if let Some(ca) = &cli.tls_ca {
            builder = builder.tls_root_certificates(read(ca, "--tls-ca")?);
        }
        if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
            builder =
                builder.tls_client_certificate(read(cert, "--tls-cert")?, read(key, "--tls-key")?);
        }
    }
    match builder.create(false).connect().await {
        Ok(store) => Ok(std::sync::Arc::new(store)),
        Err(e) if e.kind() == StoreErrorKind::Invalid => Err(Failure::Usage(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(feature = "redis"))]
async fn open_redis(
    _cli: &Cli,
    _urls: &str,
) -> Result<std::sync::Arc<dyn crate::store::Store>, Failure> {
    Err(Failure::Usage(
        "the store given is a URL, and this tempox was built without Redis (feature `redis`)"
            .to_owned(),
    ))
}

#[cfg(feature = "sqlite")]
fn open_sqlite(path: &str) -> Result<std::sync::Arc<dyn crate::store::Store>, Failure> {
    let store = crate::store::SqliteStore::builder(path)
        .create(false)
        .open()?;
    Ok(std::sync::Arc::new(store))
}

#[cfg(not(feature = "sqlite"))]
fn open_sqlite(path: &str) -> Result<std::sync::Arc<dyn crate::store::Store>, Failure> {
    Err(Failure::Usage(format!(
        "`{path}` is a SQLite store, and this tempox was built without SQLite (feature `sqlite`)"
    )))
}

/// The first instant RFC 3339 cannot write (year 10000).
const YEAR_10000: Duration = Duration::from_secs(253_402_300_800);

/// A time as RFC 3339 in UTC; `None` past the year 9999.
fn time(t: Timestamp) -> Option<String> {
    let since = Duration::from_millis(t.as_millis());
    (since < YEAR_10000).then(|| humantime::format_rfc3339_millis(UNIX_EPOCH + since).to_string())
}

/// A time for a table: RFC 3339, or its milliseconds past the year 9999.
fn time_text(t: Timestamp) -> String {
    time(t).unwrap_or_else(|| format!("{} ms", t.as_millis()))
}

/// A recorded input or output: the JSON text it was recorded as (numbers
/// keep every digit), or bytes that are not JSON.
enum Recorded<'a> {
    Json(&'a RawValue),
    Bytes(&'a [u8]),
}

impl<'a> Recorded<'a> {
    fn of(blob: &'a Blob) -> Self {
        serde_json::from_slice::<&RawValue>(blob.as_bytes())
            .map_or(Recorded::Bytes(blob.as_bytes()), Recorded::Json)
    }

    /// The JSON, or `None` for bytes.
    fn json(&self) -> Option<&'a RawValue> {
        match self {
            Recorded::Json(json) => Some(json),
            Recorded::Bytes(_) => None,
        }
    }

    /// The bytes as hex, or `None` for JSON.
    fn hex(&self) -> Option<String> {
        match self {
            Recorded::Json(_) => None,
            Recorded::Bytes(bytes) => Some(bytes.iter().fold(String::new(), |mut hex, b| {
                let _ = write!(hex, "{b:02x}");
                hex
            })),
        }
    }
}

/// A time as `--json` prints it: RFC 3339 (null past the year 9999) and
/// milliseconds since the epoch.
#[derive(Serialize)]
struct TimeView {
    utc: Option<String>,
    ms: u64,
}

impl TimeView {
    fn of(t: Timestamp) -> Self {
        TimeView {
            utc: time(t),
            ms: t.as_millis(),
        }
    }
}

/// A record as `--json` prints it: every key, `null` when the record has no
/// value for it.
#[derive(Serialize)]
struct RecordView<'a> {
    id: &'a str,
    op: &'a str,
    key: &'a str,
    kind: &'a str,
    status: &'a str,
    attempts: u32,
    token: u64,
    fingerprint: String,
    workflow: Option<&'a str>,
    step: Option<u32>,
    created_at: TimeView,
    updated_at: TimeView,
    lease_until: Option<TimeView>,
    due_at: Option<TimeView>,
    expires_at: Option<TimeView>,
    /// The arguments as recorded (JSON), or null with `input_hex`.
    input: Option<&'a RawValue>,
    input_hex: Option<String>,
    output: Option<&'a RawValue>,
    output_hex: Option<String>,
    error: Option<&'a str>,
    note: Option<&'a str>,
    /// A workflow's steps in step order (`show` only); null for anything else.
    steps: Option<Vec<RecordView<'a>>>,
}

impl<'a> RecordView<'a> {
    fn of(r: &'a Record) -> Self {
        let input = Recorded::of(&r.input);
        let output = r.output.as_ref().map(Recorded::of);
        RecordView {
            id: r.id.as_str(),
            op: r.op(),
            key: r.key(),
            kind: r.kind.as_str(),
            status: r.status.as_str(),
            attempts: r.attempts,
            token: r.token,
            fingerprint: r.fingerprint.to_string(),
            workflow: r.workflow.as_ref().map(RecordId::as_str),
            step: r.step,
            created_at: TimeView::of(r.created_at),
            updated_at: TimeView::of(r.updated_at),
            lease_until: r.lease_until.map(TimeView::of),
            due_at: r.due_at.map(TimeView::of),
            expires_at: r.expires_at.map(TimeView::of),
            input: input.json(),
            input_hex: input.hex(),
            output: output.as_ref().and_then(Recorded::json),
            output_hex: output.as_ref().and_then(Recorded::hex),
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

/// Whether `c` changes a terminal's line rather than showing: a control
/// character (newline, escape), a line or paragraph separator, or a
/// direction mark or override.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200E}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'..='\u{2029}'
        )
}

/// `s` safe for a terminal: what would change the line written as escapes.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `s` padded with spaces to `width` columns of a terminal.
fn pad(s: &str, width: usize) -> String {
    let mut out = s.to_owned();
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(s.width())));
    out
}

fn records_out(records: &[Record], json: bool) -> String {
    if json {
        return to_json(&records.iter().map(RecordView::of).collect::<Vec<_>>());
    }
    if records.is_empty() {
        return "no records\n".to_owned();
    }
    let ids: Vec<String> = records.iter().map(|r| clean(r.id.as_str())).collect();
    let width = ids.iter().map(|id| id.width()).max().unwrap_or(0).max(2);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}  {:<21}  {:>8}  {:<24}  ERROR",
        pad("ID", width),
        "STATUS",
        "ATTEMPTS",
        "UPDATED"
    );
    for (r, id) in records.iter().zip(&ids) {
        let error = clean(r.error.as_deref().unwrap_or(""));
        let error: String = if error.chars().count() > 60 {
            error.chars().take(59).chain(['…']).collect()
        } else {
            error
        };
        let _ = writeln!(
            out,
            "{}  {:<21}  {:>8}  {:<24}  {error}",
            pad(id, width),
            r.status.as_str(),
            r.attempts,
            time_text(r.updated_at),
        );
    }
    out
}

fn show_out(record: &Record, steps: Option<&[Record]>, json: bool) -> String {
    if json {
        let mut view = RecordView::of(record);
        view.steps = steps.map(|steps| steps.iter().map(RecordView::of).collect());
        return to_json(&view);
    }
    let r = record;
    let mut out = String::new();
    let mut line = |name: &str, value: &str| {
        let _ = writeln!(out, "{name:<12} {}", clean(value));
    };
    line("id", r.id.as_str());
    line("kind", r.kind.as_str());
    line("status", r.status.as_str());
    line("attempts", &r.attempts.to_string());
    line("token", &r.token.to_string());
    if let (Some(workflow), Some(step)) = (&r.workflow, r.step) {
        line("workflow", &format!("{workflow} (step {step})"));
    }
    line("created", &time_text(r.created_at));
    line("updated", &time_text(r.updated_at));
    for (name, at) in [
        ("lease until", r.lease_until),
        ("due", r.due_at),
        ("expires", r.expires_at),
    ] {
        if let Some(at) = at {
            line(name, &time_text(at));
        }
    }
    let blob_text = |b: &Blob| match Recorded::of(b) {
        Recorded::Json(json) => json.get().to_owned(),
        bytes @ Recorded::Bytes(_) => format!(
            "{} bytes, not JSON: {}",
            b.as_bytes().len(),
            bytes.hex().unwrap_or_default()
        ),
    };
    line("input", &blob_text(&r.input));
    if let Some(output) = &r.output {
        line("output", &blob_text(output));
    }
    if let Some(error) = &r.error {
        line("error", error);
    }
    if let Some(note) = &r.note {
        for (i, note_line) in note.lines().enumerate() {
            line(if i == 0 { "note" } else { "" }, note_line);
        }
    }
    if let Some(steps) = steps {
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
