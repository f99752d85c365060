//! What `IdempotencyLayer` adds to a request, on `MemoryStore`: the same
//! handler called as a bare tower service and behind the layer, with a new
//! `Idempotency-Key` (claim, run, record the response) and with one already
//! recorded (replay).
//!
//! ```text
//! cargo bench --features http --bench http
//! ```
//! Read the figures as differences from `bare` in the same run.
#![allow(missing_docs)] // `criterion_group!` generates undocumented items

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tempox::Runtime;
use tempox::http::IdempotencyLayer;
use tempox::store::MemoryStore;
use tower::{Layer, ServiceExt};

const BODY: &[u8] = br#"{"amount":250,"currency":"eur"}"#;

async fn handler<B>(_: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(br#"{"payment":"pm_1"}"#)));
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

fn request(key: &str) -> Request<Full<Bytes>> {
    match Request::post("/payments")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY)))
    {
        Ok(request) => request,
        Err(e) => panic!("request: {e}"),
    }
}

fn http(c: &mut Criterion) {
    let tokio = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(t) => t,
        Err(e) => panic!("tokio: {e}"),
    };
    let runtime = match Runtime::builder().store(MemoryStore::new()).build() {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let bare = tower::service_fn(handler::<Full<Bytes>>);
    let guarded = IdempotencyLayer::new(runtime).layer(tower::service_fn(handler));
    let mut group = c.benchmark_group("request");
    group.measurement_time(Duration::from_secs(4));

    group.bench_function("bare", |b| {
        b.to_async(&tokio).iter_custom(|iters| async move {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(bare.oneshot(request("k")).await.ok());
            }
            start.elapsed()
        });
    });

    let mut fresh = 0u64;
    group.bench_function("guarded_fresh_key", |b| {
        b.to_async(&tokio).iter_custom(|iters| {
            let guarded = guarded.clone();
            let first = fresh;
            fresh += iters;
            async move {
                let keys: Vec<String> =
                    (first..first + iters).map(|i| format!("pay-{i}")).collect();
                let start = Instant::now();
                for key in &keys {
                    black_box(guarded.clone().oneshot(request(key)).await.ok());
                }
                start.elapsed()
            }
        });
    });

    group.bench_function("guarded_replay", |b| {
        b.to_async(&tokio).iter_custom(|iters| {
            let guarded = guarded.clone();
            async move {
                let first = guarded.clone().oneshot(request("replayed")).await;
                assert!(first.is_ok_and(|r| r.status() == StatusCode::CREATED));
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(guarded.clone().oneshot(request("replayed")).await.ok());
                }
                start.elapsed()
            }
        });
    });
    group.finish();
}

criterion_group!(benches, http);
criterion_main!(benches);
