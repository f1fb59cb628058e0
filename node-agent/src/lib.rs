//! The node agent: one per hypervisor host. It registers its Node,
//! heartbeats, follows the Instances bound to it through the native API
//! (with a node-scoped token — it never sees the store), converges the
//! hypervisor to them and reports what is really there.
//!
//! The hypervisor is reached through one trait ([`hypervisor::Hypervisor`])
//! with one libvirt implementation for any URI: `qemu:///system` on real
//! hosts, `test:///default` for simulated hosts. Everything else — the
//! loop, convergence, drift repair, status — is shared.
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
pub use hypervisor::{Hypervisor, Libvirt};
