//! Controller metrics: reconciles, errors, latency and queue depth per
//! controller, registered in the process's Prometheus registry.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: String,
}

/// All controllers' metric families.
#[derive(Clone)]
pub struct RuntimeMetrics {
    reconciles: Family<ControllerLabel, Counter>,
    errors: Family<ControllerLabel, Counter>,
    latency: Family<ControllerLabel, Histogram, fn() -> Histogram>,
    depth: Family<ControllerLabel, Gauge>,
}

fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl RuntimeMetrics {
    pub fn register(registry: &mut Registry) -> RuntimeMetrics {
        let m = RuntimeMetrics {
            reconciles: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(histogram),
            depth: Family::default(),
        };
        let sub = registry.sub_registry_with_prefix("corral_controller");
        sub.register("reconciles", "Reconciles run", m.reconciles.clone());
        sub.register(
            "reconcile_errors",
            "Reconciles that failed",
            m.errors.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            m.latency.clone(),
        );
        sub.register(
            "queue_depth",
            "Keys waiting in the work queue",
            m.depth.clone(),
        );
        m
    }

    pub fn controller(&self, name: &str) -> ControllerMetrics {
        ControllerMetrics {
            label: ControllerLabel {
                controller: name.to_string(),
            },
            all: self.clone(),
        }
    }
}

/// One controller's handle on the families.
#[derive(Clone)]
pub struct ControllerMetrics {
    label: ControllerLabel,
    all: RuntimeMetrics,
}

impl ControllerMetrics {
    pub fn observe(&self, took: Duration, failed: bool, queue_depth: usize) {
        self.all.reconciles.get_or_create(&self.label).inc();
        if failed {
            self.all.errors.get_or_create(&self.label).inc();
        }
        self.all
            .latency
            .get_or_create(&self.label)
            .observe(took.as_secs_f64());
        self.all
            .depth
            .get_or_create(&self.label)
            .set(queue_depth as i64);
    }
}
