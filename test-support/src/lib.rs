//! What tests and benchmarks share, and nothing that ships: a private etcd
//! (one server or a cluster) on loopback, [`ApiServer`] — the native API
//! on a real store — and [`Cluster`] — a whole Corral
//! in one process (store, API, controllers and node agents on simulated
//! hosts).
//!
//! Only dev-dependencies and the `corral-bench` binary use this crate; the
//! `corral` binary and the libraries it links must never depend on it.
//! It starts real components only: a real etcd, the real server, real
//! controllers and agents; the one stand-in is libvirt's own test driver
//! as the hypervisor of simulated hosts.

mod api_server;
mod cluster;
pub mod etcd;

pub use api_server::ApiServer;
pub use cluster::{start_sim_host, Backend, Cluster, SimHost};
pub use etcd::{EtcdCluster, EtcdServer, EtcdServerError};
