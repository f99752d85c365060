//! The `Idempotency-Key` layer (`tempox::http`) around a handler that counts
//! its runs: on a real SQLite file, on a real redis-server that is killed and
//! restarted, and inside an axum server on a loopback port.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../support/mod.rs"]
#[macro_use]
mod support;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use tempox::http::{IdempotencyLayer, LayerBody};
use tempox::store::{Query, RedisStore, SqliteStore, Store};
use tempox::{Key, RecordId, Runtime, Status};
use tokio::sync::oneshot;
use tower::{Layer, Service, ServiceExt};

use support::Outage;
use support::redis::RedisServer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The handler's response body. (Its error is not a `BoxError`: rustc then
/// cannot prove the futures that read it `Send`.)
type HandlerBody = BoxBody<Bytes, std::io::Error>;
/// What the guarded service answers.
type Answered = Response<LayerBody<HandlerBody>>;

/// What one run of the handler does.
enum Plan {
    /// `201 Created`, with the run's number as the order id.
    Created,
    /// `500` with a body of its own.
    ServerError,
    /// The service fails (no response).
    Fail,
    /// `201` with a body of this many bytes.
    Large(usize),
    /// The request's body back, as bytes, with a header that is not UTF-8.
    Echo,
    /// `201` whose body fails after its first bytes.
    BrokenBody,
    /// Panics.
    Panic,
    /// Says it started, then waits for the signal before answering with
    /// this status.
    Wait(oneshot::Sender<()>, oneshot::Receiver<()>, StatusCode),
}

/// A response body that fails as a stream from a database might, with words
/// a client must not see.
struct Broken(bool);

impl http_body::Body for Broken {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.0 {
            return Poll::Ready(Some(Err(std::io::Error::other(
                "pg: password authentication failed for 10.0.0.5:5432",
            ))));
        }
        self.0 = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"[{\"row\":1}")))))
    }
}

fn full(bytes: impl Into<Bytes>) -> HandlerBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The handler: runs its plans in order (`Created` once they are used up).
#[derive(Clone, Default)]
struct Handler {
    runs: Arc<AtomicUsize>,
    plans: Arc<Mutex<VecDeque<Plan>>>,
}

impl Handler {
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn then(&self, plan: Plan) {
        self.plans.lock().unwrap().push_back(plan);
    }

    /// The next run says it started, then waits for the signal before
    /// answering with `status`: (its "started", the signal).
    fn wait_then(&self, status: StatusCode) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (started, has_started) = oneshot::channel();
        let (go, wait) = oneshot::channel();
        self.then(Plan::Wait(started, wait, status));
        (has_started, go)
    }

    async fn serve(
        self,
        request: Request<LayerBody<Full<Bytes>>>,
    ) -> Result<Response<HandlerBody>, BoxError> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let plan = self.plans.lock().unwrap().pop_front();
        let body = request.into_body().collect().await?.to_bytes();
        let created = |body: Vec<u8>| {
            Response::builder()
                .status(StatusCode::CREATED)
                .header("content-type", "application/json")
                .header("x-order-id", run.to_string())
                .header("link", "</a>")
                .header("link", "</b>")
                .header("set-cookie", "session=first-client")
                .body(full(body))
                .unwrap()
        };
        let text = String::from_utf8_lossy(&body).into_owned();
        match plan.unwrap_or(Plan::Created) {
            Plan::Created => Ok(created(
                serde_json::to_vec(&serde_json::json!({ "order": run, "request": text })).unwrap(),
            )),
            Plan::ServerError => Ok(Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(full("upstream down"))
                .unwrap()),
            Plan::Fail => Err("the handler's connection broke".into()),
            Plan::Large(n) => Ok(created(vec![b'x'; n])),
            Plan::Echo => {
                let mut response = created(body.to_vec());
                response
                    .headers_mut()
                    .insert("x-raw", HeaderValue::from_bytes(b"caf\xe9 \xff").unwrap());
                Ok(response)
            }
            Plan::Panic => panic!("the handler's bug"),
            Plan::BrokenBody => Ok(Response::builder()
                .status(StatusCode::CREATED)
                .body(Broken(false).boxed())
                .unwrap()),
            Plan::Wait(started, go, status) => {
                let _ = started.send(());
                let _ = go.await;
                let mut response =
                    created(serde_json::to_vec(&serde_json::json!({ "order": run })).unwrap());
                *response.status_mut() = status;
                Ok(response)
            }
        }
    }
}

/// The handler behind `layer`, as a service.
fn guarded(
    layer: &IdempotencyLayer,
    handler: &Handler,
) -> impl Service<Request<Full<Bytes>>, Response = Answered, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    let handler = handler.clone();
    layer.layer(tower::service_fn(move |request| {
        handler.clone().serve(request)
    }))
}

/// What came back: status, headers and the whole body.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .map(HeaderValue::as_bytes)
            == Some(b"true")
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The `detail` of a problem response, checked to be one.
    fn problem(&self) -> String {
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "{:?}",
            self.body
        );
        let json = self.json();
        assert_eq!(json["status"], self.status.as_u16());
        json["detail"].as_str().unwrap().to_owned()
    }
}

fn request(
    method: Method,
    path: &str,
    keys: &[&str],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(path);
    for key in keys {
        builder = builder.header("idempotency-key", *key);
    }
    builder.body(Full::new(body.into())).unwrap()
}

async fn send<S>(service: &S, request: Request<Full<Bytes>>) -> Result<Answer, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Answered, Error = BoxError> + Clone,
{
    let response = service.clone().oneshot(request).await?;
    let (parts, body) = response.into_parts();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    })
}

async fn post<S>(service: &S, key: &str, body: &'static str) -> Answer
where
    S: Service<Request<Full<Bytes>>, Response = Answered, Error = BoxError> + Clone,
{
    send(service, request(Method::POST, "/orders", &[key], body))
        .await
        .unwrap()
}

fn sqlite_runtime(path: &Path) -> Runtime {
    let store = SqliteStore::open(path).unwrap();
    Runtime::builder().store(store).build().unwrap()
}

fn http_id(key: &str) -> RecordId {
    RecordId::new("http", &Key::new(key).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_the_first_response_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("http.db");
    let handler = Handler::default();
    let runtime = sqlite_runtime(&path);
    let service = guarded(&IdempotencyLayer::new(runtime.clone()), &handler);

    let first = post(&service, "order-1", r#"{"sku":"tea"}"#).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed());
    assert_eq!(first.json()["order"], 1);
    assert_eq!(first.json()["request"], r#"{"sku":"tea"}"#);

    let again = post(&service, "order-1", r#"{"sku":"tea"}"#).await;
    assert_eq!(handler.runs(), 1, "the retry must not run the handler");
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["x-order-id"], "1");
    assert_eq!(again.headers["content-type"], "application/json");
    let links: Vec<_> = again.headers.get_all("link").iter().collect();
    assert_eq!(links, ["</a>", "</b>"], "repeated headers keep their order");
    assert_eq!(first.headers["set-cookie"], "session=first-client");
    assert!(
        !again.headers.contains_key("set-cookie"),
        "cookies are about one client: not replayed"
    );
    // The draft's quoted form names the same key.
    let quoted = post(&service, "\"order-1\"", r#"{"sku":"tea"}"#).await;
    assert!(quoted.replayed());

    // The record: a completed call of operation `http`, its request as
    // input with the body as a hash only.
    let record = runtime
        .store()
        .get(&http_id("order-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, Status::Completed);
    let input: serde_json::Value = serde_json::from_slice(&record.input).unwrap();
    assert_eq!(input["method"], "POST");
    assert_eq!(input["target"], "/orders");
    assert_eq!(input["body_length"], 13);
    assert_eq!(input["body_blake3"].as_str().unwrap().len(), 64);
    assert!(!String::from_utf8_lossy(&record.input).contains("tea"));

    // A new process on the same file replays it too.
    drop(service);
    drop(runtime);
    let service = guarded(&IdempotencyLayer::new(sqlite_runtime(&path)), &handler);
    let after = post(&service, "order-1", r#"{"sku":"tea"}"#).await;
    assert!(after.replayed());
    assert_eq!(after.body, first.body);
    assert_eq!(handler.runs(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_requests_it_cannot_guard_and_passes_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = sqlite_runtime(&dir.path().join("http.db"));
    let handler = Handler::default();
    let service = guarded(&IdempotencyLayer::new(runtime.clone()), &handler);

    let missing = send(&service, request(Method::POST, "/orders", &[], "{}"))
        .await
        .unwrap();
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert!(missing.problem().contains("need an Idempotency-Key header"));

    for (keys, why) in [
        (&["\"open"][..], "no closing quote"),
        (&["\"a\" b"], "after its closing quote"),
        (&["\"\""], "the key is empty"),
        (&["a", "b"], "more than one Idempotency-Key"),
    ] {
        let answer = send(&service, request(Method::POST, "/orders", keys, "{}"))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{keys:?}");
        let detail = answer.problem();
        assert!(detail.contains(why), "{keys:?}: {detail}");
    }
    let long = "k".repeat(Key::MAX_LEN + 1);
    let answer = send(&service, request(Method::POST, "/orders", &[&long], "{}"))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.problem().contains("keys are at most 255 bytes"));
    assert_eq!(
        handler.runs(),
        0,
        "a refused request must not run the handler"
    );

    // Methods that are not guarded pass, with or without a key.
    for keys in [&[][..], &["order-9"]] {
        let get = send(&service, request(Method::GET, "/orders", keys, ""))
            .await
            .unwrap();
        assert_eq!(get.status, StatusCode::CREATED);
        assert!(!get.replayed());
    }
    assert_eq!(handler.runs(), 2);

    // Optional: a POST without a key passes, unrecorded.
    let optional = guarded(&IdempotencyLayer::new(runtime.clone()).optional(), &handler);
    for _ in 0..2 {
        let answer = send(&optional, request(Method::POST, "/orders", &[], "{}"))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    assert_eq!(handler.runs(), 4);
    let recorded = runtime.store().list(&Query::default()).await.unwrap();
    assert!(recorded.is_empty(), "{recorded:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_request_is_422() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = sqlite_runtime(&dir.path().join("http.db"));
    let handler = Handler::default();
    let layer = IdempotencyLayer::new(runtime).methods([Method::POST, Method::PUT]);
    let service = guarded(&layer, &handler);

    assert_eq!(post(&service, "k", "a").await.status, StatusCode::CREATED);
    for other in [
        request(Method::POST, "/orders", &["k"], "b"),
        request(Method::POST, "/orders?dry_run=1", &["k"], "a"),
        request(Method::PUT, "/orders", &["k"], "a"),
    ] {
        let answer = send(&service, other).await.unwrap();
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
        let detail = answer.problem();
        assert!(
            detail.contains("`k` was used for another request"),
            "{detail}"
        );
    }
    // PATCH is not guarded by this layer: it passes.
    let patch = send(&service, request(Method::PATCH, "/orders", &["k"], "b"))
        .await
        .unwrap();
    assert_eq!(patch.status, StatusCode::CREATED);
    assert_eq!(handler.runs(), 2);
    assert!(post(&service, "k", "a").await.replayed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_while_the_first_runs_is_409_then_replays() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = sqlite_runtime(&dir.path().join("http.db"));
    let handler = Handler::default();
    let service = guarded(&IdempotencyLayer::new(runtime), &handler);
    let (has_started, go) = handler.wait_then(StatusCode::CREATED);

    let first = tokio::spawn({
        let service = service.clone();
        async move { post(&service, "slow", "{}").await }
    });
    has_started.await.unwrap();
    let duplicate = post(&service, "slow", "{}").await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    assert_eq!(duplicate.headers["retry-after"], "1");
    assert!(duplicate.problem().contains("still being processed"));

    go.send(()).unwrap();
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    let later = post(&service, "slow", "{}").await;
    assert!(later.replayed());
    assert_eq!(later.body, first.body);
    assert_eq!(handler.runs(), 1);
}

/// Invariant 1 through HTTP: of many simultaneous requests with one key,
/// the handler runs once; every other gets its response replayed or `409`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_simultaneous_requests_with_one_key_run_the_handler_once() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = sqlite_runtime(&dir.path().join("http.db"));
    let handler = Handler::default();
    let service = guarded(&IdempotencyLayer::new(runtime), &handler);
    let (has_started, go) = handler.wait_then(StatusCode::CREATED);

    let requests: Vec<_> = (0..50)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { post(&service, "once", "{}").await })
        })
        .collect();
    has_started.await.unwrap();
    go.send(()).unwrap();
    let mut first = 0;
    for request in requests {
        let answer = request.await.unwrap();
        match answer.status {
            StatusCode::CREATED if answer.replayed() => assert_eq!(answer.json()["order"], 1),
            StatusCode::CREATED => first += 1,
            StatusCode::CONFLICT => assert!(answer.problem().contains("still being processed")),
            other => panic!("unexpected {other}: {:?}", answer.body),
        }
    }
    assert_eq!(first, 1, "one request ran the handler");
    assert_eq!(handler.runs(), 1);
    assert!(post(&service, "once", "{}").await.replayed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_failures_are_passed_on_and_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = sqlite_runtime(&dir.path().join("http.db"));
    let handler = Handler::default();
    let service = guarded(&IdempotencyLayer::new(runtime.clone()), &handler);

    handler.then(Plan::ServerError);
    let failed = post(&service, "retry-me", "{}").await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    assert_eq!(failed.body, "upstream down");
    assert!(!failed.replayed());
    let record = runtime
        .store()
        .get(&http_id("retry-me"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, Status::Released, "a 5xx frees its key");

    let ok = post(&service, "retry-me", "{}").await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert_eq!(ok.json()["order"], 2);
    assert_eq!(handler.runs(), 2);

    handler.then(Plan::Fail);
    let error = send(
        &service,
        request(Method::POST, "/orders", &["broken"], "{}"),
    )
    .await
    .expect_err("the service's error is passed on");
    assert_eq!(error.to_string(), "the handler's connection broke");
    let record = runtime
        .store()
        .get(&http_id("broken"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, Status::Released, "a failure frees its key");
    let ok = post(&service, "broken", "{}").await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert!(post(&service, "broken", "{}").await.replayed());
    assert_eq!(handler.runs(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = sqlite_runtime(&dir.path().join("http.db"));
    let handler = Handler::default();
    let layer = IdempotencyLayer::new(runtime.clone())
        .max_request_body(16)
        .max_response_body(64);
    let service = guarded(&layer, &handler);

    let big = post(&service, "big-request", "seventeen bytes!!").await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(big.problem().contains("longer than the 16 bytes"));
    assert_eq!(handler.runs(), 0);
    assert!(
        runtime
            .store()
            .get(&http_id("big-request"))
            .await
            .unwrap()
            .is_none()
    );
    let mut declared = request(Method::POST, "/orders", &["declared"], "{}");
    declared
        .headers_mut()
        .insert("content-length", HeaderValue::from_static("100000"));
    let answer = send(&service, declared).await.unwrap();
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(handler.runs(), 0);
    assert_eq!(
        post(&service, "fits", "sixteen bytes!!!").await.status,
        StatusCode::CREATED
    );

    // The handler ran, so its unrecordable response is answered by a
    // recorded 500 that retries replay, instead of running it again.
    handler.then(Plan::Large(65));
    let large = post(&service, "big-response", "{}").await;
    assert_eq!(large.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        large
            .problem()
            .contains("longer than the 64 bytes this endpoint records")
    );
    let again = post(&service, "big-response", "{}").await;
    assert!(again.replayed());
    assert_eq!(again.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(handler.runs(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_bodies_and_header_values_replay_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = sqlite_runtime(&dir.path().join("http.db"));
    let handler = Handler::default();
    let service = guarded(&IdempotencyLayer::new(runtime), &handler);
    let bytes: Vec<u8> = (0..=255).collect();

    handler.then(Plan::Echo);
    let first = send(
        &service,
        request(Method::POST, "/blobs", &["blob"], bytes.clone()),
    )
    .await
    .unwrap();
    assert_eq!(first.body, bytes);
    let again = send(
        &service,
        request(Method::POST, "/blobs", &["blob"], bytes.clone()),
    )
    .await
    .unwrap();
    assert!(again.replayed());
    assert_eq!(again.body, bytes);
    assert_eq!(again.headers["x-raw"].as_bytes(), b"caf\xe9 \xff");
    assert_eq!(handler.runs(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_503_and_runs_nothing() {
    let mut server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let store = RedisStore::builder(&server.url())
        .response_timeout(Duration::from_secs(2))
        .connection_timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    let runtime = Runtime::builder().store(store).build().unwrap();
    let handler = Handler::default();
    let service = guarded(&IdempotencyLayer::new(runtime), &handler);
    assert_eq!(
        post(&service, "before", "{}").await.status,
        StatusCode::CREATED
    );

    let mut server = tokio::task::spawn_blocking(move || {
        server.kill();
        server
    })
    .await
    .unwrap();
    let down = post(&service, "during", "{}").await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.headers["retry-after"], "1");
    let detail = down.problem();
    assert!(detail.contains("retry it later"), "{detail}");
    // The store's own words (its address, its error) stay in the log.
    let whole = format!("{:?} {}", down.headers, String::from_utf8_lossy(&down.body));
    for inside in ["127.0.0.1", &server.port().to_string(), "redis", "refused"] {
        assert!(
            !whole.to_lowercase().contains(inside),
            "{inside} in {whole}"
        );
    }
    assert_eq!(
        handler.runs(),
        1,
        "no handler runs while its claim cannot be written"
    );

    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    // A client retries after Retry-After; the first call after the restart
    // may still meet the broken connection.
    let mut attempts = 0;
    let up = loop {
        let answer = post(&service, "during", "{}").await;
        attempts += 1;
        if answer.status != StatusCode::SERVICE_UNAVAILABLE || attempts == 100 {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(up.status, StatusCode::CREATED, "after {attempts} attempts");
    assert!(!up.replayed());
    assert!(
        post(&service, "before", "{}").await.replayed(),
        "nothing recorded was lost"
    );
    assert!(post(&service, "during", "{}").await.replayed());
    assert_eq!(handler.runs(), 2);
    drop(server);
}

/// Waits (at most 10 s) until the record of `key` has `status`.
async fn record_reaches(runtime: &Runtime, key: &str, status: Status) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let record = runtime.store().get(&http_id(key)).await.unwrap();
        if record.as_ref().map(|r| r.status) == Some(status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key}: {record:?}, never {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_scoped_by_what_the_request_says() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = sqlite_runtime(&dir.path().join("http.db"));
    let handler = Handler::default();
    let layer = IdempotencyLayer::new(runtime.clone()).key_scope(|request| {
        let account = request.headers.get("x-account")?;
        account.to_str().ok().map(str::to_owned)
    });
    let service = guarded(&layer, &handler);
    let as_account = |account: &str| {
        let mut request = request(Method::POST, "/orders", &["k-1"], "{}");
        request
            .headers_mut()
            .insert("x-account", HeaderValue::from_str(account).unwrap());
        request
    };

    let alice = send(&service, as_account("alice")).await.unwrap();
    let mallory = send(&service, as_account("mallory")).await.unwrap();
    assert_eq!(alice.json()["order"], 1);
    assert_eq!(
        mallory.json()["order"],
        2,
        "another scope's key is not shared"
    );
    assert!(!mallory.replayed());
    let again = send(&service, as_account("alice")).await.unwrap();
    assert!(again.replayed());
    assert_eq!(again.body, alice.body);
    // `/` in a scope cannot make it meet another scope's key.
    let slashed = send(&service, as_account("a/k-1")).await.unwrap();
    assert!(!slashed.replayed());
    assert_eq!(handler.runs(), 3);
    for key in ["alice/k-1", "mallory/k-1", "a%2Fk-1/k-1"] {
        record_reaches(&runtime, key, Status::Completed).await;
    }
    // Answers name the key the client sent, not its scope.
    let mut other = as_account("alice");
    *other.body_mut() = Full::new(Bytes::from_static(b"another"));
    let reused = send(&service, other).await.unwrap();
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let detail = reused.problem();
    assert!(
        detail.contains("`k-1`") && !detail.contains("alice"),
        "{detail}"
    );

    // Long scopes go in as a hash: any key up to 255 bytes fits, and two
    // long scopes stay apart; so do scopes with `#`, which marks a hash.
    let long_key = "k".repeat(255);
    for account in ["a".repeat(300), "b".repeat(300), "#x".into(), "%23x".into()] {
        let mut request = as_account(&account);
        request
            .headers_mut()
            .insert("idempotency-key", HeaderValue::from_str(&long_key).unwrap());
        let answer = send(&service, request).await.unwrap();
        assert_eq!(answer.status, StatusCode::CREATED, "{account}");
        assert!(!answer.replayed(), "{account}");
    }
    assert_eq!(handler.runs(), 7);

    // A request whose scope cannot be read is refused: the layer that sets
    // it must run first. Nothing is recorded, nothing runs.
    let unscoped = post(&service, "k-1", "{}").await;
    assert_eq!(unscoped.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        unscoped
            .problem()
            .contains("could not tell whose key this is")
    );
    assert_eq!(handler.runs(), 7);
    let records = runtime.store().list(&Query::default()).await.unwrap();
    assert_eq!(records.len(), 7, "{records:?}");
}

/// A scoped and an unscoped layer on one store never share a record: the
/// unscoped key `acct_1/k` is not the scoped (`acct_1`, `k`); and layers
/// with names of their own keep their keys apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_scoped_unscoped_and_named_keep_their_keys_apart() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = sqlite_runtime(&dir.path().join("http.db"));
    let handler = Handler::default();
    let plain = guarded(&IdempotencyLayer::new(runtime.clone()), &handler);
    let scoped_layer = IdempotencyLayer::new(runtime.clone()).key_scope(|request| {
        request
            .headers
            .get("x-account")?
            .to_str()
            .ok()
            .map(str::to_owned)
    });
    let scoped = guarded(&scoped_layer, &handler);
    let first = post(&plain, "acct_1/k", "{}").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let mut request = request(Method::POST, "/orders", &["k"], "{}");
    request
        .headers_mut()
        .insert("x-account", HeaderValue::from_static("acct_1"));
    let second = send(&scoped, request).await.unwrap();
    assert_eq!(second.status, StatusCode::CREATED);
    assert!(!second.replayed(), "an unscoped key met a scoped one");
    assert_eq!(handler.runs(), 2);
    for key in ["acct_1%2Fk", "acct_1/k"] {
        record_reaches(&runtime, key, Status::Completed).await;
    }

    // Two APIs, one store, one key: two calls.
    let payments = IdempotencyLayer::new(runtime.clone())
        .name("payments")
        .unwrap();
    let refunds = IdempotencyLayer::new(runtime.clone())
        .name("refunds")
        .unwrap();
    let (payments, refunds) = (guarded(&payments, &handler), guarded(&refunds, &handler));
    assert!(!post(&payments, "same", "{}").await.replayed());
    assert!(!post(&refunds, "same", "{}").await.replayed());
    assert!(post(&payments, "same", "{}").await.replayed());
    assert_eq!(handler.runs(), 4);
    for op in ["payments", "refunds"] {
        let id = RecordId::new(op, &Key::new("same").unwrap());
        assert_eq!(
            runtime.record(&id).await.unwrap().unwrap().status,
            Status::Completed
        );
    }
    for bad in ["", "a/b", "a b"] {
        match IdempotencyLayer::new(runtime.clone()).name(bad) {
            Err(tempox::Error::Config {
                setting: "name", ..
            }) => {}
            other => panic!("{bad:?}: {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_recorded_follows_record_if() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = sqlite_runtime(&dir.path().join("http.db"));
    let handler = Handler::default();
    let service = guarded(&IdempotencyLayer::new(runtime.clone()), &handler);

    // 408 and 429 say "try again": by default not recorded.
    for (key, status) in [
        ("timeout", StatusCode::REQUEST_TIMEOUT),
        ("limited", StatusCode::TOO_MANY_REQUESTS),
    ] {
        let (has_started, go) = handler.wait_then(status);
        go.send(()).unwrap();
        let first = post(&service, key, "{}").await;
        has_started.await.unwrap();
        assert_eq!(first.status, status);
        let retry = post(&service, key, "{}").await;
        assert_eq!(retry.status, StatusCode::CREATED, "{key}");
        assert!(!retry.replayed());
    }
    assert_eq!(handler.runs(), 4);

    // Only 2xx: then a 4xx frees the key too.
    let strict = guarded(
        &IdempotencyLayer::new(runtime).record_if(|status| status.is_success()),
        &handler,
    );
    let (_has_started, go) = handler.wait_then(StatusCode::UNPROCESSABLE_ENTITY);
    go.send(()).unwrap();
    assert_eq!(
        post(&strict, "invalid", "{}").await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        post(&strict, "invalid", "{}").await.status,
        StatusCode::CREATED
    );
    assert!(post(&strict, "invalid", "{}").await.replayed());
    assert_eq!(handler.runs(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_still_gets_its_outcome_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = sqlite_runtime(&dir.path().join("http.db"));
    let handler = Handler::default();
    let service = guarded(&IdempotencyLayer::new(runtime.clone()), &handler);
    let (has_started, go) = handler.wait_then(StatusCode::CREATED);

    let client = tokio::spawn({
        let service = service.clone();
        async move { post(&service, "gone", "{}").await }
    });
    has_started.await.unwrap();
    // The client hangs up: the server drops its request's future.
    client.abort();
    assert!(client.await.unwrap_err().is_cancelled());
    go.send(()).unwrap();

    record_reaches(&runtime, "gone", Status::Completed).await;
    let retry = post(&service, "gone", "{}").await;
    assert!(retry.replayed());
    assert_eq!(retry.json()["order"], 1);
    assert_eq!(handler.runs(), 1);
}

/// A handler whose client went away still runs; the layer's `handlers()`
/// counts it and says when it finished, its outcome recorded by then, so a
/// server shutting down can wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_whose_client_went_away_can_be_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = sqlite_runtime(&dir.path().join("http.db"));
    let handler = Handler::default();
    let layer = IdempotencyLayer::new(runtime.clone());
    let handlers = layer.handlers();
    let service = guarded(&layer, &handler);
    // None running: finished at once.
    handlers.finished().await;
    let (has_started, go) = handler.wait_then(StatusCode::CREATED);

    let client = tokio::spawn({
        let service = service.clone();
        async move { post(&service, "stopping", "{}").await }
    });
    has_started.await.unwrap();
    client.abort();
    assert!(client.await.unwrap_err().is_cancelled());
    assert_eq!(handlers.running(), 1);
    let waiting = tokio::spawn({
        let handlers = handlers.clone();
        async move { handlers.finished().await }
    });
    // Not finished while the handler runs.
    let early = tokio::time::timeout(Duration::from_millis(100), handlers.finished()).await;
    assert!(early.is_err() && !waiting.is_finished());

    go.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handlers.running(), 0);
    let record = runtime.store().get(&http_id("stopping")).await.unwrap();
    assert_eq!(record.map(|r| r.status), Some(Status::Completed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handlers_answer_survives_a_failed_record_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Outage::new(SqliteStore::open(dir.path().join("http.db")).unwrap());
    let runtime = Runtime::builder().store(store.clone()).build().unwrap();
    let handler = Handler::default();
    let service = guarded(&IdempotencyLayer::new(runtime.clone()), &handler);

    for (key, status) in [
        ("created", StatusCode::CREATED),
        ("bad-gateway", StatusCode::BAD_GATEWAY),
    ] {
        let (has_started, go) = handler.wait_then(status);
        let client = tokio::spawn({
            let service = service.clone();
            async move { post(&service, key, "{}").await }
        });
        has_started.await.unwrap();
        // The store goes down after the claim, before the outcome.
        store.set_down(true);
        go.send(()).unwrap();
        let answer = client.await.unwrap();
        store.set_down(false);
        assert_eq!(answer.status, status, "the handler's own answer, not a 503");
        let record = store.inner.get(&http_id(key)).await.unwrap().unwrap();
        assert_eq!(
            record.status,
            Status::Pending,
            "{key}: the outcome was not written"
        );
    }
    assert_eq!(handler.runs(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_fails_midway_is_a_recorded_500_that_says_nothing_inside() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = sqlite_runtime(&dir.path().join("http.db"));
    let handler = Handler::default();
    let service = guarded(&IdempotencyLayer::new(runtime), &handler);

    handler.then(Plan::BrokenBody);
    let broken = post(&service, "report", "{}").await;
    assert_eq!(broken.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(broken.problem().contains("could not be read whole"));
    let body = String::from_utf8_lossy(&broken.body);
    assert!(
        !body.contains("10.0.0.5") && !body.contains("pg:"),
        "{body}"
    );
    let again = post(&service, "report", "{}").await;
    assert!(again.replayed());
    assert_eq!(again.body, broken.body);
    assert_eq!(handler.runs(), 1, "the handler ran: it does not run again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_frees_its_key_and_the_panic_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = sqlite_runtime(&dir.path().join("http.db"));
    let handler = Handler::default();
    let service = guarded(&IdempotencyLayer::new(runtime.clone()), &handler);

    handler.then(Plan::Panic);
    let panicked = tokio::spawn({
        let service = service.clone();
        async move { post(&service, "bug", "{}").await }
    })
    .await
    .expect_err("the panic reaches the layers outside");
    assert!(panicked.is_panic());
    let record = runtime.store().get(&http_id("bug")).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Released);
    let retry = post(&service, "bug", "{}").await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert!(!retry.replayed());
    assert_eq!(handler.runs(), 2);
}

/// The layer on an axum router, served on a loopback port, called over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_an_axum_router_over_the_network() {
    use axum::Json;
    use axum::routing::post as route_post;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let dir = tempfile::tempdir().unwrap();
    let runtime = sqlite_runtime(&dir.path().join("http.db"));
    let runs = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route(
            "/payments",
            route_post({
                let runs = runs.clone();
                move |Json(body): Json<serde_json::Value>| async move {
                    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    (
                        StatusCode::CREATED,
                        Json(serde_json::json!({ "payment": n, "amount": body["amount"] })),
                    )
                }
            }),
        )
        .route_layer(IdempotencyLayer::new(runtime))
        // Added after the layer: not guarded.
        .route("/health", route_post(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let call = |path: &str, key: Option<&str>| {
        let mut builder = Request::post(format!("http://{address}{path}"))
            .header("content-type", "application/json");
        if let Some(key) = key {
            builder = builder.header("idempotency-key", key);
        }
        let request = builder
            .body(Full::new(Bytes::from_static(br#"{"amount":250}"#)))
            .unwrap();
        let client = client.clone();
        async move {
            let response = client.request(request).await.unwrap();
            let status = response.status();
            let replayed = response.headers().contains_key("idempotent-replayed");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            (status, replayed, json, body)
        }
    };
    let (status, replayed, first, _) = call("/payments", Some("pay-1")).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, false));
    assert_eq!(first, serde_json::json!({"payment": 1, "amount": 250}));
    let (status, replayed, again, _) = call("/payments", Some("pay-1")).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, true));
    assert_eq!(again, first);
    let (status, _, problem, _) = call("/payments", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["title"], "Idempotency-Key missing");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // A route outside the layer takes a POST without a key.
    let (status, _, _, body) = call("/health", None).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
