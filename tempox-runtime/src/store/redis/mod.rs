//! A store on Redis: a single server or a Redis Cluster, shared by any number
//! of processes and machines.
//!
//! Each state change is run by a Lua script, so it is atomic, fenced and one
//! round trip, and the changes made while others are in flight share one
//! script call; leases are compared with the server's `TIME`; records are spread over a
//! fixed number of buckets, each a Redis Cluster hash slot, with sorted sets
//! for what is due and what may be removed. See [`RedisStore`].

mod codec;
mod lane;
mod scripts;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use ::redis::{Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Value};
use async_trait::async_trait;

use self::lane::{Failure, Lanes};
use self::scripts::{ScriptCall, scripts};
use super::{Query, Store};
use crate::error::{Human, StoreError, StoreErrorKind};
use crate::record::{
    AttemptsChange, ClaimRequest, Claimed, LeaseChange, OnExpired, Record, RecordId, Status,
    Timestamp, Transition, Transitioned, next_token, plan_claim, plan_transition,
};

/// The version of the key layout and record encoding described on
/// [`RedisStore`]; kept in every bucket's `meta` hash.
const LAYOUT_VERSION: &str = "2";
const DEFAULT_PREFIX: &str = "tempox";
const DEFAULT_BUCKETS: u16 = 16;
const MAX_BUCKETS: u16 = 16_384;
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// The most a single script is asked for at once (`due`, `list`, `expire`).
const MAX_BATCH: usize = 100_000;

/// Records in Redis, for many processes and machines: a single server
/// ([`connect`](RedisStore::connect)) or a Redis Cluster
/// ([`connect_cluster`](RedisStore::connect_cluster)).
///
/// ```no_run
/// # extern crate tempox_runtime as tempox;
/// use tempox::store::RedisStore;
/// use tempox::Runtime;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379/").await?;
/// let rt = Runtime::builder().store(store).build()?;
/// # Ok(()) }
/// ```
///
/// Its connections do not send `CLIENT SETINFO`, which Redis before 7.2
/// refuses (an error in `INFO errorstats` per connection): tempox turns on the
/// `redis` crate's `disable-client-setinfo` feature, and Cargo features being
/// shared, so do the program's own connections made with the same version of
/// that crate.
///
/// Clones share one connection, which reconnects by itself after the server
/// went away; a call made while it is away fails with a [`StoreError`] that
/// [`is_unavailable`](StoreError::is_unavailable) (or
/// [`is_timeout`](StoreError::is_timeout)), and a write sent just before the
/// connection dropped may or may not have been applied. A claim is marked
/// with a number of its own; when its answer is lost (a timeout, a dropped
/// connection), the store asks the server, from a task of its own, whether
/// that claim was taken and gives it back if so (a new key released, a
/// takeover left pending with no lease): no body ran under it, so it must
/// not look like a call that crashed mid-way, which a non-idempotent call
/// without a probe would be parked for. It asks again, waiting longer each
/// time, until the server answers or the claim's lease is over.
///
/// # How it keeps the store's promises
///
/// - Every state change ([`Store::claim`], [`Store::transition`],
///   [`Store::renew`], [`Store::expire`]) is run by a Lua script that reads the
///   record, compares status and token and writes, atomically and in one round
///   trip. The scripts mirror [`plan_claim`](crate::record::plan_claim) and
///   [`plan_transition`](crate::record::plan_transition); their table of legal
///   transitions is generated from [`TRANSITIONS`](crate::record::TRANSITIONS).
/// - Claims, transitions and lease renewals made while one is in flight are
///   sent together: the store keeps at most two calls of its operations
///   script in flight (per bucket on Redis Cluster, where a script may touch
///   one slot only), and whatever queued meanwhile goes in the next call,
///   which runs each request in order exactly as if it had been sent alone.
///   A lone call is sent at once, so nothing waits for company; under load
///   the server runs one script and, with `appendfsync always`, one fsync
///   for many calls instead of one each.
///   A request the server refuses (say a damaged record) fails alone: the
///   others in its call are not held back.
/// - A lease is a field compared with the server's `TIME`, never a key expiry:
///   an expiring key would take the fingerprint and the token with it and invite
///   a second execution. Records leave only through [`Store::expire`].
/// - Fencing tokens are `max(previous + 1, now_ms × 1000)` on the server's
///   clock, so they keep increasing across takeovers, server restarts, and a
///   record removed and created again.
///
/// # TLS
///
/// With the feature `redis-tls`, `rediss://` URLs connect through TLS
/// (rustls), to a single server or to every node of a Redis Cluster. The
/// server's certificate must be signed by one of the system's certificate
/// authorities, or only of those given to
/// [`tls_root_certificates`](RedisStoreBuilder::tls_root_certificates), and
/// must name the host the store connects to: the URL's host, and for the
/// other nodes of a Cluster the addresses the cluster announces (IP addresses
/// unless `cluster-preferred-endpoint-type` says otherwise). A server that
/// asks clients for a certificate (`tls-auth-clients yes`) gets the one given
/// to [`tls_client_certificate`](RedisStoreBuilder::tls_client_certificate).
/// Without the feature, a `rediss://` URL is an
/// [`Invalid`](StoreErrorKind::Invalid) error that names it.
///
/// rustls needs one cryptography provider for the whole process: connecting
/// to a `rediss://` URL installs *ring* as the default unless the program
/// installed one before (install yours first if it uses another).
///
/// # Durability
///
/// Redis acknowledges a write before it reaches the disk unless told
/// otherwise. tempox's guarantees (at most once per key, nothing completed is
/// lost) hold across a crash of Redis only with
///
/// ```text
/// appendonly yes
/// appendfsync always
/// ```
///
/// They also need a `maxmemory-policy` that never evicts a record: an
/// evicted record's key would run again. `noeviction`, the default, is right
/// (a full server refuses writes, and calls fail with a store error), and so
/// is any `volatile-*` policy (tempox's keys have no expiry); `allkeys-*` is
/// not. The store reads these settings when it connects and logs a `tracing`
/// warning when one is off, or when `CONFIG` is disabled and it cannot tell;
/// with [`require_durability(true)`](RedisStoreBuilder::require_durability)
/// it refuses to connect instead.
///
/// With replicas, a failover keeps only what reached the replica it
/// promotes: Redis replicates asynchronously, so a primary that dies can take
/// with it outcomes it had already acknowledged, and their keys would run
/// again. [`wait_for_replicas`](RedisStoreBuilder::wait_for_replicas)
/// narrows that gap to what its docs list: every claim, outcome and lease
/// renewal is reported done only once that many replicas hold it (Redis
/// `WAIT`), and the store checks at connect that the primaries have them.
/// The store follows a failover only where the address it was given does (a
/// Redis Cluster, or a name that moves to the new primary, as managed
/// services give); it does not ask Redis Sentinel.
///
/// # Keys
///
/// Records are spread over a fixed number of buckets (16 by default, see
/// [`RedisStoreBuilder::buckets`]); bucket `b` of prefix `p` owns the keys
/// that start with the hash tag `{p:b}`, so each bucket is one Redis Cluster
/// slot and every script touches one slot. The tag comes first, so braces in
/// a user's key never move it.
///
/// | key | type | holds |
/// |---|---|---|
/// | `{p:b}:r:<id>` | hash | the record `<id>` (`op/key`): one field per [`Record`] field, input and output as raw bytes |
/// | `{p:b}:due` | sorted set | ids by `due_at` (ms): expired leases and retries |
/// | `{p:b}:exp` | sorted set | ids by `expires_at` (ms): final records and their retention |
/// | `{p:b}:s:<status>` | sorted set | the ids in `<status>`, lexicographic (one set per status) |
/// | `{p:b}:wf` | sorted set | `<workflow id>\0<id>` of workflow steps, lexicographic |
/// | `{p:b}:meta` | hash | the number of buckets and the layout version |
///
/// A record's bucket is the first 8 bytes of the BLAKE3 hash of its id
/// (little-endian) modulo the number of buckets, so it is found from the id
/// alone. [`Store::due`], [`Store::list`] and [`Store::expire`] visit every
/// bucket concurrently: they cost the number of buckets plus what they return,
/// not what is stored. The scripts reach a bucket's status sets and records
/// through its key prefix, so every key a script touches shares its hash tag
/// (one slot), though not every one is named in `KEYS`.
///
/// # Layout versions
///
/// This release writes layout 2 (one set of ids per status; layout 1 kept an
/// `ids` set and one `st` set of `<status>\0<id>`). A store opened on data of
/// another layout is refused with an error naming both versions, and nothing
/// is changed. To move on, let the older release finish its work (nothing
/// pending or due) and give this one a new prefix
/// ([`RedisStoreBuilder::prefix`]), or delete the old prefix's keys.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    /// With [`wait_for_replicas`](RedisStoreBuilder::wait_for_replicas),
    /// the connections of the writes that wait (none otherwise): a client in
    /// `WAIT` holds up whatever its connection sent after, so reads keep
    /// `conn` to themselves, and each write takes the least busy of these.
    writers: Vec<Writer>,
    /// Where the store connects, for messages (addresses only, no credentials).
    target: String,
    prefix: String,
    buckets: u16,
    timeout: Duration,
    /// The keys of every bucket, by bucket.
    keys: Vec<Keys>,
    /// Where claims, transitions and lease renewals wait to be sent together.
    lanes: Lanes,
    /// The store's own runtime, for callers on a single-threaded one.
    driver: Driver,
    /// The replicas every write waits for, if any.
    replicas: Option<Replicas>,
}

/// The store's own runtime, on a thread of its own. It drives a Redis Cluster
/// connection. A caller on a multi-threaded runtime does its I/O there (its
/// workers keep running after the caller is done); a caller on a
/// single-threaded runtime, which may be left idle once its `block_on`
/// returns, or on none, sends through this one instead, so that a lane's call
/// or a reconnection it started holds up nobody else. Stopped when the last
/// clone of the store is dropped.
struct Driver {
    handle: tokio::runtime::Handle,
    /// Dropping it ends the thread, which drops the runtime.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Driver {
    fn start() -> std::io::Result<Driver> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("tempox-redis".into())
            .spawn(move || {
                // Returns when the sender is dropped; the runtime is then
                // dropped here, outside any async context.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Driver {
            handle,
            _stop: stop,
        })
    }

    /// Where the current caller's I/O runs: its own runtime when that is
    /// multi-threaded, else this one (`None` when the caller is on its own
    /// runtime).
    fn for_caller(&self) -> Option<&tokio::runtime::Handle> {
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => None,
            _ => Some(&self.handle),
        }
    }

    /// Spawns `future` where the current caller's I/O runs.
    fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.for_caller() {
            Some(own) => own.spawn(future),
            None => tokio::spawn(future),
        }
    }

    /// Runs `future` where the current caller's I/O runs, and waits for it;
    /// `None` if it was dropped unfinished (its runtime stopped).
    async fn run<F>(&self, future: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.for_caller() {
            Some(own) => own.spawn(future).await.ok(),
            None => Some(future.await),
        }
    }
}

/// How many connections (to a single server, or to a cluster) carry the
/// writes that wait for replicas: one per call a lane keeps in flight.
const WRITERS: usize = 2;

/// A connection for the writes that wait for replicas, and how many it
/// carries now.
struct Writer {
    conn: Conn,
    busy: AtomicUsize,
}

/// A write's hold on its [`Writer`], given back when dropped.
struct Busy {
    store: RedisStore,
    writer: usize,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.store.inner.writers[self.writer]
            .busy
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The two kinds of connection, both reconnecting by themselves. Cloned per call.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Options of a [`RedisStore`], from [`RedisStore::builder`] or
/// [`RedisStore::cluster_builder`].
///
/// ```no_run
/// # extern crate tempox_runtime as tempox;
/// use std::time::Duration;
/// use tempox::store::RedisStore;
///
/// # async fn run() -> Result<(), tempox::StoreError> {
/// let store = RedisStore::builder("redis://127.0.0.1:6379/")
///     .prefix("payments")
///     .response_timeout(Duration::from_secs(2))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStoreBuilder {
    urls: Vec<String>,
    cluster: bool,
    prefix: String,
    buckets: u16,
    response_timeout: Duration,
    connection_timeout: Duration,
    require_durability: bool,
    create: bool,
    replicas: Option<Replicas>,
    #[cfg(feature = "redis-tls")]
    tls: TlsSettings,
}

/// How many replicas must acknowledge each write, and how long to wait for
/// them ([`RedisStoreBuilder::wait_for_replicas`]).
#[derive(Clone, Copy, Debug)]
struct Replicas {
    count: u32,
    timeout: Duration,
}

/// The certificates [`RedisStoreBuilder`] was given for `rediss://` servers.
#[cfg(feature = "redis-tls")]
#[derive(Clone, Default)]
struct TlsSettings {
    /// PEM: the authorities to trust instead of the system's.
    roots: Option<Vec<u8>>,
    /// PEM: the client's certificate and key.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

#[cfg(feature = "redis-tls")]
impl TlsSettings {
    fn is_set(&self) -> bool {
        self.roots.is_some() || self.identity.is_some()
    }

    /// The redis client's form, checked: the authorities load as trust
    /// anchors, and the client's key is the key of its certificate.
    fn certificates(&self) -> Result<Option<::redis::TlsCertificates>, StoreError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        if !self.is_set() {
            return Ok(None);
        }
        let invalid = invalid_setting;
        let certificates = |setting: &str, pem: &[u8]| {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(setting, format!("its PEM cannot be read: {e}")))?;
            if certs.is_empty() {
                return Err(invalid(setting, "its PEM holds no certificate".into()));
            }
            Ok(certs)
        };
        if let Some(roots) = &self.roots {
            let mut store = rustls::RootCertStore::empty();
            for cert in certificates(ROOTS, roots)? {
                store.add(cert).map_err(|e| {
                    invalid(
                        ROOTS,
                        format!("a certificate cannot be used as an authority: {e}"),
                    )
                })?;
            }
        }
        if let Some((cert, key)) = &self.identity {
            let chain = certificates(IDENTITY, cert)?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
                invalid(IDENTITY, format!("its key's PEM holds no private key: {e}"))
            })?;
            let signer = rustls::crypto::ring::sign::any_supported_type(&key)
                .map_err(|e| invalid(IDENTITY, format!("its key cannot be used: {e}")))?;
            rustls::sign::CertifiedKey::new(chain, signer)
                .keys_match()
                .map_err(|e| {
                    invalid(
                        IDENTITY,
                        format!("the key is not the certificate's own: {e}"),
                    )
                })?;
        }
        Ok(Some(::redis::TlsCertificates {
            client_tls: self
                .identity
                .as_ref()
                .map(|(cert, key)| ::redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.roots.clone(),
        }))
    }
}

/// The settings, as errors name them: the builder's method, then the
/// command line's options.
#[cfg(feature = "redis-tls")]
const ROOTS: &str = "`tls_root_certificates` (`--tls-ca` on the command line)";
#[cfg(feature = "redis-tls")]
const IDENTITY: &str =
    "`tls_client_certificate` (`--tls-cert` and `--tls-key` on the command line)";

const WAIT_FOR_REPLICAS: &str = "`wait_for_replicas` (`--wait-replicas` on the command line)";

/// The error of a builder `setting` (as messages name it) that cannot work.
fn invalid_setting(setting: &str, message: String) -> StoreError {
    StoreError::new(
        StoreErrorKind::Invalid,
        format!("invalid setting {setting} of the redis store: {message}"),
    )
}

/// Whether `url` is a TLS one, `rediss://` or `valkeys://` (schemes are
/// case-insensitive).
fn is_tls_url(url: &str) -> bool {
    ["rediss://", "valkeys://"].iter().any(|scheme| {
        url.get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    })
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact(u)).collect();
        let mut d = f.debug_struct("RedisStoreBuilder");
        d.field("urls", &urls)
            .field("cluster", &self.cluster)
            .field("prefix", &self.prefix)
            .field("buckets", &self.buckets)
            .field("response_timeout", &self.response_timeout)
            .field("connection_timeout", &self.connection_timeout)
            .field("require_durability", &self.require_durability)
            .field("create", &self.create)
            .field("wait_for_replicas", &self.replicas);
        #[cfg(feature = "redis-tls")]
        d.field("tls_root_certificates", &self.tls.roots.is_some())
            .field("tls_client_certificate", &self.tls.identity.is_some());
        d.finish()
    }
}

/// `url` without the credentials it may carry.
fn redact(url: &str) -> String {
    let url = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    };
    // A socket's URL carries its password in the query: `?pass=...`.
    match url.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("pass") => format!("{k}=***"),
                    _ => p.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => url,
    }
}

impl RedisStoreBuilder {
    fn new(urls: Vec<String>, cluster: bool) -> Self {
        RedisStoreBuilder {
            urls,
            cluster,
            prefix: DEFAULT_PREFIX.to_owned(),
            buckets: DEFAULT_BUCKETS,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            require_durability: false,
            create: true,
            replicas: None,
            #[cfg(feature = "redis-tls")]
            tls: TlsSettings::default(),
        }
    }

    /// The prefix of every key (default `tempox`). Stores with different
    /// prefixes share a server without seeing each other's records. It must not
    /// be empty nor contain `{` or `}` (it is part of the hash tag).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The number of buckets records are spread over (default 16, at most
    /// 16384). On Redis Cluster each bucket is one hash slot, so more buckets
    /// spread the records over more nodes, and [`Store::due`],
    /// [`Store::list`] and [`Store::expire`] visit each bucket. Fixed for the
    /// life of the data: opening data written with another number fails.
    pub fn buckets(mut self, buckets: u16) -> Self {
        self.buckets = buckets;
        self
    }

    /// The longest one store call waits for Redis, reconnecting included
    /// (default 5 s). A call that takes longer fails with a
    /// [`StoreError`] that [`is_timeout`](StoreError::is_timeout); a write may
    /// or may not have been applied.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// The longest one attempt to open a connection may take (default 2 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Whether a server whose settings can lose or evict records is refused
    /// at connect (default `false`: a `tracing` warning is logged and the
    /// store connects). A server whose settings cannot be read (`CONFIG`
    /// disabled, as on some managed services) is refused too. See
    /// [Durability](RedisStore#durability).
    pub fn require_durability(mut self, require: bool) -> Self {
        self.require_durability = require;
        self
    }

    /// Whether connecting to a prefix that holds no tempox data records the
    /// layout there and starts a new store (by default it does). With
    /// `false`, such a prefix is a [`Schema`](StoreErrorKind::Schema) error
    /// and connecting writes nothing: for tools that inspect a store and must
    /// not start one where a prefix was mistyped.
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Makes every write wait until `count` replicas of the server that took
    /// it have it too (Redis `WAIT`), for at most `timeout`, which must be at
    /// least 1 ms and shorter than the [response
    /// timeout](Self::response_timeout). Off by default.
    ///
    /// Redis replicates asynchronously: a primary that fails over can take
    /// with it writes it acknowledged and its replicas never received, and a
    /// completed record lost that way lets its key run again. With this
    /// setting a claim, an outcome or a lease renewal is only reported done
    /// once `count` replicas hold it. A failover keeps it if the replica it
    /// promotes is one of them: with `count` equal to the number of replicas
    /// that can be promoted, any of them will do (Sentinel and Cluster
    /// prefer the replica that received the most, which usually is one).
    ///
    /// When fewer acknowledge within `timeout`, the call fails with a
    /// [`Timeout`](StoreErrorKind::Timeout) error that says so. The primary
    /// did apply its writes. A claim taken that way is given back at once: a
    /// key that was free is released, so a retry takes it; a takeover of an
    /// expired claim goes back to pending and expired, so the next caller
    /// still probes or takes it over (also when the caller gave up waiting,
    /// its response timeout spent, before the answer came). An outcome stays
    /// recorded on the primary. While fewer replicas answer, every state
    /// change fails after `timeout` or later: the waits of one connection follow each
    /// other (writes use two connections of their own, per node on a
    /// Cluster, so reads are not held up), and what queues behind them may
    /// reach the response timeout instead. The store stops rather than
    /// report what a failover could lose. A server that is to refuse writes
    /// it cannot replicate before applying them has `min-replicas-to-write`.
    ///
    /// Limits:
    /// - A replay that reads an outcome another call (or process) wrote
    ///   moments ago may return it before a replica has it, while that other
    ///   call still waits (on Redis before 7.2 it waits for it too).
    /// - It waits for the replicas to apply the write, not to write it to
    ///   their disks.
    ///
    /// On Redis Cluster it waits for the replicas of the node that owns the
    /// record's slot.
    ///
    /// ```no_run
    /// # extern crate tempox_runtime as tempox;
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use tempox::store::RedisStore;
    ///
    /// let store = RedisStore::builder("redis://redis-primary:6379/")
    ///     .wait_for_replicas(1, Duration::from_millis(500))
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn wait_for_replicas(mut self, count: u32, timeout: Duration) -> Self {
        self.replicas = Some(Replicas { count, timeout });
        self
    }

    /// Trusts the certificate authorities in `pem` (one or more PEM
    /// certificates) for `rediss://` servers, instead of the system's: for a
    /// server whose certificate a private authority signed. Feature
    /// `redis-tls`.
    ///
    /// ```no_run
    /// # extern crate tempox_runtime as tempox;
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use tempox::store::RedisStore;
    ///
    /// let ca = std::fs::read("/etc/redis/ca.crt")?;
    /// let store = RedisStore::builder("rediss://redis.internal:6380/")
    ///     .tls_root_certificates(ca)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis-tls")]
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.roots = Some(pem.into());
        self
    }

    /// Presents the certificate `cert_pem` (with its key, `key_pem`) to
    /// `rediss://` servers that ask clients for one (`tls-auth-clients`).
    /// Feature `redis-tls`.
    #[cfg(feature = "redis-tls")]
    pub fn tls_client_certificate(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Connects, checks the server's durability settings (see
    /// [Durability](RedisStore#durability)), and checks that the data under
    /// the prefix was written with the same number of buckets (and records it
    /// on first use).
    ///
    /// # Errors
    /// - [`StoreErrorKind::Invalid`]: a malformed URL (or a `rediss://` one
    ///   without the `redis-tls` feature), an empty or braced prefix, 0 or
    ///   more than 16384 buckets, a zero timeout, certificates that cannot be
    ///   read or given for a `redis://` URL, credentials the server refuses
    ///   or a password it wants and the URL lacks, or no Tokio
    ///   runtime to connect from; with
    ///   [`require_durability`](Self::require_durability), a server whose
    ///   settings can lose or evict records, or cannot be read (nothing is
    ///   written to it). (Once connected, the store is used from Tokio
    ///   runtimes with time enabled, or from no runtime at all: it then does
    ///   the caller's I/O on a thread of its own.)
    /// - [`StoreErrorKind::Unavailable`] or [`StoreErrorKind::Timeout`]: the
    ///   server cannot be reached.
    /// - [`StoreErrorKind::Schema`]: the data under this prefix was written
    ///   with another number of buckets or another layout version, or, with
    ///   [`create(false)`](Self::create), there is none.
    /// - [`StoreErrorKind::Corrupt`], with [`create(false)`](Self::create):
    ///   some buckets of the data have lost their layout record.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        #[cfg(feature = "redis-tls")]
        {
            let tls = self.uses_tls();
            let identity = self.tls.identity.is_some();
            self.connect_checked()
                .await
                .map_err(|e| match tls_hint(&e, identity) {
                    Some(hint) if tls => e.with_hint(&hint),
                    _ => e,
                })
        }
        #[cfg(not(feature = "redis-tls"))]
        self.connect_checked().await
    }

    /// Whether a URL is a TLS one.
    #[cfg(feature = "redis-tls")]
    fn uses_tls(&self) -> bool {
        self.urls.iter().any(|u| is_tls_url(u))
    }

    /// [`connect`](Self::connect), but for the hints of TLS failures.
    async fn connect_checked(self) -> Result<RedisStore, StoreError> {
        self.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                "a RedisStore connects from within a Tokio runtime",
            ));
        }
        let target = self.target()?;
        let driver = Driver::start().map_err(|e| {
            StoreError::new(
                StoreErrorKind::Other,
                format!("could not start the thread of the store for redis at {target}: {e}"),
            )
        })?;
        let deadline = self.connection_timeout + self.response_timeout;
        let (urls, cluster) = (self.urls.clone(), self.cluster);
        let (connection_timeout, response_timeout) =
            (self.connection_timeout, self.response_timeout);
        let (require_durability, create) = (self.require_durability, self.create);
        let waits = self.replicas.is_some();
        #[cfg(feature = "redis-tls")]
        let tls = {
            // For a TLS server: ring, unless the application installed its
            // own provider first (rustls needs one process-wide default).
            if self.uses_tls() {
                let _ = rustls::crypto::ring::default_provider().install_default();
            }
            self.tls.certificates()?
        };
        // A cluster connection is one task that routes, reconnects and
        // retries for every caller and is never made again: it lives on the
        // store's own thread. A single-server connection is remade on demand
        // by whoever finds it broken, so it starts where this caller's I/O
        // runs (no hop between threads per request on a multi-threaded
        // runtime).
        let make = async move {
            if cluster {
                let builder = ClusterClient::builder(urls)
                    .connection_timeout(connection_timeout)
                    .response_timeout(response_timeout)
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(500);
                #[cfg(feature = "redis-tls")]
                let builder = match tls {
                    Some(certificates) => builder.certs(certificates),
                    None => builder,
                };
                let client = builder.build()?;
                let conn = Conn::Cluster(client.get_async_connection().await?);
                let mut writers = Vec::new();
                for _ in 0..if waits { WRITERS } else { 0 } {
                    writers.push(Conn::Cluster(client.get_async_connection().await?));
                }
                Ok((conn, writers))
            } else {
                let url = urls.first().map_or("", String::as_str);
                #[cfg(feature = "redis-tls")]
                let client = match tls {
                    Some(certificates) => ::redis::Client::build_with_tls(url, certificates)?,
                    None => ::redis::Client::open(url)?,
                };
                #[cfg(not(feature = "redis-tls"))]
                let client = ::redis::Client::open(url)?;
                // No reconnection retries inside the manager: a call made while
                // the server is away fails at once, and the next one tries again.
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(0)
                    .set_connection_timeout(connection_timeout)
                    .set_response_timeout(response_timeout);
                let connect = || ConnectionManager::new_with_config(client.clone(), config.clone());
                let conn = Conn::Single(connect().await?);
                let mut writers = Vec::new();
                for _ in 0..if waits { WRITERS } else { 0 } {
                    writers.push(Conn::Single(connect().await?));
                }
                Ok((conn, writers))
            }
        };
        let connecting = async {
            if self.cluster {
                driver.handle.spawn(make).await.ok()
            } else {
                driver.run(make).await
            }
        };
        let (conn, writers) = match tokio::time::timeout(deadline, connecting).await {
            Ok(Some(Ok(conns))) => conns,
            Ok(Some(Err(e))) => {
                return Err(redis_error_message(&target, Action::Connect, &e).with_backend(e));
            }
            Ok(None) => {
                return Err(StoreError::new(
                    StoreErrorKind::Other,
                    format!("connecting to redis at {target} stopped: the store's runtime stopped"),
                ));
            }
            Err(_) => {
                return Err(StoreError::new(
                    StoreErrorKind::Timeout,
                    format!(
                        "redis at {target} did not accept a connection within {}",
                        Human(deadline)
                    ),
                ));
            }
        };
        let store = RedisStore {
            inner: Arc::new(Inner {
                conn,
                writers: writers
                    .into_iter()
                    .map(|conn| Writer {
                        conn,
                        busy: AtomicUsize::new(0),
                    })
                    .collect(),
                target,
                keys: (0..self.buckets)
                    .map(|b| Keys::new(&self.prefix, b))
                    .collect(),
                prefix: self.prefix,
                lanes: Lanes::new(self.buckets, self.cluster),
                driver,
                buckets: self.buckets,
                timeout: self.response_timeout,
                replicas: self.replicas,
            }),
        };
        // First: a refused server is left as it was (the layout check records
        // the layout on first use).
        let problems = [
            store.durability_problem().await?,
            store.replicas_problem().await?,
        ];
        for problem in problems.into_iter().flatten() {
            if require_durability {
                return Err(StoreError::new(
                    StoreErrorKind::Invalid,
                    format!("{problem} (refused: the store requires durability)"),
                ));
            }
            tracing::warn!("{problem}");
        }
        store.load_scripts().await?;
        store.check_layout(create).await?;
        Ok(store)
    }

    fn validate(&self) -> Result<(), StoreError> {
        let invalid =
            |setting: &str, message: String| Err(invalid_setting(&format!("`{setting}`"), message));
        if self.urls.is_empty() {
            return invalid("urls", "no server address given".into());
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return invalid(
                "prefix",
                format!(
                    "`{}` must be non-empty and free of `{{` and `}}`",
                    self.prefix
                ),
            );
        }
        if self.buckets == 0 || self.buckets > MAX_BUCKETS {
            return invalid(
                "buckets",
                format!(
                    "{} is not between 1 and {MAX_BUCKETS} (one hash slot each)",
                    self.buckets
                ),
            );
        }
        if self.response_timeout.is_zero() {
            return invalid("response_timeout", "must be longer than zero".into());
        }
        if self.connection_timeout.is_zero() {
            return invalid("connection_timeout", "must be longer than zero".into());
        }
        if let Some(Replicas { count, timeout }) = self.replicas {
            if count == 0 {
                return Err(invalid_setting(
                    WAIT_FOR_REPLICAS,
                    "0 replicas: a write needs at least one replica to wait for".into(),
                ));
            }
            // `WAIT n 0` would wait for ever.
            if timeout < Duration::from_millis(1) || timeout >= self.response_timeout {
                return Err(invalid_setting(
                    WAIT_FOR_REPLICAS,
                    format!(
                        "its timeout ({timeout:?}) must be at least 1ms and shorter than the \
                         response timeout ({:?}), which bounds the whole call",
                        self.response_timeout
                    ),
                ));
            }
        }
        #[cfg(feature = "redis-tls")]
        if self.tls.is_set()
            && let Some(plain) = self.urls.iter().find(|u| !is_tls_url(u))
        {
            let setting = if self.tls.roots.is_some() {
                ROOTS
            } else {
                IDENTITY
            };
            return Err(invalid_setting(
                setting,
                format!(
                    "certificates are for TLS servers, but `{}` is not a rediss:// url",
                    redact(plain)
                ),
            ));
        }
        Ok(())
    }

    /// The servers' addresses, for messages.
    fn target(&self) -> Result<String, StoreError> {
        let mut addrs = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            if cfg!(not(feature = "redis-tls")) && is_tls_url(url) {
                return Err(StoreError::new(
                    StoreErrorKind::Invalid,
                    format!(
                        "invalid redis url `{}`: rediss:// (TLS) needs tempox's `redis-tls` feature",
                        redact(url)
                    ),
                ));
            }
            let info = url.as_str().into_connection_info().map_err(|e| {
                let why = client_words(&e);
                StoreError::new(
                    StoreErrorKind::Invalid,
                    format!(
                        "invalid redis url `{}`: {why}; expected \
                         redis://[user:password@]host[:port][/db]{} or unix:///path/to/socket",
                        redact(url),
                        if cfg!(feature = "redis-tls") {
                            ", rediss://[user:password@]host[:port][/db]"
                        } else {
                            ""
                        }
                    ),
                )
                .with_backend(e)
            })?;
            addrs.push(info.addr.to_string());
        }
        Ok(if self.cluster {
            format!("cluster {}", addrs.join(", "))
        } else {
            addrs.join(", ")
        })
    }
}

impl RedisStore {
    /// Connects to a single Redis server, e.g. `redis://127.0.0.1:6379/`, with
    /// the default options (see [`RedisStore::builder`]).
    ///
    /// # Errors
    /// As [`RedisStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        Self::builder(url).connect().await
    }

    /// Connects to a Redis Cluster through any of its nodes, with the default
    /// options (see [`RedisStore::cluster_builder`]).
    ///
    /// # Errors
    /// As [`RedisStoreBuilder::connect`].
    pub async fn connect_cluster(urls: &[&str]) -> Result<RedisStore, StoreError> {
        Self::cluster_builder(urls).connect().await
    }

    /// Options for a store on a single server at `url`.
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder::new(vec![url.to_owned()], false)
    }

    /// Options for a store on the Redis Cluster that `urls` (some of its nodes)
    /// belong to.
    pub fn cluster_builder(urls: &[&str]) -> RedisStoreBuilder {
        RedisStoreBuilder::new(urls.iter().map(|&u| u.to_owned()).collect(), true)
    }

    /// The key of the hash that holds record `id`, for looking at it with
    /// `redis-cli`.
    pub fn record_key(&self, id: &RecordId) -> String {
        let bucket = self.bucket_of(id);
        self.keys(bucket).record(id)
    }

    fn bucket_of(&self, id: &RecordId) -> u16 {
        let hash = blake3::hash(id.as_str().as_bytes());
        let &[b0, b1, b2, b3, b4, b5, b6, b7, ..] = hash.as_bytes();
        let n = u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]);
        u16::try_from(n % u64::from(self.inner.buckets)).unwrap_or(0)
    }

    fn keys(&self, bucket: u16) -> &Keys {
        // Buckets are always below `buckets`, the length of `keys`.
        &self.inner.keys[usize::from(bucket) % self.inner.keys.len().max(1)]
    }

    fn all_buckets(&self) -> impl Iterator<Item = u16> {
        0..self.inner.buckets
    }

    /// The arguments of the claim script for `req` (its share of `ARGV`),
    /// numbered `nonce`.
    fn claim_args(req: &ClaimRequest, nonce: u64) -> Cmd {
        let on_expired = match req.on_expired {
            OnExpired::TakeOver => "take_over",
            OnExpired::MarkUnknown => "mark_unknown",
        };
        let mut args = Cmd::with_capacity(9, 128 + req.input.as_ref().len());
        args.arg("claim")
            .arg(req.id.as_str())
            .arg(req.kind.as_str())
            .arg(req.fingerprint.hex().as_slice())
            .arg(req.input.as_ref())
            .arg(millis(req.lease))
            .arg(on_expired)
            .arg(req.workflow.as_ref().map_or("", RecordId::as_str));
        match req.step {
            Some(step) => args.arg(step),
            None => args.arg(""),
        };
        args.arg(nonce);
        args
    }

    /// The claim script's answer to `req`.
    fn claimed(req: &ClaimRequest, reply: Value) -> Result<Claimed, StoreError> {
        let what = "the claim script";
        let mut items = codec::array(what, reply)?.into_iter();
        let outcome = match items.next() {
            Some(v) => codec::text(what, v)?,
            None => return Err(codec::unexpected(what, &Value::Nil)),
        };
        if outcome == "fresh" {
            // No record was there: the script wrote plan_claim's new record
            // at the server's clock, which is all the reply carries.
            let now = match items.next() {
                Some(v) => Timestamp::from_millis(codec::number(what, v)?),
                None => return Err(codec::unexpected(what, &Value::Nil)),
            };
            return Ok(plan_claim(None, req, now));
        }
        let (Some(previous), Some(record)) = (items.next(), items.next()) else {
            return Err(codec::unexpected(what, &Value::Nil));
        };
        let previous = codec::text(what, previous)?;
        let record = codec::record(what, record)?;
        match outcome.as_str() {
            "acquired" => {
                let previous = if previous.is_empty() {
                    None
                } else {
                    Some(previous.parse::<Status>().map_err(|_| {
                        codec::unexpected(what, &Value::SimpleString(previous.clone()))
                    })?)
                };
                Ok(Claimed::Acquired { record, previous })
            }
            "existing" => Ok(Claimed::Existing(record)),
            "marked_unknown" => Ok(Claimed::MarkedUnknown(record)),
            _ => Err(codec::unexpected(what, &Value::SimpleString(outcome))),
        }
    }

    /// The arguments of the transition script for `t` (its share of `ARGV`);
    /// `quiet` asks for no record back when applied.
    fn transition_args(t: &Transition, quiet: bool) -> Cmd {
        let flag = |present: bool| if present { "1" } else { "0" };
        let (lease, lease_ms) = match t.lease {
            LeaseChange::Keep => ("keep", 0),
            LeaseChange::Clear => ("clear", 0),
            LeaseChange::Acquire(d) => ("acquire", millis(d)),
        };
        let (attempts, attempts_n) = match t.attempts {
            AttemptsChange::Keep => ("keep", 0),
            AttemptsChange::Increment => ("increment", 0),
            AttemptsChange::Set(n) => ("set", n),
        };
        let blobs = t.output.as_ref().map_or(0, |o| o.len())
            + t.error.as_ref().map_or(0, String::len)
            + t.note.as_ref().map_or(0, String::len);
        let mut args = Cmd::with_capacity(20, 128 + blobs);
        args.arg("transition")
            .arg(t.id.as_str())
            .arg(t.from.as_str())
            .arg(t.token)
            .arg(t.to.as_str())
            .arg(flag(t.output.is_some()))
            .arg(t.output.as_deref().unwrap_or_default())
            .arg(flag(t.error.is_some()))
            .arg(t.error.as_deref().unwrap_or_default())
            .arg(lease)
            .arg(lease_ms)
            .arg(attempts)
            .arg(attempts_n)
            .arg(flag(t.note.is_some()))
            .arg(t.note.as_deref().unwrap_or_default())
            .arg(millis(t.retry_after.unwrap_or_default()))
            .arg(flag(t.retention.is_some()))
            .arg(millis(t.retention.unwrap_or_default()))
            .arg(flag(quiet))
            .arg(flag(t.if_lease_expired));
        args
    }

    /// One call of the operations script for requests, each its bucket, its
    /// record key and its arguments (the first naming the operation).
    fn group_call<'a>(
        &self,
        requests: impl IntoIterator<Item = (u16, &'a str, &'a Cmd)> + Clone,
    ) -> ScriptCall {
        let mut keys = Vec::new();
        for (bucket, record, _) in requests.clone() {
            let k = self.keys(bucket);
            keys.extend([record, k.due.as_str(), k.exp.as_str(), k.wf.as_str()]);
        }
        let mut call = ScriptCall::new(&scripts().ops, &keys);
        for (bucket, _, args) in requests {
            lane::append_args(&mut call, args, &self.keys(bucket).status_prefix);
        }
        call
    }

    /// Sends one request through its bucket's lane: its item of the reply.
    async fn send_one(
        &self,
        action: Action<'_>,
        id: &RecordId,
        args: Cmd,
    ) -> Result<Value, StoreError> {
        let reply = self
            .send_one_raw(id, args)
            .await
            .map_err(|f| self.failure(action, f))?;
        self.refused(action, reply)
    }

    /// [`send_one`](Self::send_one), the failure kept whole.
    async fn send_one_raw(&self, id: &RecordId, args: Cmd) -> Result<Value, Failure> {
        let bucket = self.bucket_of(id);
        let key = self.keys(bucket).record(id);
        lane::send(self, bucket, key, args).await
    }

    /// `reply`, unless it is `{'error', message}`: the server refused a
    /// command of this request (the others in its call went on).
    fn refused(&self, action: Action<'_>, reply: Value) -> Result<Value, StoreError> {
        if let Value::Array(items) = &reply
            && let [Value::BulkString(outcome), message] = items.as_slice()
            && outcome.as_slice() == b"error"
        {
            let message = match message {
                Value::BulkString(m) => String::from_utf8_lossy(m).into_owned(),
                other => format!("{other:?}"),
            };
            // The record's key holds another type of value: the script's
            // first read of it failed, before anything was written.
            if message.contains("WRONGTYPE") {
                return Err(StoreError::new(
                    StoreErrorKind::Corrupt,
                    format!(
                        "redis at {}: {action}: its key holds another type of value, not a record hash; nothing was written",
                        self.inner.target
                    ),
                ));
            }
            // A script refused a record it could not trust, before writing
            // anything of this request.
            if let Some(at) = message.find("tempox corrupt record ") {
                let what = &message[at + "tempox corrupt record ".len()..];
                return Err(StoreError::new(
                    StoreErrorKind::Corrupt,
                    format!(
                        "redis at {}: record {what} ({action}); nothing was written",
                        self.inner.target
                    ),
                ));
            }
            return Err(StoreError::new(
                StoreErrorKind::Other,
                format!(
                    "redis at {} failed ({action}): {message}{}",
                    self.inner.target,
                    action.maybe_applied()
                ),
            ));
        }
        Ok(reply)
    }

    /// Gives back the claim of `id` that `reply` (its claim script's
    /// answer) says was taken, after no replica acknowledged it in time: its
    /// caller learns the claim failed (or has stopped waiting) and runs
    /// nothing, so retries should not find the key held until the lease
    /// runs out (nor, for a non-idempotent call, park it as outcome
    /// unknown). A claim of a key that was free (new, released, or past its
    /// retention) is released; a takeover of an expired claim, whose earlier
    /// holder may have had its effect, goes back to what it was, pending and
    /// expired, so the next caller or a reconciler still probes or recovers
    /// it. Fenced by the claim's token; sent without waiting for replicas,
    /// from a task of its own (made even if the caller goes away), whose
    /// handle is returned; `None` when nothing was taken. A replica that got
    /// the claim but not this stays with the claim: after a failover the key
    /// is held until its lease runs out, as after any lost write.
    pub(super) fn give_back(
        &self,
        id: RecordId,
        reply: &Value,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let (token, previous) = Self::taken(reply)?;
        let mut t = Transition::new(id, Status::Pending, token, Status::Pending);
        if previous == Some(Status::Pending) {
            t.lease = LeaseChange::Clear;
        } else {
            t.to = Status::Released;
            t.error = Some("released: no replica acknowledged the claim in time".into());
            t.retention = Some(crate::runtime::DEFAULT_RETENTION);
        }
        let args = Self::transition_args(&t, true);
        let bucket = self.bucket_of(&t.id);
        let key = self.keys(bucket).record(&t.id);
        let call = self.group_call([(bucket, key.as_str(), &args)]);
        let request = send_script(self.inner.conn.clone(), call.script, call.cmd, None);
        let timeout = self.inner.timeout;
        Some(self.inner.driver.spawn(async move {
            let reply = within_failure(timeout, request).await;
            // One reply per request; a quiet transition that applied is
            // {'applied'}.
            let applied = matches!(
                &reply,
                Ok(Value::Array(items)) if matches!(
                    items.first(),
                    Some(Value::Array(item)) if matches!(
                        item.first(),
                        Some(Value::BulkString(b)) if b.as_slice() == b"applied"
                    )
                )
            );
            if !applied {
                tracing::warn!(
                    id = %t.id,
                    "could not give back a claim no replica acknowledged; it is held until its lease runs out"
                );
            }
        }))
    }

    /// Gives back, in a task of its own, the claim numbered `nonce` on `id`
    /// if the server took it although its caller never heard so: asked
    /// again (with a growing wait) until the server answers or the claim's
    /// `lease` is over, when recovery takes it over anyway.
    fn give_back_lost(&self, id: RecordId, nonce: u64, lease: Duration) {
        let store = self.clone();
        let started = tokio::time::Instant::now();
        self.inner.driver.spawn(async move {
            let mut wait = Duration::from_millis(20);
            loop {
                match store.give_back_claim(&id, nonce).await {
                    Ok(given) => {
                        if given {
                            tracing::info!(%id, "gave back a claim whose answer was lost");
                        }
                        return;
                    }
                    Err(e) if started.elapsed() + wait < lease => {
                        tracing::debug!(%id, error = %e, "could not give back a claim yet");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(1));
                    }
                    Err(e) => {
                        tracing::warn!(%id, error = %e, "could not give back a claim whose answer was lost; it is held until its lease runs out");
                        return;
                    }
                }
            }
        });
    }

    /// One attempt of [`give_back_lost`](Self::give_back_lost): whether a
    /// claim was given back.
    async fn give_back_claim(&self, id: &RecordId, nonce: u64) -> Result<bool, StoreError> {
        let mut args = Cmd::new();
        args.arg("claimed_by").arg(id.as_str()).arg(nonce);
        let action = Action::Claim(id);
        let reply = match self.send_one_raw(id, args).await {
            Ok(reply) => self.refused(action, reply)?,
            Err(failure) => return Err(self.failure(action, failure)),
        };
        let what = "the claimed_by script";
        let mut items = codec::array(what, reply)?.into_iter();
        match items
            .next()
            .map(|v| codec::text(what, v))
            .transpose()?
            .as_deref()
        {
            Some("held") => {}
            Some("no") => return Ok(false),
            _ => return Err(codec::unexpected(what, &Value::Nil)),
        }
        let (Some(token), Some(previous), Some(workflow)) =
            (items.next(), items.next(), items.next())
        else {
            return Err(codec::unexpected(what, &Value::Nil));
        };
        let token = codec::number(what, token)?;
        let previous = codec::text(what, previous)?;
        let in_workflow = !codec::text(what, workflow)?.is_empty();
        let mut t = Transition::new(id.clone(), Status::Pending, token, Status::Pending);
        if previous == Status::Pending.as_str() {
            // A takeover: back to pending with no lease, as the holder
            // before it left it.
            t.lease = LeaseChange::Clear;
        } else {
            t.to = Status::Released;
            t.error = Some("given back: its caller never heard the claim's answer".into());
            // A step's retention starts with its workflow's.
            t.retention = (!in_workflow).then_some(crate::runtime::DEFAULT_RETENTION);
        }
        self.apply(&t).await
    }

    /// The token of the claim a claim script's `reply` says it took, and the
    /// status the record had before; `None` when it took none.
    fn taken(reply: &Value) -> Option<(u64, Option<Status>)> {
        let Value::Array(items) = reply else {
            return None;
        };
        let what = "the claim script";
        let outcome = codec::text(what, items.first()?.clone()).ok()?;
        match outcome.as_str() {
            // A new record, written at the server's clock.
            "fresh" => {
                let now = codec::number(what, items.get(1)?.clone()).ok()?;
                Some((next_token(None, Timestamp::from_millis(now)), None))
            }
            "acquired" => {
                let previous = codec::text(what, items.get(1)?.clone()).ok()?;
                let record = codec::record(what, items.get(2)?.clone()).ok()?;
                Some((record.token, previous.parse::<Status>().ok()))
            }
            _ => None,
        }
    }

    /// A lane's failure as the error of one request in it.
    fn failure(&self, action: Action<'_>, failure: Failure) -> StoreError {
        let target = &self.inner.target;
        match failure {
            Failure::Redis(e) => {
                let error = redis_error_message(target, action, &e);
                error.with_backend(e)
            }
            Failure::Timeout => StoreError::new(
                StoreErrorKind::Timeout,
                format!(
                    "redis at {target} did not answer within {} ({action}){}",
                    Human(self.inner.timeout),
                    action.maybe_applied()
                ),
            ),
            Failure::Reply(value) => {
                codec::unexpected(&format!("the operations script ({action})"), &value)
            }
            Failure::Unreplicated { acknowledged, .. } => {
                let (count, within) = self
                    .inner
                    .replicas
                    .map_or((0, Duration::ZERO), |r| (r.count, r.timeout));
                StoreError::new(
                    StoreErrorKind::Timeout,
                    format!(
                        "redis at {target} applied the call's writes, if any, but {acknowledged} \
                         of the {count} replica(s) it must wait for acknowledged them within {} \
                         ({action}): a failover now could lose them; check that the replicas are \
                         connected and keeping up (INFO replication), or wait for fewer with \
                         {WAIT_FOR_REPLICAS}",
                        Human(within)
                    ),
                )
            }
            Failure::Abandoned => StoreError::new(
                StoreErrorKind::Unavailable,
                format!(
                    "the request to redis at {target} was abandoned: the runtime sending it stopped \
                     ({action}){}",
                    action.maybe_applied()
                ),
            ),
        }
    }

    /// Sends the transition script for `t`: whether it applied, and the
    /// record it answered with (none when applied `quiet`ly, or on a conflict
    /// with no record).
    async fn send_transition(
        &self,
        t: &Transition,
        quiet: bool,
    ) -> Result<(bool, Option<Record>), StoreError> {
        // An illegal pair is the caller's bug, refused before any I/O with
        // plan_transition's own error.
        plan_transition(None, t, Timestamp::from_millis(0))?;
        let args = Self::transition_args(t, quiet);
        let reply = self
            .send_one(Action::Transition(&t.id), &t.id, args)
            .await?;
        let what = "the transition script";
        let mut items = codec::array(what, reply)?.into_iter();
        let outcome = match items.next() {
            Some(v) => codec::text(what, v)?,
            None => return Err(codec::unexpected(what, &Value::Nil)),
        };
        let record = items.next().map(|r| codec::record(what, r)).transpose()?;
        match outcome.as_str() {
            "applied" => Ok((true, record)),
            "conflict" => Ok((false, record)),
            "illegal" => Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!(
                    "the redis transition script refused {} -> {} for `{}`: its table of transitions \
                     differs from this build of tempox",
                    t.from, t.to, t.id
                ),
            )),
            _ => Err(codec::unexpected(what, &Value::SimpleString(outcome))),
        }
    }

    /// Runs `request` where the caller's I/O runs (see [`Driver`]) with the
    /// store's deadline.
    async fn on_driver<T: Send + 'static>(
        &self,
        request: impl Future<Output = Result<T, RedisError>> + Send + 'static,
    ) -> Result<T, Failure> {
        let task = self.inner.driver.run(within(self.inner.timeout, request));
        task.await.unwrap_or(Err(Failure::Abandoned))
    }

    /// Invokes a script (EVALSHA, loading the script and sending the call
    /// again when the server does not know it, e.g. after a restart).
    async fn invoke(&self, action: Action<'_>, call: &ScriptCall) -> Result<Value, StoreError> {
        let store = self.clone();
        let call = ScriptCall {
            script: call.script,
            cmd: call.cmd.clone(),
        };
        let task = self
            .inner
            .driver
            .run(async move { store.invoke_raw(call).await });
        task.await
            .unwrap_or(Err(Failure::Abandoned))
            .map_err(|f| self.failure(action, f))
    }

    /// The connection to send `script` on: for a script that waits for
    /// replicas, the least busy writer (held until the hold is dropped);
    /// else, or when there are none, the store's connection.
    fn writer(&self, script: &::redis::Script) -> (Conn, Option<Busy>) {
        let writers = &self.inner.writers;
        if writers.is_empty() || !scripts().waits_for_replicas(script) {
            return (self.inner.conn.clone(), None);
        }
        let (i, writer) = writers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.busy.load(Ordering::Relaxed))
            .unwrap_or((0, &writers[0]));
        writer.busy.fetch_add(1, Ordering::Relaxed);
        let busy = Busy {
            store: self.clone(),
            writer: i,
        };
        (writer.conn.clone(), Some(busy))
    }

    /// [`invoke`](Self::invoke) from a lane's task (already where its I/O
    /// runs), the failure kept whole to be described once per request.
    async fn invoke_raw(&self, call: ScriptCall) -> Result<Value, Failure> {
        let (conn, _busy) = self.writer(call.script);
        let request = send_script(conn, call.script, call.cmd, self.inner.replicas);
        within_failure(self.inner.timeout, request).await
    }

    async fn query(&self, action: Action<'_>, cmd: &Cmd) -> Result<Value, StoreError> {
        let (mut conn, cmd) = (self.inner.conn.clone(), cmd.clone());
        self.on_driver(async move { cmd.query_async::<Value>(&mut conn).await })
            .await
            .map_err(|f| self.failure(action, f))
    }

    /// Loads every script (on every node of a cluster) before the first call,
    /// so calls find them instead of each loading its own: a server that
    /// restarts later without them is answered by the reload in
    /// [`send_script`].
    async fn load_scripts(&self) -> Result<(), StoreError> {
        let mut conn = self.inner.conn.clone();
        self.on_driver(async move {
            for script in scripts().all() {
                script.load_async(&mut conn).await?;
            }
            Ok(())
        })
        .await
        .map_err(|f| self.failure(Action::Connect, f))
    }

    /// Checks (or records, on first use) the layout of every bucket.
    async fn check_layout(&self, create: bool) -> Result<(), StoreError> {
        let checks = self.all_buckets().map(|b| {
            Box::pin(async move {
                let keys = self.keys(b);
                let mut inv = ScriptCall::new(&scripts().init, &[&keys.meta]);
                inv.arg(self.inner.buckets)
                    .arg(LAYOUT_VERSION)
                    .arg(if create { "1" } else { "0" });
                let reply = self.invoke(Action::Connect, &inv).await?;
                let mut items = codec::array("the layout check", reply)?.into_iter();
                let outcome = match items.next() {
                    Some(v) => codec::text("the layout check", v)?,
                    None => String::new(),
                };
                let theirs = match items.next() {
                    Some(v) => codec::text("the layout check", v)?,
                    None => String::new(),
                };
                let inner = &self.inner;
                match outcome.as_str() {
                    "ok" | "created" => Ok(true),
                    "missing" => Ok(false),
                    "buckets" => Err(StoreError::new(
                        StoreErrorKind::Schema,
                        format!(
                            "redis at {} holds tempox data under prefix `{}` written with {theirs} buckets, \
                             but this store is configured with {}; connect with `.buckets({theirs})` (another prefix would \
                             start with no records, and keys completed under this one would run again)",
                            inner.target, inner.prefix, inner.buckets
                        ),
                    )),
                    "version" => Err(StoreError::new(
                        StoreErrorKind::Schema,
                        format!(
                            "redis at {} holds tempox data under prefix `{}` in layout version `{theirs}`; \
                             this version of tempox reads layout version {LAYOUT_VERSION}: let the release that \
                             wrote it finish its work and the retention of its last completed record pass \
                             (until then its records keep retried keys from running again), then connect \
                             with another prefix (`.prefix(..)`) or delete the keys under this one",
                            inner.target, inner.prefix
                        ),
                    )),
                    _ => Err(codec::unexpected(
                        "the layout check",
                        &Value::SimpleString(outcome),
                    )),
                }
            }) as Pin<Box<dyn Future<Output = Result<bool, StoreError>> + Send + '_>>
        });
        // Whether each bucket holds the layout record (none is missing
        // unless `create` is off).
        let found = join_all(checks.collect())
            .await
            .into_iter()
            .collect::<Result<Vec<bool>, StoreError>>()?;
        let missing: Vec<String> = (0..self.inner.buckets)
            .zip(&found)
            .filter(|(_, found)| !**found)
            .map(|(b, _)| b.to_string())
            .collect();
        let (target, prefix) = (&self.inner.target, &self.inner.prefix);
        if missing.len() == found.len() {
            return Err(StoreError::new(
                StoreErrorKind::Schema,
                format!("redis at {target} holds no tempox data under prefix `{prefix}`"),
            ));
        }
        if !missing.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                format!(
                    "redis at {target} holds tempox data under prefix `{prefix}`, but bucket(s) {} \
                     have no layout record (`{{{prefix}:<bucket>}}:meta`): was it deleted?",
                    missing.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// The settings named by `pattern` (`CONFIG GET`'s name, value pairs) of
    /// each server: on a cluster every master's, by its address; else the
    /// one server's, under the store's target.
    async fn config_get(
        &self,
        pattern: &str,
    ) -> Result<Vec<(String, Vec<(String, String)>)>, StoreError> {
        let mut cmd = ::redis::cmd("CONFIG");
        cmd.arg("GET").arg(pattern);
        let pairs = |reply: Value| {
            let mut strings = Vec::new();
            flatten(reply, &mut strings);
            strings
                .chunks_exact(2)
                .map(|pair| (pair[0].to_ascii_lowercase(), pair[1].clone()))
                .collect::<Vec<_>>()
        };
        Ok(self
            .on_every_primary(&cmd)
            .await?
            .into_iter()
            .map(|(node, reply)| (node, pairs(reply)))
            .collect())
    }

    /// `cmd`'s reply from the server, or from every primary of a cluster,
    /// each with the address of the server that gave it.
    async fn on_every_primary(&self, cmd: &Cmd) -> Result<Vec<(String, Value)>, StoreError> {
        match &self.inner.conn {
            Conn::Single(_) => {
                let reply = self.query(Action::Connect, cmd).await?;
                Ok(vec![(self.inner.target.clone(), reply)])
            }
            Conn::Cluster(c) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let (mut c, cmd) = (c.clone(), cmd.clone());
                let reply = self
                    .on_driver(async move { c.route_command(&cmd, routing).await })
                    .await
                    .map_err(|f| self.failure(Action::Connect, f))?;
                // One reply per master, keyed by its address.
                let Value::Map(nodes) = reply else {
                    return Ok(vec![(self.inner.target.clone(), reply)]);
                };
                Ok(nodes
                    .into_iter()
                    .map(|(node, reply)| {
                        let mut name = Vec::new();
                        flatten(node, &mut name);
                        (name.concat(), reply)
                    })
                    .collect())
            }
        }
    }

    /// The servers that have fewer replicas online than the store waits for
    /// (or are no primary), as a message; `None` when none has (or the store
    /// waits for none).
    async fn replicas_problem(&self) -> Result<Option<String>, StoreError> {
        let Some(replicas) = self.inner.replicas else {
            return Ok(None);
        };
        let mut cmd = ::redis::cmd("INFO");
        cmd.arg("replication");
        let mut short = Vec::new();
        for (node, reply) in self.on_every_primary(&cmd).await? {
            let mut text = Vec::new();
            flatten(reply, &mut text);
            let text = text.concat();
            if !text.contains("role:master") {
                short.push(format!(
                    "redis at {node} is not a primary, or its replicas could not be read (INFO \
                     replication)"
                ));
                continue;
            }
            // `slave<i>:ip=...,state=online,...`: a replica that still syncs
            // acknowledges nothing yet.
            let online = text
                .lines()
                .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                .count();
            if online < usize::try_from(replicas.count).unwrap_or(usize::MAX) {
                short.push(format!("redis at {node} has {online} replica(s) online"));
            }
        }
        Ok((!short.is_empty()).then(|| {
            format!(
                "{}; the store waits for {} on every write ({WAIT_FOR_REPLICAS}), so writes \
                 fail until enough are connected",
                short.join("; "),
                replicas.count
            )
        }))
    }

    /// What in the servers' settings can lose or evict tempox's records, as
    /// one message naming each server and setting; `None` when nothing can.
    ///
    /// # Errors
    /// The server is unreachable or did not answer in time (a server that
    /// refuses `CONFIG` is a problem, not an error).
    async fn durability_problem(&self) -> Result<Option<String>, StoreError> {
        let needs = "tempox's guarantees need `appendonly yes`, `appendfsync always` and a \
                     `maxmemory-policy` that never evicts its records (`noeviction` or `volatile-*`)";
        let settings = match (
            self.config_get("append*").await,
            self.config_get("maxmemory-policy").await,
        ) {
            (Ok(append), Ok(memory)) => append.into_iter().chain(memory),
            (Err(e), _) | (_, Err(e)) => {
                // Unreachable, or the credentials are refused or missing.
                if e.is_retryable() || e.kind() == StoreErrorKind::Invalid {
                    return Err(e);
                }
                // The server's own words (NOPERM, an unknown command, ...).
                let why = e
                    .backend()
                    .map_or_else(|| e.to_string(), ToString::to_string);
                return Ok(Some(format!(
                    "cannot read the settings of redis at {} (CONFIG GET: {why}); {needs}",
                    self.inner.target
                )));
            }
        };
        let mut nodes: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (node, pairs) in settings {
            nodes.entry(node).or_default().extend(pairs);
        }
        let mut problems = Vec::new();
        for (node, pairs) in &nodes {
            let value = |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
            };
            let (Some(appendonly), Some(appendfsync), Some(policy)) = (
                value("appendonly"),
                value("appendfsync"),
                value("maxmemory-policy"),
            ) else {
                problems.push(format!("redis at {node}: its settings could not be read"));
                continue;
            };
            if appendonly != "yes" || appendfsync != "always" {
                problems.push(format!(
                    "redis at {node} runs with appendonly {appendonly} and appendfsync \
                     {appendfsync}: a write it acknowledged just before a crash can be lost"
                ));
            }
            if policy.starts_with("allkeys-") {
                problems.push(format!(
                    "redis at {node}: its maxmemory-policy is {policy}: when memory runs out it \
                     evicts any key, and a key whose record was evicted runs again"
                ));
            }
        }
        if nodes.is_empty() {
            problems.push(format!(
                "redis at {}: its settings could not be read",
                self.inner.target
            ));
        }
        Ok((!problems.is_empty()).then(|| format!("{}; {needs}", problems.join("; "))))
    }

    async fn due_scan(
        &self,
        bucket: u16,
        limit: usize,
    ) -> Result<Vec<(f64, String, u16)>, StoreError> {
        let keys = self.keys(bucket);
        let mut inv = ScriptCall::new(&scripts().due_scan, &[&keys.due]);
        inv.arg(limit);
        let reply = self.invoke(Action::Due, &inv).await?;
        let mut items = codec::array("the due scan", reply)?.into_iter();
        let mut found = Vec::new();
        while let (Some(id), Some(score)) = (items.next(), items.next()) {
            let id = codec::text("the due scan", id)?;
            let score = codec::text("the due scan", score)?;
            let score = score
                .parse::<f64>()
                .map_err(|_| codec::unexpected("the due scan", &Value::SimpleString(score)))?;
            found.push((score, id, bucket));
        }
        Ok(found)
    }

    async fn due_fetch(&self, bucket: u16, ids: Vec<String>) -> Result<Vec<Record>, StoreError> {
        let keys = self.keys(bucket);
        let mut inv = ScriptCall::new(&scripts().due_fetch, &[&keys.due]);
        inv.arg(&keys.record_prefix);
        for id in &ids {
            inv.arg(id);
        }
        let reply = self.invoke(Action::Due, &inv).await?;
        codec::array("the due fetch", reply)?
            .into_iter()
            .map(|r| codec::record("the due fetch", r))
            .collect()
    }

    async fn list_bucket(
        &self,
        bucket: u16,
        index: &Index,
        ranges: &[LexRange],
        keep: &[Status],
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let keys = self.keys(bucket);
        let indexes: Vec<String> = match index {
            Index::Statuses(statuses) => statuses.iter().map(|&s| keys.status(s)).collect(),
            Index::Workflow => vec![keys.wf.clone()],
        };
        let indexes: Vec<&str> = indexes.iter().map(String::as_str).collect();
        let mut inv = ScriptCall::new(&scripts().list, &indexes);
        inv.arg(&keys.record_prefix).arg(limit).arg(ranges.len());
        for range in ranges {
            inv.arg(range.strip)
                .arg(range.min.as_slice())
                .arg(range.max.as_slice());
        }
        for status in keep {
            inv.arg(status.as_str());
        }
        let reply = self.invoke(Action::List, &inv).await?;
        codec::array("the list", reply)?
            .into_iter()
            .map(|r| codec::record("the list", r))
            .collect()
    }

    async fn expire_count(&self, bucket: u16) -> Result<u64, StoreError> {
        let keys = self.keys(bucket);
        let inv = ScriptCall::new(&scripts().expire_count, &[&keys.exp]);
        let reply = self.invoke(Action::Expire, &inv).await?;
        codec::number("the expiry count", reply)
    }

    async fn expire_bucket(&self, bucket: u16, limit: usize) -> Result<usize, StoreError> {
        let keys = self.keys(bucket);
        let mut inv = ScriptCall::new(&scripts().expire, &[&keys.due, &keys.exp, &keys.wf]);
        inv.arg(&keys.record_prefix)
            .arg(limit)
            .arg(&keys.status_prefix);
        let reply = self.invoke(Action::Expire, &inv).await?;
        let n = codec::number("the expiry", reply)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("RedisStore")
            .field("target", &inner.target)
            .field("prefix", &inner.prefix)
            .field("buckets", &inner.buckets)
            .field("response_timeout", &inner.timeout)
            .finish_non_exhaustive()
    }
}

/// The keys of one bucket.
struct Keys {
    due: String,
    exp: String,
    wf: String,
    /// Prepended to a status name for the set of the ids in that status.
    status_prefix: String,
    meta: String,
    /// Prepended to a record id for the record's key.
    record_prefix: String,
}

impl Keys {
    fn new(prefix: &str, bucket: u16) -> Self {
        let tag = format!("{{{prefix}:{bucket}}}");
        Keys {
            due: format!("{tag}:due"),
            exp: format!("{tag}:exp"),
            wf: format!("{tag}:wf"),
            status_prefix: format!("{tag}:s:"),
            meta: format!("{tag}:meta"),
            record_prefix: format!("{tag}:r:"),
        }
    }

    fn record(&self, id: &RecordId) -> String {
        format!("{}{id}", self.record_prefix)
    }

    fn status(&self, status: Status) -> String {
        format!("{}{}", self.status_prefix, status.as_str())
    }
}

/// Which lexicographic indexes a listing reads, one range each.
enum Index {
    /// The sets of these statuses.
    Statuses(Vec<Status>),
    /// The workflow index.
    Workflow,
}

/// A `ZRANGEBYLEX` range over members `<base><id>`, and how many bytes of
/// base to strip for the id.
struct LexRange {
    strip: usize,
    min: Vec<u8>,
    max: Vec<u8>,
}

impl LexRange {
    /// Members `<base><id>` whose id is of `op` (if given) and after `after`
    /// (if given). `base` is empty or ends with `\0`.
    fn new(base: &[u8], op: Option<&str>, after: Option<&RecordId>) -> Self {
        let mut low = base.to_vec();
        if let Some(op) = op {
            low.extend_from_slice(op.as_bytes());
            low.push(b'/');
        }
        let min = match after {
            Some(after) if [base, after.as_str().as_bytes()].concat() >= low => {
                [b"(", base, after.as_str().as_bytes()].concat()
            }
            _ if low.is_empty() => b"-".to_vec(),
            _ => [b"[".as_slice(), &low].concat(),
        };
        let max = match (op, base.split_last()) {
            // Ids of `op` are `op/...`, all below `op0` ('0' follows '/').
            (Some(op), _) => [b"(", base, op.as_bytes(), b"0"].concat(),
            // `<base>\0...` are all below `<base>\x01`.
            (None, Some((_, head))) => [b"(", head, b"\x01"].concat(),
            (None, None) => b"+".to_vec(),
        };
        LexRange {
            strip: base.len(),
            min,
            max,
        }
    }
}

/// What a request was doing, for messages.
#[derive(Clone, Copy)]
enum Action<'a> {
    Connect,
    Claim(&'a RecordId),
    Transition(&'a RecordId),
    Renew(&'a RecordId),
    Get(&'a RecordId),
    Due,
    List,
    Expire,
    Time,
}

impl Action<'_> {
    fn writes(self) -> bool {
        matches!(
            self,
            Action::Claim(_) | Action::Transition(_) | Action::Renew(_) | Action::Expire
        )
    }

    fn maybe_applied(self) -> &'static str {
        if self.writes() {
            "; the write may or may not have been applied"
        } else {
            ""
        }
    }
}

impl fmt::Display for Action<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Connect => f.write_str("connecting"),
            Action::Claim(id) => write!(f, "claiming `{id}`"),
            Action::Transition(id) => write!(f, "changing the status of `{id}`"),
            Action::Renew(id) => write!(f, "renewing the lease of `{id}`"),
            Action::Get(id) => write!(f, "reading `{id}`"),
            Action::Due => f.write_str("listing due records"),
            Action::List => f.write_str("listing records"),
            Action::Expire => f.write_str("removing expired records"),
            Action::Time => f.write_str("reading the server's clock"),
        }
    }
}

/// `request` given at most `timeout`, its failure kept whole.
async fn within<T>(
    timeout: Duration,
    request: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, Failure> {
    within_failure(timeout, async { request.await.map_err(Failure::from) }).await
}

/// [`within`] for a request that fails with a [`Failure`] of its own.
async fn within_failure<T>(
    timeout: Duration,
    request: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::time::timeout(timeout, request)
        .await
        .unwrap_or(Err(Failure::Timeout))
}

/// Sends a script call (EVALSHA), loading the script and sending the call
/// again when the server does not know it (e.g. after a restart). With
/// `replicas`, a script whose writes must reach them is followed on the same
/// connection by `WAIT`, and fails unless enough replicas acknowledged.
async fn send_script(
    mut conn: Conn,
    script: &'static ::redis::Script,
    cmd: Cmd,
    replicas: Option<Replicas>,
) -> Result<Value, Failure> {
    let Some(replicas) = replicas.filter(|_| scripts().waits_for_replicas(script)) else {
        return match cmd.query_async::<Value>(&mut conn).await {
            Err(e) if e.kind() == ErrorKind::NoScriptError => {
                script.load_async(&mut conn).await?;
                Ok(cmd.query_async::<Value>(&mut conn).await?)
            }
            reply => Ok(reply?),
        };
    };
    // Sent together, so WAIT follows the script on the connection that
    // wrote (on a Cluster, the pipeline goes to the node of the script's keys).
    let mut pipe = Pipeline::with_capacity(2);
    pipe.add_command(cmd)
        .cmd("WAIT")
        .arg(replicas.count)
        // At least 1 ms: `WAIT n 0` waits for ever.
        .arg(u64::try_from(replicas.timeout.as_millis()).map_or(u64::MAX, |ms| ms.max(1)));
    let (reply, acknowledged) = match pipe.query_async::<(Value, i64)>(&mut conn).await {
        Err(e) if e.kind() == ErrorKind::NoScriptError => {
            script.load_async(&mut conn).await?;
            pipe.query_async::<(Value, i64)>(&mut conn).await?
        }
        reply => reply?,
    };
    if acknowledged < i64::from(replicas.count) {
        return Err(Failure::Unreplicated {
            acknowledged,
            reply,
        });
    }
    Ok(reply)
}

/// What to check when connecting to a TLS server failed with `err`, for the
/// failures whose usual cause is known; `identity`: the store was given a
/// client certificate. (With TLS 1.3 a server checks the client's
/// certificate after the handshake, so its refusal reaches the client as a
/// connection closed under the first command.)
#[cfg(feature = "redis-tls")]
fn tls_hint(err: &StoreError, identity: bool) -> Option<String> {
    if err.kind() != StoreErrorKind::Unavailable {
        return None;
    }
    let text = err.message().to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
    if has(&["unknownissuer", "badsignature"]) {
        Some(format!(
            "the server's certificate must be signed by an authority the store trusts: the \
             system's, or only those given to {ROOTS}"
        ))
    } else if has(&["notvalidforname", "not valid for name"]) {
        Some(
            "the server's certificate is not for the host of the url: connect with a name or \
             address the certificate holds"
                .to_owned(),
        )
    } else if has(&[
        "broken pipe",
        "reset by peer",
        // The alerts a server sends about a client's certificate.
        "certificaterequired",
        "badcertificate",
        "certificateunknown",
        "unknownca",
        "decrypterror",
        "accessdenied",
    ]) {
        Some(if identity {
            format!(
                "if the server asks clients for a certificate (`tls-auth-clients`), it must \
                 trust the authority of the one given to {IDENTITY}"
            )
        } else {
            format!(
                "if the server asks clients for a certificate (`tls-auth-clients`), give one \
                 with {IDENTITY}"
            )
        })
    } else {
        None
    }
}

/// A [`RedisError`] as a [`StoreError`] that classifies itself (the caller
/// keeps `e` with [`StoreError::with_backend`]).
fn redis_error_message(target: &str, action: Action<'_>, e: &RedisError) -> StoreError {
    let redirected = matches!(e.kind(), ErrorKind::Moved | ErrorKind::Ask);
    if redirected && !target.starts_with("cluster ") {
        // A single-server store pointed at a node of a Redis Cluster.
        return StoreError::new(
            StoreErrorKind::Invalid,
            format!(
                "redis at {target} is a Redis Cluster node ({action}): {e}; connect with \
                 RedisStore::connect_cluster or RedisStore::cluster_builder"
            ),
        );
    }
    if let Some(err) = credentials_error(target, action, e) {
        return err;
    }
    if e.code() == Some("WRONGTYPE") {
        // A read of a key that holds another type of value: nothing was
        // written, and no retry will read a record there.
        return StoreError::new(
            StoreErrorKind::Corrupt,
            format!(
                "redis at {target}: {action}: its key holds another type of value, not a record hash"
            ),
        );
    }
    let kind = if e.is_timeout() {
        StoreErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        StoreErrorKind::Unavailable
    } else {
        match e.kind() {
            ErrorKind::ClusterDown
            | ErrorKind::MasterDown
            | ErrorKind::TryAgain
            | ErrorKind::BusyLoadingError
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::ReadOnly
            // On a cluster store, a redirection left once the client's retries
            // are spent: the slot's owner is moving or out of reach.
            | ErrorKind::Moved
            | ErrorKind::Ask => StoreErrorKind::Unavailable,
            ErrorKind::InvalidClientConfig => StoreErrorKind::Invalid,
            _ => StoreErrorKind::Other,
        }
    };
    let message = match kind {
        StoreErrorKind::Unavailable => format!(
            "redis at {target} is unavailable ({action}): {e}{}",
            action.maybe_applied()
        ),
        StoreErrorKind::Timeout => format!(
            "redis at {target} did not answer in time ({action}): {e}{}",
            action.maybe_applied()
        ),
        _ => format!(
            "redis at {target} failed ({action}): {e}{}",
            action.maybe_applied()
        ),
    };
    StoreError::new(kind, message)
}

/// The [`Invalid`](StoreErrorKind::Invalid) error of credentials the server
/// refused, or of a password it wants and the URL lacks; `None` for other
/// errors. A Cluster client reports a node's refusal of its first
/// connections as an I/O error carrying the node's words.
fn credentials_error(target: &str, action: Action<'_>, e: &RedisError) -> Option<StoreError> {
    let text = e.to_string();
    let (what, advice) = if target.starts_with("cluster ")
        && (text.contains("Password authentication failed") || text.contains("NOAUTH"))
    {
        (
            "failed authentication",
            "check the user and password of the urls",
        )
    } else if e.code() == Some("NOAUTH") {
        (
            "wants a password",
            "give it in the url (redis://[user]:password@host:port/)",
        )
    } else if e.kind() == ErrorKind::AuthenticationFailed {
        (
            "failed authentication",
            "check the user and password of the url (a server that turns connections away, \
             say at its `maxclients`, fails the same way)",
        )
    } else {
        return None;
    };
    Some(StoreError::new(
        StoreErrorKind::Invalid,
        format!(
            "redis at {target} {what} ({action}): {}; {advice}",
            client_words(e).trim_end_matches('.')
        ),
    ))
}

/// The client's words for `e`, without its error kind's name.
fn client_words(e: &RedisError) -> String {
    let text = e.to_string();
    let kind = format!("{:?}", e.kind());
    text.strip_suffix(&kind)
        .map_or(text.as_str(), |t| t.trim_end_matches([' ', '-']))
        .to_owned()
}

/// Every string in a reply, depth first.
fn flatten(value: Value, out: &mut Vec<String>) {
    match value {
        Value::BulkString(b) => out.push(String::from_utf8_lossy(&b).into_owned()),
        Value::SimpleString(s) => out.push(s),
        Value::Array(items) | Value::Set(items) => {
            for v in items {
                flatten(v, out);
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                flatten(k, out);
                flatten(v, out);
            }
        }
        _ => {}
    }
}

/// Milliseconds of `d`, saturating like [`Timestamp::plus`].
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Drives `futures` concurrently (on this task) and returns their outputs in
/// order: one request per bucket in flight at once.
async fn join_all<T>(mut futures: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    let mut done: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, slot) in futures.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

#[async_trait]
impl Store for RedisStore {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claimed, StoreError> {
        let action = Action::Claim(&req.id);
        let nonce = fastrand::u64(1..);
        let reply = match self
            .send_one_raw(&req.id, Self::claim_args(req, nonce))
            .await
        {
            Ok(reply) => self.refused(action, reply)?,
            Err(Failure::Unreplicated {
                acknowledged,
                reply,
            }) => {
                if let Some(given) = self.give_back(req.id.clone(), &reply) {
                    let _ = given.await;
                }
                let failure = Failure::Unreplicated {
                    acknowledged,
                    reply: Value::Nil,
                };
                return Err(self.failure(action, failure));
            }
            Err(failure) => {
                if matches!(
                    failure,
                    Failure::Timeout | Failure::Redis(_) | Failure::Abandoned
                ) {
                    // The server may have taken the claim while its answer
                    // was lost: no body runs under it, so it is given back
                    // rather than left to look, once its lease is over, like
                    // a call that crashed mid-way (a false dead letter).
                    self.give_back_lost(req.id.clone(), nonce, req.lease);
                }
                return Err(self.failure(action, failure));
            }
        };
        Self::claimed(req, reply)
    }

    async fn transition(&self, t: &Transition) -> Result<Transitioned, StoreError> {
        match self.send_transition(t, false).await? {
            (true, Some(record)) => Ok(Transitioned::Applied(record)),
            (true, None) => Err(codec::unexpected(
                "the transition script",
                &Value::SimpleString("applied without a record".into()),
            )),
            (false, record) => Ok(Transitioned::Conflict(record)),
        }
    }

    async fn apply(&self, t: &Transition) -> Result<bool, StoreError> {
        Ok(self.send_transition(t, true).await?.0)
    }

    async fn renew(
        &self,
        id: &RecordId,
        status: Status,
        token: u64,
        lease: Duration,
    ) -> Result<Option<Timestamp>, StoreError> {
        let mut args = Cmd::with_capacity(5, 64 + id.as_str().len());
        args.arg("renew")
            .arg(id.as_str())
            .arg(status.as_str())
            .arg(token)
            .arg(millis(lease));
        let reply = self.send_one(Action::Renew(id), id, args).await?;
        let what = "the renewal of a lease";
        let unexpected = codec::unexpected(what, &reply);
        let mut items = codec::array(what, reply)?.into_iter();
        match (
            items.next().map(|v| codec::text(what, v)).transpose()?,
            items.next(),
        ) {
            (Some(o), None) if o == "fenced" => Ok(None),
            (Some(o), Some(until)) if o == "renewed" => {
                codec::number(what, until).map(|ms| Some(Timestamp::from_millis(ms)))
            }
            _ => Err(unexpected),
        }
    }

    async fn get(&self, id: &RecordId) -> Result<Option<Record>, StoreError> {
        let mut cmd = ::redis::cmd("HGETALL");
        cmd.arg(self.record_key(id));
        let what = "HGETALL";
        let pairs = match self.query(Action::Get(id), &cmd).await? {
            Value::Map(pairs) => pairs
                .into_iter()
                .map(|(f, v)| Ok((codec::bytes(what, f)?, codec::bytes(what, v)?)))
                .collect::<Result<Vec<_>, StoreError>>()?,
            other => {
                let mut items = codec::array(what, other)?.into_iter();
                let mut pairs = Vec::new();
                while let (Some(f), Some(v)) = (items.next(), items.next()) {
                    pairs.push((codec::bytes(what, f)?, codec::bytes(what, v)?));
                }
                pairs
            }
        };
        if pairs.is_empty() {
            return Ok(None);
        }
        codec::decode(id.as_str(), pairs).map(Some)
    }

    async fn due(&self, limit: usize) -> Result<Vec<Record>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = limit.min(MAX_BATCH);
        // First the ids and due times of every bucket, then the records of the
        // earliest `limit` only.
        let scans: Vec<BoxFuture<'_, Result<Vec<(f64, String, u16)>, StoreError>>> = self
            .all_buckets()
            .map(|b| Box::pin(self.due_scan(b, limit)) as BoxFuture<'_, _>)
            .collect();
        let mut due = Vec::new();
        for found in join_all(scans).await {
            due.extend(found?);
        }
        due.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        due.truncate(limit);
        let mut by_bucket: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for (_, id, bucket) in due {
            by_bucket.entry(bucket).or_default().push(id);
        }
        let fetches: Vec<BoxFuture<'_, Result<Vec<Record>, StoreError>>> = by_bucket
            .into_iter()
            .map(|(b, ids)| Box::pin(self.due_fetch(b, ids)) as BoxFuture<'_, _>)
            .collect();
        let mut records = Vec::new();
        for fetched in join_all(fetches).await {
            records.extend(fetched?);
        }
        records.sort_by(|a, b| a.due_at.cmp(&b.due_at).then_with(|| a.id.cmp(&b.id)));
        Ok(records)
    }

    async fn list(&self, query: &Query) -> Result<Vec<Record>, StoreError> {
        let limit = query.effective_limit().min(MAX_BATCH);
        let op = query.op.as_deref();
        let after = query.after.as_ref();
        let (index, ranges, keep) = if let Some(workflow) = &query.workflow {
            let base = [workflow.as_str().as_bytes(), b"\0"].concat();
            (
                Index::Workflow,
                vec![LexRange::new(&base, op, after)],
                query.statuses.as_slice(),
            )
        } else {
            // Every record is in the set of its status: all of them is every set.
            let statuses = if query.statuses.is_empty() {
                Status::ALL.to_vec()
            } else {
                query.statuses.clone()
            };
            let ranges = statuses
                .iter()
                .map(|_| LexRange::new(b"", op, after))
                .collect();
            (Index::Statuses(statuses), ranges, &[][..])
        };
        let lists: Vec<BoxFuture<'_, Result<Vec<Record>, StoreError>>> = self
            .all_buckets()
            .map(|b| {
                Box::pin(self.list_bucket(b, &index, &ranges, keep, limit)) as BoxFuture<'_, _>
            })
            .collect();
        let mut records = Vec::new();
        for listed in join_all(lists).await {
            records.extend(listed?);
        }
        records.retain(|r| query.matches(r) && after.is_none_or(|a| &r.id > a));
        records.sort_by(|a, b| a.id.cmp(&b.id));
        records.dedup_by(|a, b| a.id == b.id);
        records.truncate(limit);
        Ok(records)
    }

    async fn expire(&self, limit: usize) -> Result<usize, StoreError> {
        if limit == 0 {
            return Ok(0);
        }
        // Counted first, so the removals can run concurrently and still stay
        // within `limit` in all.
        let counts: Vec<BoxFuture<'_, Result<u64, StoreError>>> = self
            .all_buckets()
            .map(|b| Box::pin(self.expire_count(b)) as BoxFuture<'_, _>)
            .collect();
        let mut left = limit.min(MAX_BATCH);
        let mut removals: Vec<BoxFuture<'_, Result<usize, StoreError>>> = Vec::new();
        for (bucket, count) in self.all_buckets().zip(join_all(counts).await) {
            let take = usize::try_from(count?).unwrap_or(usize::MAX).min(left);
            if take > 0 {
                left -= take;
                removals.push(Box::pin(self.expire_bucket(bucket, take)) as BoxFuture<'_, _>);
            }
        }
        let mut removed = 0;
        for n in join_all(removals).await {
            removed += n?;
        }
        Ok(removed)
    }

    async fn now(&self) -> Result<Timestamp, StoreError> {
        let reply = self.query(Action::Time, &::redis::cmd("TIME")).await?;
        let what = "TIME";
        let mut items = codec::array(what, reply)?.into_iter();
        let (Some(secs), Some(micros)) = (items.next(), items.next()) else {
            return Err(codec::unexpected(what, &Value::Nil));
        };
        let (secs, micros) = (codec::number(what, secs)?, codec::number(what, micros)?);
        Ok(Timestamp::from_millis(
            secs.saturating_mul(1000).saturating_add(micros / 1000),
        ))
    }
}

/// Benchmark-only: the exact script calls a [`RedisStore`] sends, so that
/// `benches/load.rs` can send the same scripts with the same keys and
/// arguments straight through the redis client, without tempox, as the raw
/// baseline. Not part of the API and not covered by semver; nothing here
/// changes what the store does.
#[doc(hidden)]
pub mod bench {
    /// The redis client crate the store is built with.
    pub use ::redis;
    use ::redis::{Cmd, Script};

    use super::RedisStore;
    use crate::record::{ClaimRequest, RecordId, Transition};

    /// The operations script and the `EVALSHA` command that
    /// [`Store::claim`](crate::store::Store::claim) sends for `req` when it
    /// goes alone (under load, several requests share one call).
    pub fn claim(store: &RedisStore, req: &ClaimRequest) -> (&'static Script, Cmd) {
        alone(store, &req.id, &RedisStore::claim_args(req, 1))
    }

    /// The operations script and the `EVALSHA` command that
    /// [`Store::apply`](crate::store::Store::apply) sends for `t` (how a call
    /// records its outcome) when it goes alone.
    pub fn transition(store: &RedisStore, t: &Transition) -> (&'static Script, Cmd) {
        alone(store, &t.id, &RedisStore::transition_args(t, true))
    }

    /// The call that carries one request for `id` alone.
    fn alone(store: &RedisStore, id: &RecordId, args: &Cmd) -> (&'static Script, Cmd) {
        let key = store.record_key(id);
        let call = store.group_call([(store.bucket_of(id), key.as_str(), args)]);
        (call.script, call.cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checked in both builds: `scripts/test.sh` also runs these tests
    /// without `redis-tls`.
    #[test]
    fn rediss_urls_name_the_feature_they_need() {
        let builder = RedisStoreBuilder::new(vec!["rediss://user:secret@host:6380/".into()], false);
        let target = builder.target();
        if cfg!(feature = "redis-tls") {
            assert_eq!(target.ok().as_deref(), Some("host:6380"));
        } else {
            let err = target.err().map(|e| (e.kind(), e.to_string()));
            assert_eq!(
                err,
                Some((
                    StoreErrorKind::Invalid,
                    "invalid redis url `rediss://***@host:6380/`: rediss:// (TLS) needs \
                     tempox's `redis-tls` feature"
                        .to_owned()
                ))
            );
        }
    }

    #[test]
    fn lex_ranges_cover_an_operation_and_page_after_an_id() {
        let r = LexRange::new(b"", None, None);
        assert_eq!((r.min.as_slice(), r.max.as_slice()), (&b"-"[..], &b"+"[..]));
        let r = LexRange::new(b"", Some("shop"), None);
        assert_eq!(
            (r.min.as_slice(), r.max.as_slice()),
            (&b"[shop/"[..], &b"(shop0"[..])
        );
        let after = RecordId::parse("shop/k1").unwrap_or_else(|e| panic!("{e}"));
        let r = LexRange::new(b"pending\0", Some("shop"), Some(&after));
        assert_eq!(r.min, b"(pending\0shop/k1".to_vec());
        assert_eq!(r.max, b"(pending\0shop0".to_vec());
        assert_eq!(r.strip, 8);
        let before = RecordId::parse("a/k").unwrap_or_else(|e| panic!("{e}"));
        let r = LexRange::new(b"w/1\0", Some("shop"), Some(&before));
        assert_eq!(r.min, b"[w/1\0shop/".to_vec());
        let r = LexRange::new(b"w/1\0", None, None);
        assert_eq!((r.min, r.max), (b"[w/1\0".to_vec(), b"(w/1\x01".to_vec()));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379/"), "redis://host:6379/");
        assert_eq!(
            redact("unix:///run/redis.sock?db=2&pass=secret&user=app"),
            "unix:///run/redis.sock?db=2&pass=***&user=app"
        );
    }

    #[test]
    fn tls_urls_are_told_apart_in_any_case() {
        for url in ["rediss://h/", "REDISS://h/", "valkeys://h/"] {
            assert!(is_tls_url(url), "{url}");
        }
        for url in ["redis://h/", "valkey://h/", "unix:///s", "rediss"] {
            assert!(!is_tls_url(url), "{url}");
        }
    }
}
