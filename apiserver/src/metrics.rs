//! Prometheus metrics of the API server: request counts and latency by
//! verb, kind and status code, served at `/metrics`.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::server::{classify, AppState};

/// Every label value comes from a fixed set (`server::classify`), and the
/// code from the few the server answers: the series are bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: &'static str,
    pub kind: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub verb: &'static str,
    pub kind: &'static str,
}

type HistogramFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    /// 1 while the store takes writes (what `/readyz` says), 0 otherwise;
    /// read at each scrape.
    store_healthy: prometheus_client::metrics::gauge::Gauge,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~8 s
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("corral_api");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "requests",
            "API requests by verb, kind and HTTP status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "API request latency by verb and kind (watches: time to first byte)",
            latency.clone(),
        );
        let store_healthy = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "store_healthy",
            "1 while the store takes writes (etcd reachable without a NOSPACE alarm, the embedded writer alive and committing), else 0; /readyz says why",
            store_healthy.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            store_healthy,
        }
    }

    /// Registers more metrics (the store's, controllers') in the same page.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Middleware: counts and times every API request.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (verb, kind) = classify(
        request.method(),
        request.uri().path(),
        request.uri().query(),
    );
    let started = Instant::now();
    let response = next.run(request).await;
    let code = response.status().as_u16();
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels { verb, kind, code })
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&LatencyLabels { verb, kind })
        .observe(started.elapsed().as_secs_f64());
    response
}

pub async fn serve(State(state): State<AppState>) -> Response {
    let healthy = state.store.raw().health().await.is_ok();
    state.metrics.store_healthy.set(i64::from(healthy));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
