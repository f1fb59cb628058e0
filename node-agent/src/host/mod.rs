//! The agent's other seam, beside [`crate::hypervisor::Hypervisor`]:
//! everything it does to its host that is not a domain. Storage (the
//! image cache, an instance's root disk, seed and console log, volume and
//! snapshot files) and networking (libvirt networks with their DHCP
//! reservations, the firewall, the metadata table and its listener).
//!
//! One trait, [`Host`], two implementations the agent cannot tell apart:
//! - [`RealHost`] (real.rs): files under the state directory (files.rs),
//!   `qemu-img` and `genisoimage`, libvirt networks through the
//!   hypervisor, iptables, and the metadata listener;
//! - [`SimHost`] (sim.rs), the simulated twin for libvirt's test driver:
//!   it records in memory what it was asked to make — the plans — so
//!   tests can read them, and touches nothing. Cheap enough for 100,000
//!   instances in one process.
//!
//! The agent decides what should exist and asks; a host makes it so (or
//! records it) and answers what is there. A host never talks to the API
//! and never decides anything about Corral objects. Its methods may
//! block (files, child processes, libvirt): the agent calls them off its
//! async threads.
//!
//! Where the two differ in what they are, they say so in data, not by
//! name: a simulated guest runs nothing, so its disks are never read
//! ([`ImageSupply::Named`]: images are named, never pulled, and need not
//! be Available — benchmarks create images they never upload) and it
//! prints no console ([`Host::console_log`] is `None`: it is ready once
//! running).

use std::any::Any;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use corral_runtime::Shutdown;
use corral_store::blobs::{BlobError, BlobStore};

use crate::hypervisor::{DiskSpec, HypervisorError};
use crate::metadata::InstanceMetadata;
use crate::net::{FirewallError, Lease, NetDef, NetPlan};

mod console;
mod files;
mod real;
mod seed;
mod sim;

pub use console::guest_ready;
pub use files::HostFiles;
pub use real::RealHost;
pub use seed::Seed;
pub use sim::{SimDisk, SimFile, SimHost, SimInstance, SimPlans};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The I/O error is in the message, not a `source`: printed once
    /// however the chain is walked.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("{command} failed: {message}")]
    Command { command: String, message: String },
    /// A libvirt network (networks are libvirt's, through the hypervisor).
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    /// An overlay network's tunnel, forwarding table or guard.
    #[error(transparent)]
    Overlay(#[from] crate::net::VxlanError),
    /// The floating addresses on the uplink (`--uplink`).
    #[error(transparent)]
    Uplink(#[from] crate::net::UplinkError),
    /// Forgetting a released floating address's tracked flows.
    #[error(transparent)]
    Conntrack(#[from] crate::net::ConntrackError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HostError + '_ {
    move |error| HostError::Io {
        path: path.display().to_string(),
        error,
    }
}

pub type Result<T> = std::result::Result<T, HostError>;

/// Where the NoCloud seed goes: an IDE CD-ROM, as Nova attaches config
/// drives, so virtio names stay for the root disk and the volumes.
pub const SEED_DEVICE: &str = "hdc";

/// The device of the root disk.
pub const ROOT_DEVICE: &str = "vda";

/// How a host comes by the images its root disks and volumes are made
/// from.
pub enum ImageSupply<'a> {
    /// From the image's bytes: pulled from the API, once the Image is
    /// Available, into this cache (by sha256), then read by `qemu-img`.
    Cache(&'a BlobStore),
    /// Nothing ever reads a disk here: an image is only named (see
    /// [`named_image`]), never pulled, and need not be Available.
    Named,
}

/// The stand-in file of an image on a host whose images are
/// [`ImageSupply::Named`].
pub fn named_image(project: &str, image: &str) -> PathBuf {
    PathBuf::from(format!("images/{project}/{image}"))
}

/// Everything the agent does to its host besides the hypervisor. See the
/// module doc.
#[async_trait]
pub trait Host: Any + Send + Sync {
    /// For tests: the concrete host (say, a [`SimHost`] to read its plans).
    fn as_any(&self) -> &dyn Any;

    /// Whether its calls may block (files, processes, libvirt over a
    /// socket): the agent then runs them off the async threads. A
    /// simulated host answers from memory and is called in place.
    fn blocks(&self) -> bool {
        true
    }

    // ---- images

    fn images(&self) -> ImageSupply<'_>;

    // ---- an instance's files

    /// Makes the root disk of instance `uid` an overlay on `base` unless
    /// it exists (an existing disk holds the guest's data: it is never
    /// recreated), at least `min_bytes` large. Answers the disk.
    fn ensure_root_disk(
        &self,
        uid: &str,
        base: &Path,
        base_format: &str,
        min_bytes: u64,
    ) -> Result<DiskSpec>;

    /// Writes the NoCloud seed of instance `uid`, replacing any earlier
    /// one. Answers the read-only CD-ROM that carries it.
    fn write_seed(&self, uid: &str, seed: &Seed) -> Result<DiskSpec>;

    /// Why the root disk of instance `uid`, whose domain exists, is gone
    /// (deleted outside Corral), if it is.
    fn root_disk_lost(&self, uid: &str) -> Option<String>;

    /// Removes everything instance `uid` had on this host.
    fn remove_instance(&self, uid: &str) -> Result<()>;

    /// The instances that have files here.
    fn instance_uids(&self) -> Result<Vec<String>>;

    // ---- consoles

    /// Where instance `uid`'s serial console is logged; `None`: guests
    /// here print nothing (they are ready once running).
    fn console_log(&self, uid: &str) -> Option<PathBuf>;

    /// The newest `max` bytes of the console (empty if none yet) and their
    /// offset in the log.
    fn console_tail(&self, uid: &str, max: u64) -> Result<(Vec<u8>, u64)>;

    /// The console log's length now: where a boot starts.
    fn console_len(&self, uid: &str) -> u64;

    /// Whether the console, read from byte `from`, shows the guest ready;
    /// and how far it was read.
    fn read_for_ready(&self, uid: &str, from: u64) -> (bool, u64);

    // ---- volumes and snapshots

    fn volume_path(&self, uid: &str) -> PathBuf;

    fn snapshot_path(&self, uid: &str) -> PathBuf;

    /// Creates an empty disk of `size_bytes` at `dest` (whole or not at
    /// all).
    fn create_empty(&self, dest: &Path, size_bytes: u64) -> Result<()>;

    /// Copies `src` (an image or a disk, even one a guest has open) into a
    /// standalone disk at `dest`, grown to `min_bytes`.
    fn copy_image(&self, src: &Path, src_format: &str, dest: &Path, min_bytes: u64) -> Result<()>;

    /// Removes a volume or snapshot file (absent is fine).
    fn remove_file(&self, path: &Path) -> Result<()>;

    /// A disk's virtual size in whole GiB (rounded up).
    async fn virtual_size_gib(&self, path: &Path) -> Option<u32>;

    // ---- networking

    /// Removes Corral's libvirt networks not named in `keep`; answers
    /// their names.
    fn remove_networks_except(&self, keep: &[String]) -> Result<Vec<String>>;

    /// Makes the libvirt network of `net` (a managed one) run as it says,
    /// with exactly its DHCP reservations, without disturbing running
    /// guests.
    fn sync_network(&self, net: &NetDef) -> Result<()>;

    /// Makes the VXLAN tunnel of each of `networks` that has one
    /// (`NetDef::overlay`, its bridge already up) and its forwarding
    /// table match, removes tunnels none of them has, and keeps DHCP and
    /// the distributed gateway's ARP off every tunnel.
    fn sync_overlays(&self, networks: &[NetDef]) -> Result<()>;

    /// Makes the firewall hold `plan`'s rules. `applied` is what this agent
    /// made it hold last (`None`: unknown, apply everything). Answers
    /// whether it applied everything.
    fn apply_firewall(&self, applied: Option<&NetPlan>, plan: &NetPlan) -> Result<bool>;

    /// Makes the floating addresses this host answers for on its uplink
    /// `dev` (`corral agent --uplink`) exactly `addrs`, announcing each
    /// one it adds with a gratuitous ARP; answers the ones it added.
    fn sync_uplink(&self, dev: &str, addrs: &BTreeSet<Ipv4Addr>) -> Result<Vec<Ipv4Addr>>;

    /// Forgets the tracked connections of floating addresses that no
    /// longer lead to the guest they did (see `net::released_floating`),
    /// so no flow keeps reaching the old guest.
    fn forget_flows(&self, addrs: &[Ipv4Addr]) -> Result<()>;

    /// The DHCP leases handed out on `bridge`.
    fn leases(&self, bridge: &str) -> Vec<Lease>;

    /// Replaces the metadata table: (gateway, guest address) → what that
    /// guest is told.
    fn set_metadata(&self, entries: Vec<((Ipv4Addr, Ipv4Addr), InstanceMetadata)>);

    /// Serves the metadata table to guests on `port` until `stop`.
    async fn serve_metadata(&self, port: u16, stop: Shutdown);
}

impl dyn Host {
    /// The simulated host behind this one, if it is one.
    pub fn as_sim(&self) -> Option<&SimHost> {
        self.as_any().downcast_ref::<SimHost>()
    }
}

/// Picks the domain type for this host: `kvm` only when the CPU has
/// hardware virtualisation (vmx/svm) and /dev/kvm opens read-write;
/// otherwise `qemu` (TCG), which always boots. A paravirtualised nested
/// KVM exposes /dev/kvm on CPUs without vmx/svm and cannot boot standard
/// guests, so /dev/kvm alone is not trusted.
pub fn detect_virt_type() -> &'static str {
    let cpu_ok = std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false);
    let dev_ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if cpu_ok && dev_ok {
        "kvm"
    } else {
        "qemu"
    }
}
