//! HTTP: a tower [`Layer`] that makes requests carrying an `Idempotency-Key`
//! header safe to retry (feature `http`).
//!
//! It follows the IETF draft *The Idempotency-Key HTTP Header Field*. A request
//! of a guarded method (`POST` and `PATCH` unless set otherwise) is handled
//! like a call of an `#[idempotent]` function whose key is the header's value
//! (within the request's [scope](IdempotencyLayer::key_scope)) and whose
//! arguments are the method, the path with its query, and the body:
//!
//! | the request | the answer |
//! |---|---|
//! | has no `Idempotency-Key` | `400 Bad Request` (or passed on untouched, with [`optional`](IdempotencyLayer::optional)) |
//! | has a malformed key (over 255 bytes, not printable ASCII, ...), or two | `400 Bad Request`, naming the problem |
//! | has a body over the limit | `413 Payload Too Large` (RFC 9110: Content Too Large) |
//! | first with its key | runs the handler; its response is recorded with its status, headers and body (by default any below 500 but 408 and 429; see [`record_if`](IdempotencyLayer::record_if)) |
//! | same key, same request, after it | the recorded response, with `Idempotent-Replayed: true`; the handler does not run |
//! | same key while the first still runs | `409 Conflict`, with `Retry-After` |
//! | same key, another method, path, query or body | `422 Unprocessable Entity` (RFC 9110: Unprocessable Content) |
//! | any, while the store cannot be reached to claim the key | `503 Service Unavailable`, with `Retry-After`; the handler does not run |
//!
//! What is recorded and what is not:
//!
//! - A `5xx` response (or `408`, `429`, or what else
//!   [`record_if`](IdempotencyLayer::record_if) leaves out), or an error of
//!   the inner service, is passed on and not recorded: the key is released,
//!   and a retry runs the handler again.
//! - A response whose body is over [`max_response_body`](IdempotencyLayer::max_response_body)
//!   or fails while it is read is answered, and recorded, as a `500` that says
//!   so: the handler ran, so its retries must not run it again.
//! - Replays leave out `Set-Cookie` and the headers about one connection.
//! - The request's body is kept only as its length and hash (it may hold what
//!   a record should not); its method and target are kept as they are.
//!
//! The handler runs in a task of its own (when a Tokio runtime is running,
//! as under axum and hyper): a client that goes away while it runs does not
//! stop it, and its outcome is recorded for the retry. Two things follow:
//! layers outside this one that limit concurrency or shed load count the
//! request as done when its client hangs up, though its handler still runs;
//! and a graceful shutdown of the server does not wait for such handlers:
//! wait for [`IdempotencyLayer::handlers`] to finish before the process
//! ends, or one cut off by its end is as if the process died. If the process
//! dies while a handler runs, retries get `409` until the lease runs out, then
//! run it again, so a handler whose effects must not repeat calls `#[non_idempotent]`
//! functions, which keep records of their own. The same holds when the store
//! fails after the handler ran: the client gets the handler's answer, but its
//! record is not written, so retries get `409` until the lease runs out and
//! then run the handler again. A handler that panics frees
//! its key, like a `5xx`, and the panic goes on to the layers outside.
//!
//! Bodies are read whole, requests and responses both (trailers are not
//! kept): guard the routes that need it with axum's `route_layer`, not
//! streaming or long-polling ones. What runs inside the layer is recorded
//! with the handler, so layers that shape a response for one client
//! (compression, which follows `Accept-Encoding`) or that give up on it
//! (timeouts, rate limits) belong outside it, and authentication that sets
//! the [key scope](IdempotencyLayer::key_scope) too: in axum, of two
//! `route_layer` calls the later one is the outer. Errors are `application/problem+json`
//! (RFC 9457) and never carry the store's messages, which are logged through
//! `tracing` instead.
//!
//! ```
//! # extern crate tempox_runtime as tempox;
//! use tempox::Runtime;
//! use tempox::http::IdempotencyLayer;
//! use tempox::store::MemoryStore;
//!
//! let runtime = Runtime::builder().store(MemoryStore::new()).build()?;
//! // With axum: `Router::new().route("/payments", post(pay)).route_layer(layer)`.
//! let layer = IdempotencyLayer::new(runtime).max_request_body(64 * 1024);
//! # let _ = layer;
//! # Ok::<(), tempox::Error>(())
//! ```

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument as _;

use crate::error::Error;
use crate::invoke::{Begin, Prepared, begin, prepare};
use crate::key::Key;
use crate::operation::{InFlight, Keying, Operation, Options};
use crate::record::Kind;
use crate::runtime::Runtime;

/// The request header that carries the key.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The response header set (to `true`) on a replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The name of the operation a layer's records belong to unless it is given
/// another ([`IdempotencyLayer::name`]): a record's id is `http/<key>`.
pub const OPERATION: &str = "http";

/// The body of the requests the inner service receives and of the responses
/// the layered service returns: the bytes the layer read (or replays), or the
/// original body of what it passed on untouched.
///
/// axum's routers and handlers take any body, so this type stays out of
/// sight there; a hand-written service names it:
///
/// ```
/// # extern crate tempox_runtime as tempox;
/// # use std::convert::Infallible;
/// # use bytes::Bytes;
/// # use http::{Request, Response};
/// # use http_body_util::Full;
/// use tempox::http::LayerBody;
///
/// // Behind the layer, for requests whose body was `Full<Bytes>`.
/// async fn raw(request: Request<LayerBody<Full<Bytes>>>) -> Result<Response<Full<Bytes>>, Infallible> {
///     let _ = request;
///     Ok(Response::new(Full::new(Bytes::from_static(b"done"))))
/// }
/// # let _ = raw;
/// ```
pub type LayerBody<B> = Either<Full<Bytes>, B>;

/// Adds `Idempotency-Key` handling to a service; see the [module](self).
#[derive(Clone, Debug)]
pub struct IdempotencyLayer {
    config: Config,
}

#[derive(Clone, Debug)]
struct Config {
    runtime: Runtime,
    /// The operation its records belong to.
    name: Arc<str>,
    handlers: Handlers,
    methods: Vec<Method>,
    required: bool,
    max_request: usize,
    max_response: usize,
    scope: Option<KeyScope>,
    record_if: fn(StatusCode) -> bool,
}

/// A request's scope, read from its head.
type ScopeFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

/// What [`IdempotencyLayer::key_scope`] was given.
#[derive(Clone)]
struct KeyScope(Arc<ScopeFn>);

impl fmt::Debug for KeyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyScope(..)")
    }
}

impl IdempotencyLayer {
    /// The largest request body read by default (1 MiB).
    pub const DEFAULT_MAX_REQUEST_BODY: usize = 1 << 20;
    /// The largest response body recorded by default (4 MiB).
    pub const DEFAULT_MAX_RESPONSE_BODY: usize = 4 << 20;

    /// Guards `POST` and `PATCH` requests with `runtime`'s store: the key is
    /// required, request bodies up to [`DEFAULT_MAX_REQUEST_BODY`](Self::DEFAULT_MAX_REQUEST_BODY)
    /// are read, responses up to [`DEFAULT_MAX_RESPONSE_BODY`](Self::DEFAULT_MAX_RESPONSE_BODY)
    /// recorded.
    pub fn new(runtime: Runtime) -> Self {
        runtime.register_named(OPERATION);
        IdempotencyLayer {
            config: Config {
                runtime,
                name: Arc::from(OPERATION),
                handlers: Handlers::default(),
                methods: vec![Method::POST, Method::PATCH],
                required: true,
                max_request: Self::DEFAULT_MAX_REQUEST_BODY,
                max_response: Self::DEFAULT_MAX_RESPONSE_BODY,
                scope: None,
                record_if: Self::records_by_default,
            },
        }
    }

    /// The handlers this layer's services run in tasks of their own, to
    /// wait for on shutdown: a graceful shutdown of the server waits for the
    /// requests whose clients are still there, not for handlers whose client
    /// went away, and a handler cut off by the end of the process leaves its
    /// key held until the lease runs out.
    ///
    /// ```no_run
    /// # extern crate tempox_runtime as tempox;
    /// # async fn run(runtime: tempox::Runtime) {
    /// use std::time::Duration;
    /// use tempox::http::IdempotencyLayer;
    ///
    /// let layer = IdempotencyLayer::new(runtime);
    /// let handlers = layer.handlers();
    /// // ... serve with `layer`, then shut the server down gracefully ...
    /// let _ = tokio::time::timeout(Duration::from_secs(30), handlers.finished()).await;
    /// # }
    /// ```
    pub fn handlers(&self) -> Handlers {
        self.config.handlers.clone()
    }

    /// The operation this layer's records belong to (default `http`): a
    /// record's id is `<name>/<key>`. A service with several layers (two
    /// APIs, or routes whose keys must not meet) gives each its own; pin it
    /// before the first deploy, as an operation's name.
    ///
    /// # Errors
    /// [`Error::Config`] for a name that is empty or holds `/`, whitespace or
    /// control characters.
    pub fn name(mut self, name: &str) -> Result<Self, Error> {
        let bad = if name.is_empty() {
            Some("it is empty")
        } else if name.contains('/') {
            Some("`/` separates the name from the key in record ids")
        } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Some("it contains whitespace or control characters")
        } else {
            None
        };
        if let Some(why) = bad {
            return Err(Error::Config {
                setting: "name",
                message: format!(
                    "`{name}` cannot name an idempotency layer's operation: {why}; use letters, digits, `.`, `_`, `-` and `:`"
                ),
            });
        }
        self.config.runtime.register_named(name);
        self.config.name = Arc::from(name);
        Ok(self)
    }

    /// The methods guarded; requests of other methods are passed on untouched.
    #[must_use]
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config.methods = methods.into_iter().collect();
        self
    }

    /// Requests without the header are passed on untouched instead of
    /// refused with `400`.
    #[must_use]
    pub fn optional(mut self) -> Self {
        self.config.required = false;
        self
    }

    /// Whose keys a request's key is among: `scope` reads it from the
    /// request's head (the account that authentication established, the
    /// merchant in the path, ...), and two requests with the same key but
    /// different scopes are two calls, neither of which sees the other's
    /// response.
    ///
    /// Without it, keys are shared by everyone who can reach the routes: a
    /// client that sends another's key and the same request gets the other's
    /// response. Any API with more than one client should scope its keys.
    ///
    /// A request for which `scope` gives `None` is refused with `500` and an
    /// error in the log: it usually means the layer that sets the scope runs
    /// after this one (in axum, of two `route_layer`s the later one runs
    /// first, so add this layer before the authentication layer). To pool
    /// anonymous requests on purpose, give them a scope of their own.
    ///
    /// Behind axum's `Router::nest` the layer sees the path without the
    /// nest's prefix, so a key reused under another prefix would replay:
    /// put what the prefix says into the scope (from axum's `OriginalUri`
    /// extension, or the path parameters).
    ///
    /// The record's key is `<scope>/<key>` (`%`, `/` and `#` in the scope
    /// written `%25`, `%2F` and `%23`; a scope that is over 64 bytes once
    /// written so, or has control characters, replaced by `#` and its hash), and answers to the client name its key as it
    /// sent it.
    ///
    /// ```
    /// # extern crate tempox_runtime as tempox;
    /// # use tempox::{Runtime, store::MemoryStore, http::IdempotencyLayer};
    /// # let runtime = Runtime::builder().store(MemoryStore::new()).build()?;
    /// // Keys are per account, as the authentication in front says; the
    /// // argument is the request's head, `http::request::Parts`.
    /// let layer = IdempotencyLayer::new(runtime).key_scope(|request| {
    ///     let account = request.headers.get("x-account-id")?;
    ///     account.to_str().ok().map(str::to_owned)
    /// });
    /// # let _ = layer;
    /// # Ok::<(), tempox::Error>(())
    /// ```
    #[must_use]
    pub fn key_scope(
        mut self,
        scope: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.config.scope = Some(KeyScope(Arc::new(scope)));
        self
    }

    /// Which of the handler's responses are recorded and replayed (by
    /// status). Others are passed on and free the key, so the retry runs the
    /// handler again. By default: every status below 500 but `408 Request
    /// Timeout` and `429 Too Many Requests`, which say "try again", not what
    /// the request did ([`records_by_default`](Self::records_by_default)).
    ///
    /// A request refused before the handler started (a body an extractor
    /// rejected, a layer inside this one) is recorded too unless excluded
    /// here: `.record_if(|s| s.is_success())` records only `2xx`, as Stripe
    /// does not keep answers to requests that failed validation.
    #[must_use]
    pub fn record_if(mut self, record: fn(StatusCode) -> bool) -> Self {
        self.config.record_if = record;
        self
    }

    /// The default of [`record_if`](Self::record_if).
    pub fn records_by_default(status: StatusCode) -> bool {
        !status.is_server_error()
            && status != StatusCode::REQUEST_TIMEOUT
            && status != StatusCode::TOO_MANY_REQUESTS
    }

    /// The largest request body read, in bytes; a longer one is refused with
    /// `413` before anything is recorded or run.
    #[must_use]
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.config.max_request = bytes;
        self
    }

    /// The largest response body recorded, in bytes. A handler's response
    /// with a longer body (or one whose body fails while it is read) cannot be
    /// replayed; since the handler has run, a `500` saying so is recorded and
    /// answered in its place, so a retry does not run the handler again.
    #[must_use]
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.config.max_response = bytes;
        self
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            config: Arc::new(self.config.clone()),
        }
    }
}

/// The handlers an [`IdempotencyLayer`]'s services are running
/// ([`IdempotencyLayer::handlers`]); clones count the same handlers.
#[derive(Clone, Debug, Default)]
pub struct Handlers(Arc<Running>);

#[derive(Debug, Default)]
struct Running {
    count: AtomicUsize,
    none: tokio::sync::Notify,
}

impl Handlers {
    /// How many are running now.
    pub fn running(&self) -> usize {
        self.0.count.load(Ordering::Acquire)
    }

    /// Resolves once none is running (at once if none is). A request that
    /// arrives meanwhile starts another, which this waits for too.
    pub async fn finished(&self) {
        loop {
            let none = self.0.none.notified();
            tokio::pin!(none);
            // Registered before the count is read: a handler that ends in
            // between still wakes this.
            none.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            none.await;
        }
    }

    /// `handler`, counted while it runs (until it ends or is dropped).
    fn track<F: Future>(&self, handler: F) -> impl Future<Output = F::Output> + use<F> {
        struct Counted(Handlers);
        impl Drop for Counted {
            fn drop(&mut self) {
                let running = &(self.0).0;
                if running.count.fetch_sub(1, Ordering::AcqRel) == 1 {
                    running.none.notify_waiters();
                }
            }
        }
        self.0.count.fetch_add(1, Ordering::AcqRel);
        let counted = Counted(self.clone());
        async move {
            let answer = handler.await;
            drop(counted);
            answer
        }
    }
}

/// The service [`IdempotencyLayer`] wraps around `S`.
#[derive(Clone, Debug)]
pub struct Idempotency<S> {
    inner: S,
    config: Arc<Config>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S>
where
    S: Service<Request<LayerBody<ReqBody>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<LayerBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service polled ready goes with this request; a clone stays for
        // the next one (tower's usual hand-over).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(handle(inner, Arc::clone(&self.config), request))
    }
}

async fn handle<S, ReqBody, ResBody>(
    mut inner: S,
    config: Arc<Config>,
    request: Request<ReqBody>,
) -> Result<Response<LayerBody<ResBody>>, S::Error>
where
    S: Service<Request<LayerBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    ReqBody: Body + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let pass = |inner: &mut S, request: Request<ReqBody>| {
        let response = inner.call(request.map(Either::Right));
        async move { Ok(response.await?.map(Either::Right)) }
    };
    if !config.methods.contains(request.method()) {
        return pass(&mut inner, request).await;
    }
    let key = match read_key(request.headers()) {
        Ok(Some(key)) => key,
        Ok(None) if !config.required => return pass(&mut inner, request).await,
        Ok(None) => {
            return Ok(problem(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key missing",
                format!(
                    "{} requests need an Idempotency-Key header, e.g. a UUID the client makes once and sends again with every retry",
                    request.method()
                ),
            ));
        }
        Err(detail) => {
            return Ok(problem(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key malformed",
                detail,
            ));
        }
    };

    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large",
            format!(
                "the request body is longer than the {} bytes this endpoint reads",
                config.max_request
            ),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > config.max_request as u64) {
        return Ok(too_large());
    }
    let (parts, body) = request.into_parts();
    let bytes = match Limited::new(body, config.max_request).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Ok(too_large()),
        Err(e) => {
            return Ok(problem(
                StatusCode::BAD_REQUEST,
                "Request body unreadable",
                format!("the request body could not be read: {e}"),
            ));
        }
    };
    let client_key = key.as_str().to_owned();
    let key = match &config.scope {
        None => match unscoped(&key) {
            Ok(key) => key,
            // Cannot happen (see `unscoped`).
            Err(e) => {
                tracing::error!(error = %e, "an unscoped key is not a key");
                return Ok(problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Idempotency-Key unusable",
                    "the server could not record this request's key; the request was not handled",
                ));
            }
        },
        Some(KeyScope(scope)) => match scope(&parts).map(|scope| scoped(&scope, &key)) {
            Some(Ok(key)) => key,
            // Cannot happen (see `scoped`); never falls back to no scope.
            Some(Err(e)) => {
                tracing::error!(error = %e, "a scoped key is not a key");
                return Ok(problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Idempotency-Key scope unusable",
                    "the server could not scope this request's key; the request was not handled",
                ));
            }
            None => {
                tracing::error!(
                    method = %parts.method,
                    uri = %parts.uri,
                    "no key scope for a guarded request: is the layer that sets it inside the idempotency layer?"
                );
                return Ok(problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Idempotency-Key scope missing",
                    "the server could not tell whose key this is; the request was not handled",
                ));
            }
        },
    };
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    // The body goes into the fingerprint through its hash, and is not kept:
    // requests may carry what a record should not (card numbers, personal
    // data).
    let input = Input {
        method: parts.method.as_str(),
        target,
        body_length: bytes.len(),
        body_blake3: blake3::hash(&bytes).to_hex().to_string(),
    };
    let prepared = prepare::<HttpCall, _>(Some(Ok(key)), &input).map(|p| p.named(&config.name));
    let run = guarded(
        inner,
        config.runtime.clone(),
        (config.max_response, config.record_if),
        (prepared, client_key),
        Request::from_parts(parts, Either::Left(Full::new(bytes))),
    )
    .in_current_span();
    // A task of its own, so the outcome is recorded even when the client
    // goes away (and the server drops this future) while the handler runs:
    // its retry then gets the response instead of waiting for the lease and
    // running the handler a second time.
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => match runtime.spawn(config.handlers.track(run)).await {
            Ok(answer) => answer,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // The runtime is shutting down.
                Err(_) => Ok(retry_later(problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Server stopping",
                    "the server stopped while handling the request; retry it later",
                ))),
            },
        },
        Err(_) => run.await,
    }
}

/// Claims the request's record, runs the handler, records its response.
async fn guarded<S, ReqBody, ResBody>(
    mut inner: S,
    runtime: Runtime,
    (max_response, record_if): (usize, fn(StatusCode) -> bool),
    (prepared, key): (Result<Prepared, Error>, String),
    request: Request<LayerBody<ReqBody>>,
) -> Result<Response<LayerBody<ResBody>>, S::Error>
where
    S: Service<Request<LayerBody<ReqBody>>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    runtime
        .scope(async move {
            let guard = match begin::<HttpCall>(prepared).await {
                Begin::Done(Ok(recorded)) => return Ok(recorded.into_response(true)),
                Begin::Done(Err(failure)) => return Ok(failure.into_response(&key)),
                Begin::Run(guard) => guard,
                // Idempotent operations are not probed; answered as "not
                // done", which runs the handler.
                Begin::Probe(guard) => match guard.probed(Ok(None)).await {
                    Ok(guard) => guard,
                    Err(Ok(recorded)) => return Ok(recorded.into_response(true)),
                    Err(Err(failure)) => return Ok(failure.into_response(&key)),
                },
            };
            let id = guard.id().clone();
            // The handler's answer, given to the client whatever becomes of
            // its record: its response (as read, or one `record_if` leaves
            // out) or its error.
            let mut answer = None;
            let mut panicked = None;
            let outcome = guard
                .run(async {
                    // A panic frees the key (as a 5xx does), then goes on.
                    let called = AssertUnwindSafe(inner.call(request)).catch_unwind().await;
                    let called = match called {
                        Ok(called) => called,
                        Err(panic) => {
                            panicked = Some(panic);
                            return Err(Failure::NotRecorded);
                        }
                    };
                    match called {
                        Err(e) => {
                            answer = Some(Err(e));
                            Err(Failure::NotRecorded)
                        }
                        Ok(response) if !record_if(response.status()) => {
                            answer = Some(Ok(response.map(Either::Right)));
                            Err(Failure::NotRecorded)
                        }
                        Ok(response) => {
                            let (recorded, response) = Recorded::read(response, max_response).await;
                            answer = Some(Ok(response));
                            Ok(recorded)
                        }
                    }
                })
                .await;
            if let Some(panic) = panicked {
                std::panic::resume_unwind(panic);
            }
            match (outcome, answer) {
                (Err(Failure::Tempox(e)), Some(answer)) => {
                    tracing::warn!(
                        record = %id,
                        error = %e,
                        "the handler answered, but its outcome was not recorded"
                    );
                    answer
                }
                (_, Some(answer)) => answer,
                (Ok(recorded), None) => Ok(recorded.into_response(false)),
                (Err(failure), None) => Ok(failure.into_response(&key)),
            }
        })
        .await
}

/// The longest scope kept as it is; a longer one is replaced by its hash.
const MAX_SCOPE: usize = 64;

/// `<scope>/<key>`: the part before the first `/` names the scope, since an
/// escaped scope has no `/`, and a hashed one (too long, or with control
/// characters) starts with `#`, which an escaped one cannot. At most 64 + 1 +
/// [`MAX_KEY`] bytes of printable text: always a valid key.
fn scoped(scope: &str, key: &Key) -> Result<Key, crate::key::KeyError> {
    let escaped = scope
        .replace('%', "%25")
        .replace('/', "%2F")
        .replace('#', "%23");
    let scope = if escaped.len() <= MAX_SCOPE && !escaped.chars().any(char::is_control) {
        escaped
    } else {
        let hash = blake3::hash(scope.as_bytes()).to_hex();
        format!("#{}", &hash[..MAX_SCOPE - 1])
    };
    Key::new(format!("{scope}/{}", key.as_str()))
}

/// The record key of an unscoped layer: the client's key with `%` and `/`
/// written `%25` and `%2F`, so that it never holds a `/` and never meets a
/// scoped one (`<scope>/<key>`) of a layer with the same name; a key that
/// grows past what a record key may hold is replaced by `#` and its hash.
fn unscoped(key: &Key) -> Result<Key, crate::key::KeyError> {
    if !key.as_str().contains(['%', '/']) {
        return Ok(key.clone());
    }
    let escaped = key.as_str().replace('%', "%25").replace('/', "%2F");
    if escaped.len() <= Key::MAX_LEN {
        return Key::new(escaped);
    }
    Key::new(format!(
        "#{}",
        blake3::hash(key.as_str().as_bytes()).to_hex()
    ))
}

/// The longest `Idempotency-Key` accepted, in bytes (as Stripe's).
pub const MAX_KEY: usize = 255;

/// The key of a request: `Ok(None)` without the header, `Err(detail)` when
/// it is malformed. The value may be a structured-field string (`"..."`, as
/// the draft writes it) or the bare token most clients send.
fn read_key(headers: &HeaderMap) -> Result<Option<Key>, String> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("the request has more than one Idempotency-Key header".into());
    }
    let text = value
        .to_str()
        .map_err(|_| "the Idempotency-Key must be printable ASCII".to_owned())?;
    let text = match text.strip_prefix('"') {
        Some(quoted) => unquote(quoted)?,
        None => text.to_owned(),
    };
    if text.len() > MAX_KEY {
        return Err(format!(
            "the Idempotency-Key is {} bytes long; keys are at most {MAX_KEY} bytes",
            text.len()
        ));
    }
    Key::new(text)
        .map(Some)
        .map_err(|e| format!("the Idempotency-Key is not usable: {e}"))
}

/// The content of a structured-field string after its opening quote.
fn unquote(rest: &str) -> Result<String, String> {
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' if chars.as_str().is_empty() => return Ok(out),
            '"' => {
                return Err("the quoted Idempotency-Key has text after its closing quote".into());
            }
            '\\' => match chars.next() {
                Some(c @ ('"' | '\\')) => out.push(c),
                _ => {
                    return Err(
                        "the quoted Idempotency-Key has a backslash that escapes neither `\"` nor `\\`"
                            .into(),
                    );
                }
            },
            c => out.push(c),
        }
    }
    Err("the quoted Idempotency-Key has no closing quote".into())
}

/// What a guarded request is fingerprinted and recorded as.
#[derive(Serialize)]
struct Input<'a> {
    method: &'a str,
    target: &'a str,
    body_length: usize,
    body_blake3: String,
}

/// Bytes as recorded: as text when they are UTF-8, else as hex.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Binary { hex: String },
}

impl Content {
    fn of(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Content::Text(text.to_owned()),
            Err(_) => {
                let mut hex = String::with_capacity(bytes.len() * 2);
                for b in bytes {
                    hex.push(char::from(HEX[usize::from(b >> 4)]));
                    hex.push(char::from(HEX[usize::from(b & 15)]));
                }
                Content::Binary { hex }
            }
        }
    }

    /// The bytes back; `None` for hex that is not (a damaged record).
    fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Content::Text(text) => Some(text.into_bytes()),
            Content::Binary { hex } => {
                let digit = |c: u8| char::from(c).to_digit(16);
                let hex = hex.as_bytes();
                if hex.len() % 2 != 0 {
                    return None;
                }
                hex.chunks(2)
                    .map(|pair| {
                        let (high, low) = (digit(pair[0])?, digit(pair[1])?);
                        u8::try_from(high * 16 + low).ok()
                    })
                    .collect()
            }
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A response as recorded.
#[derive(Debug, Serialize, Deserialize)]
struct Recorded {
    status: u16,
    headers: Vec<(String, Content)>,
    body: Content,
}

/// Headers about one connection or one transfer (the length is set again
/// for the replayed body), and cookies, which are about one client and one
/// moment: not recorded.
fn recordable(name: &HeaderName) -> bool {
    ![
        header::SET_COOKIE,
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::CONTENT_LENGTH,
    ]
    .contains(name)
        && name.as_str() != "keep-alive"
}

impl Recorded {
    /// Reads the handler's response to record it, and gives it back for
    /// the client as it was (but for headers about its transfer). One whose
    /// body cannot be read whole becomes a recorded `500` saying so.
    async fn read<B, R>(response: Response<B>, max: usize) -> (Recorded, Response<LayerBody<R>>)
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = response.into_parts();
        let bytes = match Limited::new(body, max).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                let (title, detail) = if e.is::<LengthLimitError>() {
                    (
                        "Response too large to record",
                        format!(
                            "the request was handled, but its response is longer than the {max} bytes this endpoint records; retrying does not handle it again"
                        ),
                    )
                } else {
                    tracing::warn!(error = %e, "a response body failed while it was read");
                    (
                        "Response unreadable",
                        "the request was handled, but its response could not be read whole; retrying does not handle it again".to_owned(),
                    )
                };
                let status = StatusCode::INTERNAL_SERVER_ERROR;
                let recorded = Recorded::problem(status, title, detail.clone());
                return (recorded, problem(status, title, detail));
            }
        };
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts.headers.remove(header::CONTENT_LENGTH);
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| recordable(name))
            .map(|(name, value)| (name.as_str().to_owned(), Content::of(value.as_bytes())))
            .collect();
        let recorded = Recorded {
            status: parts.status.as_u16(),
            headers,
            body: Content::of(&bytes),
        };
        (
            recorded,
            Response::from_parts(parts, Either::Left(Full::new(bytes))),
        )
    }

    /// A problem response of the layer's own, as recorded.
    fn problem(status: StatusCode, title: &str, detail: String) -> Recorded {
        Recorded {
            status: status.as_u16(),
            headers: vec![(
                header::CONTENT_TYPE.as_str().to_owned(),
                Content::Text(PROBLEM_JSON.to_owned()),
            )],
            body: Content::of(&problem_json(status, title, detail)),
        }
    }

    fn into_response<B>(self, replayed: bool) -> Response<LayerBody<B>> {
        match self.rebuild() {
            Some(mut response) => {
                if replayed {
                    response
                        .headers_mut()
                        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
                }
                response
            }
            None => {
                tracing::error!("a recorded response of operation `http` is damaged");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Recorded response damaged",
                    "the response recorded for this Idempotency-Key cannot be read back",
                )
            }
        }
    }

    fn rebuild<B>(self) -> Option<Response<LayerBody<B>>> {
        let mut response = Response::new(Either::Left(Full::new(Bytes::from(
            self.body.into_bytes()?,
        ))));
        *response.status_mut() = StatusCode::from_u16(self.status).ok()?;
        for (name, value) in self.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            let value = HeaderValue::from_bytes(&value.into_bytes()?).ok()?;
            response.headers_mut().append(name, value);
        }
        Some(response)
    }
}

/// The operation a guarded request is a call of.
struct HttpCall;

impl Operation for HttpCall {
    const NAME: &'static str = OPERATION;
    const KIND: Kind = Kind::Idempotent;
    const OPTIONS: Options = Options {
        keying: Keying::Explicit,
        in_flight: InFlight::Reject,
        ..Options::DEFAULT
    };
    type Output = Recorded;
    type Error = Failure;
}

/// Why a guarded request got no recorded response.
#[derive(Debug)]
enum Failure {
    /// The runtime answered (key reuse, in flight, store outage, ...).
    Tempox(Error),
    /// A response `record_if` leaves out (a `5xx`, `408`, `429`, ...), an
    /// error of the inner service, or a panic: passed on as it was.
    NotRecorded,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Tempox(e)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Tempox(e) => e.fmt(f),
            Failure::NotRecorded => f.write_str("the handler failed; its response is not recorded"),
        }
    }
}

/// How long a client is told to wait before retrying a `409` or `503`.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl Failure {
    /// The answer to the client who sent `key` (as sent: a scope is the
    /// server's business).
    fn into_response<B>(self, key: &str) -> Response<LayerBody<B>> {
        let e = match self {
            Failure::Tempox(e) => e,
            // Only answered when nothing was passed on, which cannot happen.
            Failure::NotRecorded => {
                return problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Handler failed",
                    "the handler failed",
                );
            }
        };
        let (status, title, detail) = match &e {
            Error::KeyReuse { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency-Key reused",
                format!(
                    "the Idempotency-Key `{key}` was used for another request (method, path, query or body differ); use a new key for a new request"
                ),
            ),
            Error::InFlight { .. } => (
                StatusCode::CONFLICT,
                "Request in progress",
                format!(
                    "a request with the Idempotency-Key `{key}` is still being processed; retry it later to get its response"
                ),
            ),
            e if e.is_retryable() => {
                tracing::warn!(error = %e, "idempotency record unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Idempotency store unavailable",
                    "the request's idempotency record cannot be read or written now; retry it later"
                        .to_owned(),
                )
            }
            e => {
                tracing::error!(error = %e, "idempotency record failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Idempotency record failed",
                    "the request's idempotency record cannot be used".to_owned(),
                )
            }
        };
        let response = problem(status, title, detail);
        if status == StatusCode::CONFLICT || status == StatusCode::SERVICE_UNAVAILABLE {
            retry_later(response)
        } else {
            response
        }
    }
}

const PROBLEM_JSON: &str = "application/problem+json";

/// The body of an `application/problem+json` response (RFC 9457).
fn problem_json(status: StatusCode, title: &str, detail: String) -> Bytes {
    #[derive(Serialize)]
    struct Problem<'a> {
        title: &'a str,
        status: u16,
        detail: String,
    }
    let problem = Problem {
        title,
        status: status.as_u16(),
        detail,
    };
    // Strings and a number: serializing cannot fail.
    Bytes::from(serde_json::to_vec(&problem).unwrap_or_default())
}

/// `response` with the `Retry-After` of a `409` or `503`.
fn retry_later<B>(mut response: Response<B>) -> Response<B> {
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(RETRY_AFTER.as_secs()),
    );
    response
}

/// An `application/problem+json` response of the layer's own.
fn problem<B>(
    status: StatusCode,
    title: &str,
    detail: impl Into<String>,
) -> Response<LayerBody<B>> {
    let body = problem_json(status, title, detail.into());
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(value: &'static str) -> Result<Option<Key>, String> {
        let mut headers = HeaderMap::new();
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static(value));
        read_key(&headers)
    }

    #[test]
    fn keys_are_read_bare_or_quoted() {
        assert_eq!(key_of("abc-1").unwrap().unwrap().as_str(), "abc-1");
        assert_eq!(key_of("\"abc-1\"").unwrap().unwrap().as_str(), "abc-1");
        assert_eq!(
            key_of(r#""a\"b\\c""#).unwrap().unwrap().as_str(),
            r#"a"b\c"#
        );
        assert_eq!(read_key(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn malformed_keys_say_what_is_wrong() {
        let err = |v| key_of(v).unwrap_err();
        assert!(
            err("\"abc").contains("no closing quote"),
            "{}",
            err("\"abc")
        );
        assert!(err("\"a\"b").contains("after its closing quote"));
        assert!(err(r#""a\nb""#).contains("backslash"));
        assert!(err("\"\"").contains("empty"), "{}", err("\"\""));
        let long = Box::leak("k".repeat(Key::MAX_LEN + 1).into_boxed_str());
        assert!(err(long).contains("bytes long"));
        let mut two = HeaderMap::new();
        two.append(IDEMPOTENCY_KEY, HeaderValue::from_static("a"));
        two.append(IDEMPOTENCY_KEY, HeaderValue::from_static("b"));
        assert!(read_key(&two).unwrap_err().contains("more than one"));
        let mut bytes = HeaderMap::new();
        bytes.insert(
            IDEMPOTENCY_KEY,
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert!(read_key(&bytes).unwrap_err().contains("printable ASCII"));
    }

    #[test]
    fn keys_are_at_most_255_bytes() {
        let at_most = Box::leak("k".repeat(MAX_KEY).into_boxed_str());
        assert_eq!(key_of(at_most).unwrap().unwrap().as_str().len(), 255);
        let over = Box::leak("k".repeat(MAX_KEY + 1).into_boxed_str());
        assert!(key_of(over).unwrap_err().contains("256 bytes long"));
    }

    #[test]
    fn scopes_never_meet() {
        let key = Key::new("k".repeat(MAX_KEY)).unwrap();
        let short = |scope: &str| scoped(scope, &Key::new("k").unwrap()).unwrap();
        assert_eq!(short("acct_1").as_str(), "acct_1/k");
        assert_eq!(short("a/b%#").as_str(), "a%2Fb%25%23/k");
        // Long or unprintable scopes are hashed: `#` and 63 hex digits.
        for scope in ["x".repeat(65), "tab\there".to_owned()] {
            let hashed = scoped(&scope, &key).unwrap();
            let (head, rest) = hashed.as_str().split_once('/').unwrap();
            assert!(head.starts_with('#') && head.len() == 64, "{head}");
            assert_eq!(rest, key.as_str());
        }
        assert_ne!(
            scoped(&"x".repeat(65), &key).unwrap(),
            scoped(&"y".repeat(65), &key).unwrap()
        );
        // A scope that looks like a hash is escaped (or, being long, hashed
        // itself), so it never reads as the hash it looks like.
        assert_eq!(short("#abc").as_str(), "%23abc/k");
        let lookalike = format!("#{}", "0".repeat(63));
        assert_ne!(short(&lookalike).as_str(), format!("{lookalike}/k"));
    }

    #[test]
    fn content_round_trips_text_and_bytes() {
        for bytes in [&b"plain text"[..], b"", b"\x00\xff\x10binary"] {
            let json = serde_json::to_string(&Content::of(bytes)).unwrap();
            let back: Content = serde_json::from_str(&json).unwrap();
            assert_eq!(back.into_bytes().unwrap(), bytes, "{json}");
        }
        assert_eq!(
            serde_json::to_string(&Content::of(b"\xff")).unwrap(),
            r#"{"hex":"ff"}"#
        );
        assert!(Content::Binary { hex: "f".into() }.into_bytes().is_none());
        assert!(Content::Binary { hex: "zz".into() }.into_bytes().is_none());
    }
}
