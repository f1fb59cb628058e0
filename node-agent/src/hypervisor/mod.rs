//! The node agent's contract with a hypervisor: one trait, one libvirt
//! implementation for any URI. `qemu:///system` drives real KVM/QEMU
//! guests; `test:///default` — libvirt's own in-process test driver — gives
//! simulated hosts with the same API, for tests and scale benchmarks.
//!
//! Corral's domains are named `corral-<instance uid>`; a domain with that
//! prefix and no Instance is an orphan the agent removes.
//!
//! libvirtd may restart (or be killed) under a running agent; its guests'
//! QEMU processes keep running and the new libvirtd re-attaches to them.
//! [`Libvirt`] notices a dead connection and reopens it, with backoff;
//! meanwhile every call fails with [`HypervisorError::Unreachable`], which
//! says nothing about any guest.
//!
//! Here: the trait and the types it speaks in. [`Libvirt`] (libvirt.rs)
//! implements it; the XML it writes and reads is in xml.rs. Nothing here
//! decides what a domain should be: the agent does.

mod libvirt;
mod xml;

pub use libvirt::{Libvirt, HUNG_AFTER};

/// Prefix of every domain Corral owns.
pub const DOMAIN_PREFIX: &str = "corral-";

pub fn domain_name(uid: &str) -> String {
    format!("{DOMAIN_PREFIX}{uid}")
}

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("libvirt: {0}")]
    Libvirt(String),
    #[error("domain {0} not found")]
    NoDomain(String),
    /// The connection to the hypervisor is lost and not back yet: nothing
    /// is known about the guests, and nothing was done to them.
    #[error("the hypervisor is unreachable: {0}")]
    Unreachable(String),
}

impl From<virt::error::Error> for HypervisorError {
    fn from(e: virt::error::Error) -> Self {
        HypervisorError::Libvirt(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, HypervisorError>;

/// What the host offers, for its Node.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub hostname: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub libvirt_version: String,
    /// `kvm`, `qemu` (TCG) or `test`.
    pub virt_type: String,
}

/// A guest's observable state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PowerState {
    Running,
    Paused,
    /// Defined, not running.
    Shutoff,
    /// Not running, memory saved (managed save): resumes where it was.
    Saved,
    Crashed,
    Other,
}

#[derive(Debug, Clone)]
pub struct DomainInfo {
    pub name: String,
    pub state: PowerState,
    /// libvirt's id of a running domain; a restart changes it.
    pub id: Option<u32>,
}

/// One disk of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: std::path::PathBuf,
    /// `qcow2` or `raw`.
    pub format: String,
    /// Guest device: `vda`, `vdb`, ...
    pub target: String,
    pub readonly: bool,
    /// Shown to the guest as the disk's serial (e.g. a volume id).
    pub serial: Option<String>,
    /// A read-only CD-ROM on the IDE bus (target `hdc`), as config drives
    /// are attached: virtio names stay for the root disk and volumes.
    pub cdrom: bool,
}

/// Direct kernel boot (AKI/ARI-style images).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBoot {
    pub kernel: std::path::PathBuf,
    pub initrd: Option<std::path::PathBuf>,
    pub cmdline: String,
}

/// One network interface of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    pub mac: String,
    /// The libvirt network (`corral-<uid>`) or, for `bridged` Networks, the
    /// host bridge.
    pub source: NicSource,
    /// The tap device on the host (see `net::tap_name`).
    pub tap: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicSource {
    Network(String),
    Bridge(String),
}

/// What a domain is built from.
#[derive(Debug, Clone, Default)]
pub struct DomainSpec {
    /// The Node whose agent made it (recorded in the domain's metadata).
    pub node: String,
    pub uid: String,
    pub project: String,
    pub instance: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub nics: Vec<NicSpec>,
    /// In boot order: the root disk first.
    pub disks: Vec<DiskSpec>,
    pub kernel: Option<KernelBoot>,
    /// Where the serial console is logged.
    pub console_log: Option<std::path::PathBuf>,
}

pub trait Hypervisor: Send + Sync {
    fn facts(&self) -> Result<HostFacts>;
    /// Corral's domains only.
    fn list(&self) -> Result<Vec<DomainInfo>>;
    fn state(&self, name: &str) -> Result<Option<PowerState>>;
    /// Defines the domain if it is not defined yet.
    fn define(&self, spec: &DomainSpec) -> Result<()>;
    fn start(&self, name: &str) -> Result<()>;
    /// Asks the guest to power off (ACPI).
    fn shutdown(&self, name: &str) -> Result<()>;
    /// Pulls the plug.
    fn destroy(&self, name: &str) -> Result<()>;
    fn undefine(&self, name: &str) -> Result<()>;
    fn pause(&self, name: &str) -> Result<()>;
    fn resume(&self, name: &str) -> Result<()>;
    /// Saves memory to disk and stops (resumed by `start`).
    fn save(&self, name: &str) -> Result<()>;
    /// Restarts the guest (ACPI reboot, falling back to a reset).
    fn reboot(&self, name: &str) -> Result<()>;
    /// Adds a disk to the definition and, when running, to the guest.
    fn attach_disk(&self, name: &str, disk: &DiskSpec) -> Result<()>;
    /// Removes the disk with guest device `target`.
    fn detach_disk(&self, name: &str, target: &str) -> Result<()>;
    /// Guest devices of the domain's disks, as defined.
    fn disk_targets(&self, name: &str) -> Result<Vec<String>>;
    /// The Node recorded in the domain's metadata (None: not Corral's).
    fn node_of(&self, name: &str) -> Result<Option<String>>;
    /// Makes the (transient) libvirt network `name` exist as `xml` says,
    /// with exactly `hosts` as DHCP reservations (MAC, `<host>` element),
    /// updated live so running guests keep their links.
    fn sync_network(&self, name: &str, xml: &str, hosts: &[(String, String)]) -> Result<()>;
    /// Corral's libvirt networks (named `corral-…`).
    fn networks(&self) -> Result<Vec<String>>;
    /// Destroys a libvirt network (its bridge, dnsmasq and leases go too).
    fn remove_network(&self, name: &str) -> Result<()>;
    /// Makes one cheap call to the hypervisor (reconnecting first if the
    /// connection was lost): `Unreachable` while it cannot be reached.
    fn check(&self) -> Result<()> {
        Ok(())
    }
    /// Why the hypervisor could not be reached by the latest call, or
    /// `None` if it answered. Makes no call and never waits: a heartbeat
    /// can report it even while a call is stuck.
    fn unreachable(&self) -> Option<String> {
        None
    }
}

/// The `<disk>` element for `d`.
pub fn disk_xml(d: &DiskSpec) -> String {
    let e = xml_escape;
    if d.cdrom {
        return format!(
            "<disk type='file' device='cdrom'><driver name='qemu' type='{fmt}'/><source file='{path}'/><target dev='{dev}' bus='ide'/><readonly/></disk>",
            fmt = e(&d.format),
            path = e(&d.path.display().to_string()),
            dev = e(&d.target),
        );
    }
    format!(
        "<disk type='file' device='disk'><driver name='qemu' type='{fmt}' cache='none' discard='unmap'/><source file='{path}'/><target dev='{dev}' bus='virtio'/>{ro}{serial}</disk>",
        fmt = e(&d.format),
        path = e(&d.path.display().to_string()),
        dev = e(&d.target),
        ro = if d.readonly { "<readonly/>" } else { "" },
        serial = d
            .serial
            .as_deref()
            .map(|s| format!("<serial>{}</serial>", e(s)))
            .unwrap_or_default(),
    )
}

/// Writes a node description for libvirt's test driver and returns its
/// URI (`test:///DIR/NAME.xml`). Each such URI is an independent simulated
/// host with an empty domain list; `test:///default`, by contrast, is one
/// shared host per process.
pub fn simulated_host(
    dir: &std::path::Path,
    name: &str,
    vcpus: u32,
    memory_mib: u64,
) -> std::io::Result<String> {
    let path = dir.join(format!("{name}.xml"));
    let xml = format!(
        "<node>\n  <cpu>\n    <mhz>2000</mhz>\n    <model>corral-sim</model>\n    <active>{vcpus}</active>\n    <nodes>1</nodes>\n    <sockets>1</sockets>\n    <cores>{vcpus}</cores>\n    <threads>1</threads>\n  </cpu>\n  <memory>{}</memory>\n</node>\n",
        memory_mib * 1024
    );
    std::fs::write(&path, xml)?;
    Ok(format!("test://{}", path.display()))
}

/// Escapes text for XML content and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}
