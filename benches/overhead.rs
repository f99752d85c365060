//! What `#[idempotent]` adds to a call, on `MemoryStore`: a bare async fn against
//! the same fn annotated, called with a fresh key (claim + record) and with a
//! key already recorded (replay).
//!
//! ```text
//! cargo bench --bench overhead
//! ```
//! Read the figures as differences from `bare` in the same run.
#![allow(missing_docs)] // `criterion_group!` generates undocumented items

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tempox::store::MemoryStore;
use tempox::{Runtime, idempotent};

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error(transparent)]
    Tempox(#[from] tempox::Error),
}

async fn bare(id: u64) -> Result<u64, BenchError> {
    Ok(black_box(id) * 2)
}

#[idempotent]
async fn wrapped(id: u64) -> Result<u64, BenchError> {
    Ok(black_box(id) * 2)
}

fn runtime() -> Runtime {
    match Runtime::builder().store(MemoryStore::new()).build() {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    }
}

fn overhead(c: &mut Criterion) {
    let tokio = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(t) => t,
        Err(e) => panic!("tokio: {e}"),
    };
    let mut group = c.benchmark_group("call");
    group.measurement_time(Duration::from_secs(4));

    group.bench_function("bare", |b| {
        b.to_async(&tokio).iter_custom(|iters| async move {
            let start = Instant::now();
            for i in 0..iters {
                black_box(bare(i).await.ok());
            }
            start.elapsed()
        });
    });

    // A new store per sample keeps every sample's map the same size.
    group.bench_function("idempotent_fresh_key", |b| {
        b.to_async(&tokio).iter_custom(|iters| async move {
            let rt = runtime();
            rt.scope(async {
                let start = Instant::now();
                for i in 0..iters {
                    black_box(wrapped(i).await.ok());
                }
                start.elapsed()
            })
            .await
        });
    });

    group.bench_function("idempotent_replay", |b| {
        b.to_async(&tokio).iter_custom(|iters| async move {
            let rt = runtime();
            rt.scope(async {
                black_box(wrapped(7).await.ok());
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(wrapped(7).await.ok());
                }
                start.elapsed()
            })
            .await
        });
    });
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
