//! A payments API behind `tempox::http::IdempotencyLayer`, served by axum on a
//! loopback port, and a client that retries the way real clients do: a
//! request sent twice after a timeout, a duplicate sent while the first still
//! runs, a key reused by mistake, a request with no key, and a card network
//! that is down for the first attempt. The card is charged once per payment.
//!
//! ```text
//! cargo run --features http --example http_api
//! ```

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tempox::Runtime;
use tempox::http::IdempotencyLayer;
use tempox::store::{Query, SqliteStore, Store};
use tokio::sync::{Mutex, oneshot};

#[derive(Deserialize)]
struct Payment {
    amount: u64,
    /// How the example makes a request slow, or its first attempt fail.
    #[serde(default)]
    scenario: Option<String>,
}

#[derive(Serialize)]
struct Receipt {
    payment: String,
    amount: u64,
}

/// A handler's "I started" signal, and the signal it then waits for.
type Gate = (oneshot::Sender<()>, oneshot::Receiver<()>);

/// The server's side: the card network's charges, and what the example's
/// scenarios wait on.
#[derive(Clone, Default)]
struct Shop {
    charges: Arc<AtomicUsize>,
    /// The slow payment says it started, then waits for the signal.
    slow: Arc<Mutex<Option<Gate>>>,
    /// Attempts of the payment whose card network is down at first.
    flaky: Arc<AtomicUsize>,
}

async fn pay(
    State(shop): State<Shop>,
    Json(payment): Json<Payment>,
) -> (StatusCode, Json<serde_json::Value>) {
    match payment.scenario.as_deref() {
        Some("slow") => {
            if let Some((started, go)) = shop.slow.lock().await.take() {
                let _ = started.send(());
                let _ = go.await;
            }
        }
        Some("flaky") if shop.flaky.fetch_add(1, Ordering::SeqCst) == 0 => {
            let body = serde_json::json!({ "error": "card network unavailable" });
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
        }
        _ => {}
    }
    let n = shop.charges.fetch_add(1, Ordering::SeqCst) + 1;
    let receipt = Receipt {
        payment: format!("pm_{n}"),
        amount: payment.amount,
    };
    (StatusCode::CREATED, Json(serde_json::json!(receipt)))
}

/// The client's side.
struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    requests: AtomicUsize,
}

impl Api {
    /// Sends one request and prints one line about it.
    async fn post(
        &self,
        key: Option<&str>,
        body: &str,
    ) -> Result<StatusCode, Box<dyn std::error::Error + Send + Sync>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut request = Request::post(format!("{}/payments", self.base))
            .header("content-type", "application/json")
            .header("x-account", "acct_7");
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = self
            .client
            .request(request.body(Full::new(Bytes::from(body.to_owned())))?)
            .await?;
        let status = response.status();
        let replayed = if response.headers().contains_key("idempotent-replayed") {
            " (replayed)"
        } else {
            ""
        };
        let answer = response.into_body().collect().await?.to_bytes();
        println!(
            "    key {:<8} {body:<38} -> {status}{replayed}\n{:>16}{}",
            key.unwrap_or("(none)"),
            "",
            String::from_utf8_lossy(&answer)
        );
        Ok(status)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let path = support::database("tempox-http-api.db", true)?;
    let store = SqliteStore::open(&path)?;
    let runtime = Runtime::builder().store(store.clone()).build()?;

    let shop = Shop::default();
    // Keys per account: the client's account header (in a real API, what
    // its authentication established).
    let layer = IdempotencyLayer::new(runtime).key_scope(|request| {
        let account = request.headers.get("x-account")?;
        account.to_str().ok().map(str::to_owned)
    });
    // Handlers whose client went away, to wait for before the process ends.
    let handlers = layer.handlers();
    let app = Router::new()
        .route("/payments", post(pay))
        .route_layer(layer)
        .with_state(shop.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    println!("payments API on {base}, records in {}\n", path.display());
    let api = Arc::new(Api {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base,
        requests: AtomicUsize::new(0),
    });

    println!("1. a payment, sent again after the client's timeout");
    api.post(Some("pay-1"), r#"{"amount":250}"#).await?;
    api.post(Some("pay-1"), r#"{"amount":250}"#).await?;

    println!("\n2. a duplicate arrives while the first is still running");
    let (started, has_started) = oneshot::channel();
    let (go, wait) = oneshot::channel();
    *shop.slow.lock().await = Some((started, wait));
    let body = r#"{"amount":990,"scenario":"slow"}"#;
    let first = tokio::spawn({
        let api = Arc::clone(&api);
        async move { api.post(Some("pay-2"), body).await }
    });
    has_started.await?;
    api.post(Some("pay-2"), body).await?;
    let _ = go.send(());
    first.await??;
    api.post(Some("pay-2"), body).await?;

    println!("\n3. the client reuses a key for another payment, then forgets the key");
    api.post(Some("pay-1"), r#"{"amount":999}"#).await?;
    api.post(None, r#"{"amount":5}"#).await?;

    println!("\n4. the card network is down for the first attempt: not recorded, the retry runs");
    let body = r#"{"amount":120,"scenario":"flaky"}"#;
    api.post(Some("pay-3"), body).await?;
    api.post(Some("pay-3"), body).await?;
    api.post(Some("pay-3"), body).await?;

    let _ = stop.send(());
    server.await??;
    // The server waited for the requests still connected; a handler whose
    // client went away may still run. Its outcome is recorded once it ends.
    if tokio::time::timeout(Duration::from_secs(30), handlers.finished())
        .await
        .is_err()
    {
        println!("{} handlers still running at exit", handlers.running());
    }

    let query = Query {
        op: Some(tempox::http::OPERATION.into()),
        ..Query::default()
    };
    println!("\nrecords of operation `{}`:", tempox::http::OPERATION);
    for record in store.list(&query).await? {
        println!("    {:<17} {}", record.id.as_str(), record.status);
    }
    println!(
        "\nrequests {}  cards charged {}",
        api.requests.load(Ordering::SeqCst),
        shop.charges.load(Ordering::SeqCst)
    );
    Ok(())
}
