//! The controller runtime: what every reconciler stands on, shaped after
//! kube-rs's runtime with its known gaps closed.
//!
//! - [`reflector`]: one shared cache per kind, fed by list + watch, relisting
//!   on `Expired`; subscribers see every change; read-your-writes waits.
//! - [`queue`]: a work queue that dedupes keys, never runs one key twice at
//!   once, backs off per key (reset on success) and rate-limits globally.
//! - [`controller`]: runs a [`controller::Reconciler`] with bounded
//!   concurrency; the reconciler gets `Option<object>` — deletion is normal.
//! - [`leader`]: leader election on an etcd lease.
//! - [`status`]: conditions, finalizers, conflict-retrying writes, Events.
//! - [`metrics`]: reconcile counts, errors, latency, queue depth.
//!
//! It must not contain any kind's business logic (that is controllers/),
//! and it talks to the store only through `ResourceStore`.

pub mod controller;
pub mod credentials;
pub mod leader;
pub mod metrics;
pub mod queue;
pub mod reflector;
pub mod status;

/// An error and its sources on one line (`a: b: c`), for logs: error types
/// keep their sources out of `Display`, so the chain is printed once here.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

pub use controller::{while_leading, Action, Controller, ReconcileError, Reconciler, Shutdown};
pub use leader::{always_leader, LeaderElection};
pub use queue::{QueueOptions, WorkQueue};
pub use reflector::{Cache, Change, ObjectRef, Reflector};
