//! The node agent: one per hypervisor host. It registers its Node,
//! heartbeats, follows the Instances bound to it through the native API
//! (with a node-scoped token — it never sees the store), converges the
//! hypervisor and the host to them and reports what is really there.
//!
//! The agent reaches its host through two traits: the hypervisor
//! ([`hypervisor::Hypervisor`], one libvirt implementation for any URI:
//! `qemu:///system` on real hosts, `test:///default` for simulated ones)
//! and everything else — files, networks, firewall, metadata
//! ([`host::Host`]: [`host::RealHost`] on real hosts, the simulated twin
//! [`host::SimHost`] that records what it is asked). Everything else —
//! the loop, convergence, drift repair, status — is shared.
//!
//! The agent must not decide placement or allocate addresses (controllers
//! do), and must not write anything but its Node and the status of what is
//! bound to it.

pub mod agent;
pub mod api;
pub mod events;
pub mod host;
pub mod hypervisor;
pub mod metadata;
pub mod net;

pub use agent::{Agent, AgentOptions};
pub use api::ApiClient;
pub use host::{Host, RealHost, SimHost};
pub use hypervisor::{Hypervisor, Libvirt};
