//! What every benchmark prints: one row of figures per case (ops/s, p50,
//! p99) and the timing loop that measures them.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Figures for one case.
pub struct Figures {
    pub name: String,
    pub writers: usize,
    pub ops: usize,
    pub per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
}

impl Figures {
    pub fn row(&self) -> String {
        format!(
            "{:<28} {:>7} {:>8} {:>10.0} {:>9.2} {:>9.2}",
            self.name,
            self.writers,
            self.ops,
            self.per_sec,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3
        )
    }
}

pub fn header() -> String {
    format!(
        "{:<28} {:>7} {:>8} {:>10} {:>9} {:>9}",
        "case", "writers", "ops", "ops/s", "p50 ms", "p99 ms"
    )
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Runs `ops` calls of `op(task, i)` spread over `writers` concurrent tasks.
pub async fn measure<F, Fut>(name: &str, writers: usize, ops: usize, op: F) -> Result<Figures>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let per_task = ops.div_ceil(writers);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for t in 0..writers {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let t0 = Instant::now();
                op(t, i).await?;
                lat.push(t0.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latencies = Vec::with_capacity(per_task * writers);
    for task in tasks {
        latencies.extend(task.await.context("bench task panicked")??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(Figures {
        name: name.to_string(),
        writers,
        ops: latencies.len(),
        per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    })
}
