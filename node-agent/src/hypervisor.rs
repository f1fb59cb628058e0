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

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::Domain;

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

/// First wait before reopening a connection that failed to open again.
const RECONNECT_MIN: Duration = Duration::from_millis(250);
/// Longest wait between two attempts to reopen.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// The libvirt connection, and what is known about its health.
struct Link {
    /// `None` while lost.
    conn: Option<Connect>,
    /// Why it was lost, or why reopening last failed.
    why: String,
    /// No attempt to reopen before this.
    retry_at: Instant,
    /// The wait after the next failed attempt.
    backoff: Duration,
    /// When the connection was lost, and attempts to reopen since.
    down_since: Option<Instant>,
    attempts: u32,
}

/// Hypervisor reached through libvirt. One connection, shared by every
/// call; reopened (with backoff) when libvirtd goes away and comes back.
pub struct Libvirt {
    uri: String,
    link: Mutex<Link>,
    /// Why the connection is lost (`None`: open), readable without
    /// waiting for `link`.
    lost: Mutex<Option<String>>,
    /// Since when a call to libvirt has been waiting for its answer (a
    /// libvirtd that hangs instead of dying never closes the socket).
    busy_since: Mutex<Option<Instant>>,
    virt_type: String,
}

/// A libvirt call unanswered this long makes the hypervisor unreachable
/// (`HypervisorReachable=False`) until it answers.
pub const HUNG_AFTER: Duration = Duration::from_secs(20);

/// Marks a call to libvirt in progress for as long as it lives.
struct Busy<'a>(&'a Mutex<Option<Instant>>);

impl<'a> Busy<'a> {
    fn start(m: &'a Mutex<Option<Instant>>) -> Busy<'a> {
        *m.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        Busy(m)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Libvirt {
    /// Opens `uri`. `virt_type` is the domain type to define (`kvm`, `qemu`);
    /// the test driver always uses `test`.
    pub fn open(uri: &str, virt_type: &str) -> Result<Libvirt> {
        // libvirt's default error handler prints every error to stderr.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri))?;
        Ok(Libvirt::with_link(
            uri,
            virt_type,
            Some(conn),
            String::new(),
        ))
    }

    /// Opens `uri` like [`Libvirt::open`], except that a libvirtd that does
    /// not answer yet (its socket missing or refusing: a host where the
    /// agent starts first, or libvirtd restarting) is not an error: the
    /// connection starts lost and is opened, with the usual backoff, by
    /// the first call that needs it, as nova-compute waits for libvirt.
    /// The second value says why it is not open yet. A URI libvirt cannot
    /// use at all (no driver, bad syntax, refused credentials) is still an
    /// error at once.
    pub fn open_or_wait(uri: &str, virt_type: &str) -> Result<(Libvirt, Option<String>)> {
        virt::error::clear_error_callback();
        match Connect::open(Some(uri)) {
            Ok(conn) => Ok((
                Libvirt::with_link(uri, virt_type, Some(conn), String::new()),
                None,
            )),
            Err(e) if e.code().is(virt::error::ErrorNumber::SystemError) => {
                let why = e.to_string();
                Ok((
                    Libvirt::with_link(uri, virt_type, None, why.clone()),
                    Some(why),
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn with_link(uri: &str, virt_type: &str, conn: Option<Connect>, why: String) -> Libvirt {
        let virt_type = if uri.starts_with("test:") {
            "test".to_string()
        } else {
            virt_type.to_string()
        };
        let lost = conn.is_none().then(|| why.clone());
        Libvirt {
            uri: uri.to_string(),
            link: Mutex::new(Link {
                down_since: conn.is_none().then(Instant::now),
                conn,
                why,
                retry_at: Instant::now(),
                backoff: RECONNECT_MIN,
                attempts: 0,
            }),
            lost: Mutex::new(lost),
            busy_since: Mutex::new(None),
            virt_type,
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn link(&self) -> MutexGuard<'_, Link> {
        // A panic under the lock leaves the link usable: every field is
        // consistent between statements.
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the connection, reopening it first if it was lost.
    ///
    /// When `f` fails and the connection turns out dead (libvirtd exited
    /// or restarted: libvirt marks the client closed on the socket's EOF),
    /// the connection is dropped and reopened at once, and `f` runs once
    /// more on the new one: a libvirtd restart that already finished costs
    /// the caller nothing. If libvirtd is still away, the answer is
    /// `Unreachable`, and further reopen attempts wait 250 ms, doubling up
    /// to 5 s, so a caller in a loop does not hammer the socket. The loss
    /// and the recovery are logged once each; the attempts in between only
    /// at debug level.
    fn with_conn<T>(&self, f: impl Fn(&Connect) -> Result<T>) -> Result<T> {
        let mut link = self.link();
        let mut tries = 0;
        loop {
            tries += 1;
            let busy = Busy::start(&self.busy_since);
            self.reconnect(&mut link)?;
            let conn = link.conn.as_ref().expect("connected");
            let answer = f(conn);
            drop(busy);
            let err = match answer {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            // The client knows its socket closed once a call saw it: asking
            // is local, no round trip.
            if conn.is_alive().unwrap_or(false) {
                return Err(err);
            }
            tracing::warn!(uri = %self.uri, error = %err, "lost the libvirt connection; reconnecting");
            link.conn = None;
            link.why = err.to_string();
            link.down_since.get_or_insert_with(Instant::now);
            link.retry_at = Instant::now();
            link.backoff = RECONNECT_MIN;
            self.set_lost(Some(link.why.clone()));
            if tries > 1 {
                return Err(HypervisorError::Unreachable(link.why.clone()));
            }
        }
    }

    /// Makes `link` hold an open connection, or answers `Unreachable`.
    fn reconnect(&self, link: &mut Link) -> Result<()> {
        if link.conn.is_some() {
            return Ok(());
        }
        if Instant::now() < link.retry_at {
            return Err(HypervisorError::Unreachable(link.why.clone()));
        }
        link.attempts += 1;
        match Connect::open(Some(&self.uri)) {
            Ok(conn) => {
                let down = link.down_since.take().map(|t| t.elapsed());
                tracing::info!(uri = %self.uri, down_for = ?down, attempts = link.attempts, "libvirt connection restored");
                link.conn = Some(conn);
                link.why.clear();
                link.backoff = RECONNECT_MIN;
                link.attempts = 0;
                self.set_lost(None);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(uri = %self.uri, error = %e, retry_in = ?link.backoff, "cannot reopen the libvirt connection yet");
                link.why = e.to_string();
                link.down_since.get_or_insert_with(Instant::now);
                link.retry_at = Instant::now() + link.backoff;
                link.backoff = (link.backoff * 2).min(RECONNECT_MAX);
                self.set_lost(Some(link.why.clone()));
                Err(HypervisorError::Unreachable(link.why.clone()))
            }
        }
    }

    fn set_lost(&self, why: Option<String>) {
        *self.lost.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    fn lookup(conn: &Connect, name: &str) -> Result<Option<Domain>> {
        match conn.lookup_domain_by_name(name) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.code().is(virt::error::ErrorNumber::NoDomain) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn with_domain<T>(&self, name: &str, f: impl Fn(&Domain) -> Result<T>) -> Result<T> {
        self.with_conn(|conn| {
            let dom = Self::lookup(conn, name)?
                .ok_or_else(|| HypervisorError::NoDomain(name.to_string()))?;
            f(&dom)
        })
    }

    pub fn domain_xml(&self, spec: &DomainSpec) -> String {
        let e = xml_escape;
        let real = self.virt_type != "test";
        let mut devices = String::new();
        let mut os = String::from("<type arch='x86_64'>hvm</type>");
        if real {
            match &spec.kernel {
                Some(k) => {
                    os.push_str(&format!(
                        "<kernel>{}</kernel>",
                        e(&k.kernel.display().to_string())
                    ));
                    if let Some(i) = &k.initrd {
                        os.push_str(&format!("<initrd>{}</initrd>", e(&i.display().to_string())));
                    }
                    os.push_str(&format!("<cmdline>{}</cmdline>", e(&k.cmdline)));
                }
                None => os.push_str("<boot dev='hd'/>"),
            }
            for d in &spec.disks {
                devices.push_str("    ");
                devices.push_str(&disk_xml(d));
                devices.push('\n');
            }
            for nic in &spec.nics {
                let (kind, source) = match &nic.source {
                    NicSource::Network(n) => ("network", format!("<source network='{}'/>", e(n))),
                    NicSource::Bridge(b) => ("bridge", format!("<source bridge='{}'/>", e(b))),
                };
                devices.push_str(&format!(
                    "    <interface type='{kind}'><mac address='{mac}'/>{source}<target dev='{tap}'/><model type='virtio'/></interface>\n",
                    mac = e(&nic.mac),
                    tap = e(&nic.tap),
                ));
            }
            match &spec.console_log {
                Some(log) => devices.push_str(&format!(
                    "    <serial type='pty'><log file='{}' append='on'/><target port='0'/></serial>\n",
                    e(&log.display().to_string())
                )),
                None => devices.push_str("    <serial type='pty'><target port='0'/></serial>\n"),
            }
            devices
                .push_str("    <console type='pty'><target type='serial' port='0'/></console>\n");
            devices.push_str("    <memballoon model='none'/>\n");
            // No USB: nothing Corral attaches uses it, and libvirt would
            // otherwise add a UHCI controller the guest probes at boot
            // (Nova disables it the same way when no USB device is asked
            // for). The bare-QEMU baseline of `corral bench boot` has none.
            devices.push_str("    <controller type='usb' model='none'/>\n");
        }
        let cpu = if self.virt_type == "kvm" {
            "  <cpu mode='host-passthrough'/>\n"
        } else {
            ""
        };
        format!(
            "<domain type='{vt}'>\n  <name>{name}</name>\n  <uuid>{uid}</uuid>\n  <metadata>\n    <corral:instance xmlns:corral='https://corral.dev/xmlns/instance/v1'>\n      <corral:node>{node}</corral:node>\n      <corral:project>{project}</corral:project>\n      <corral:name>{instance}</corral:name>\n    </corral:instance>\n  </metadata>\n  <memory unit='MiB'>{mem}</memory>\n  <vcpu>{cpus}</vcpu>\n  <os>{os}</os>\n  <features><acpi/></features>\n{cpu}  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n  <devices>\n{devices}  </devices>\n</domain>\n",
            vt = e(&self.virt_type),
            name = e(&domain_name(&spec.uid)),
            uid = e(&spec.uid),
            node = e(&spec.node),
            project = e(&spec.project),
            instance = e(&spec.instance),
            mem = spec.memory_mib,
            cpus = spec.vcpus,
        )
    }
}

fn power_state(dom: &Domain) -> Result<PowerState> {
    use virt::domain::DomainState as S;
    let (state, _) = dom.state()?;
    Ok(match state.known() {
        Some(S::Running) | Some(S::Blocked) => PowerState::Running,
        Some(S::Paused) | Some(S::PMSuspended) => PowerState::Paused,
        Some(S::Shutoff) | Some(S::Shutdown) => {
            if dom.has_managed_save(0).unwrap_or(false) {
                PowerState::Saved
            } else {
                PowerState::Shutoff
            }
        }
        Some(S::Crashed) => PowerState::Crashed,
        _ => PowerState::Other,
    })
}

impl Hypervisor for Libvirt {
    fn facts(&self) -> Result<HostFacts> {
        self.with_conn(|conn| {
            let info = conn.node_info()?;
            let v = conn.lib_version()?;
            Ok(HostFacts {
                hostname: conn.hostname()?,
                vcpus: info.cpus,
                memory_mib: info.memory / 1024,
                libvirt_version: format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000),
                virt_type: self.virt_type.clone(),
            })
        })
    }

    fn list(&self) -> Result<Vec<DomainInfo>> {
        self.with_conn(|conn| {
            let mut out = Vec::new();
            for dom in conn.list_all_domains(0)? {
                let name = dom.name()?;
                if name.starts_with(DOMAIN_PREFIX) {
                    out.push(DomainInfo {
                        state: power_state(&dom)?,
                        id: dom.id(),
                        name,
                    });
                }
            }
            Ok(out)
        })
    }

    fn state(&self, name: &str) -> Result<Option<PowerState>> {
        self.with_conn(|conn| match Self::lookup(conn, name)? {
            Some(d) => Ok(Some(power_state(&d)?)),
            None => Ok(None),
        })
    }

    fn define(&self, spec: &DomainSpec) -> Result<()> {
        let xml = self.domain_xml(spec);
        self.with_conn(|conn| {
            if Self::lookup(conn, &domain_name(&spec.uid))?.is_some() {
                return Ok(());
            }
            conn.define_domain_xml(&xml)?;
            Ok(())
        })
    }

    fn start(&self, name: &str) -> Result<()> {
        self.with_domain(name, |d| Ok(d.create()?))
    }

    fn shutdown(&self, name: &str) -> Result<()> {
        self.with_domain(name, |d| Ok(d.shutdown()?))
    }

    fn destroy(&self, name: &str) -> Result<()> {
        self.with_domain(name, |d| match d.destroy() {
            Ok(()) => Ok(()),
            // Already off.
            Err(e) if e.code().is(virt::error::ErrorNumber::OperationInvalid) => Ok(()),
            Err(e) => Err(e.into()),
        })
    }

    fn undefine(&self, name: &str) -> Result<()> {
        self.with_domain(name, |d| {
            let _ = d.managed_save_remove(0);
            Ok(d.undefine()?)
        })
    }

    fn pause(&self, name: &str) -> Result<()> {
        self.with_domain(name, |d| Ok(d.suspend()?))
    }

    fn resume(&self, name: &str) -> Result<()> {
        self.with_domain(name, |d| Ok(d.resume()?))
    }

    fn save(&self, name: &str) -> Result<()> {
        self.with_domain(name, |d| Ok(d.managed_save(0)?))
    }

    fn reboot(&self, name: &str) -> Result<()> {
        self.with_domain(name, |d| match d.reboot(0) {
            Ok(()) => Ok(()),
            Err(_) => Ok(d.reset()?),
        })
    }

    fn attach_disk(&self, name: &str, disk: &DiskSpec) -> Result<()> {
        use virt::sys::{VIR_DOMAIN_AFFECT_CONFIG, VIR_DOMAIN_AFFECT_LIVE};
        self.with_domain(name, |d| {
            let live = d.is_active().unwrap_or(false);
            let flags = if live {
                VIR_DOMAIN_AFFECT_CONFIG | VIR_DOMAIN_AFFECT_LIVE
            } else {
                VIR_DOMAIN_AFFECT_CONFIG
            };
            d.attach_device_flags(&disk_xml(disk), flags)?;
            Ok(())
        })
    }

    fn detach_disk(&self, name: &str, target: &str) -> Result<()> {
        use virt::sys::{VIR_DOMAIN_AFFECT_CONFIG, VIR_DOMAIN_AFFECT_LIVE};
        self.with_domain(name, |d| {
            let xml = d.xml_desc(0)?;
            let Some(disk) = find_disk_element(&xml, target) else {
                return Ok(());
            };
            let live = d.is_active().unwrap_or(false);
            let flags = if live {
                VIR_DOMAIN_AFFECT_CONFIG | VIR_DOMAIN_AFFECT_LIVE
            } else {
                VIR_DOMAIN_AFFECT_CONFIG
            };
            d.detach_device_flags(&disk, flags)?;
            Ok(())
        })
    }

    fn node_of(&self, name: &str) -> Result<Option<String>> {
        self.with_conn(|conn| match Self::lookup(conn, name)? {
            Some(d) => Ok(corral_node(&d.xml_desc(0)?)),
            None => Ok(None),
        })
    }

    fn sync_network(&self, name: &str, xml: &str, hosts: &[(String, String)]) -> Result<()> {
        use virt::sys;
        self.with_conn(|conn| {
            let net = match conn.lookup_network_by_name(name) {
                Ok(n) => n,
                Err(e) if e.code().is(virt::error::ErrorNumber::NoNetwork) => {
                    conn.create_network_xml(xml)?;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            if !net.is_active()? {
                net.create()?;
            }
            let current = net.xml_desc(0)?;
            let have: Vec<(String, String)> = host_elements(&current);
            for (mac, elem) in &have {
                if !hosts.iter().any(|(m, e)| m == mac && host_same(e, elem)) {
                    net.update(
                        sys::VIR_NETWORK_UPDATE_COMMAND_DELETE,
                        sys::VIR_NETWORK_SECTION_IP_DHCP_HOST,
                        -1,
                        elem,
                        sys::VIR_NETWORK_UPDATE_AFFECT_LIVE,
                    )?;
                }
            }
            for (mac, elem) in hosts {
                if !have.iter().any(|(m, e)| m == mac && host_same(e, elem)) {
                    net.update(
                        sys::VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
                        sys::VIR_NETWORK_SECTION_IP_DHCP_HOST,
                        -1,
                        elem,
                        sys::VIR_NETWORK_UPDATE_AFFECT_LIVE,
                    )?;
                }
            }
            Ok(())
        })
    }

    fn networks(&self) -> Result<Vec<String>> {
        self.with_conn(|conn| {
            let mut names = conn.list_networks()?;
            names.extend(conn.list_defined_networks()?);
            names.retain(|n| n.starts_with(crate::net::NETWORK_PREFIX));
            names.sort();
            names.dedup();
            Ok(names)
        })
    }

    fn remove_network(&self, name: &str) -> Result<()> {
        self.with_conn(|conn| {
            let net = match conn.lookup_network_by_name(name) {
                Ok(n) => n,
                Err(e) if e.code().is(virt::error::ErrorNumber::NoNetwork) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            // A transient network is gone once destroyed: ask first.
            let persistent = net.is_persistent()?;
            if net.is_active()? {
                net.destroy()?;
            }
            if persistent {
                net.undefine()?;
            }
            Ok(())
        })
    }

    fn check(&self) -> Result<()> {
        self.with_conn(|conn| Ok(conn.num_of_domains().map(|_| ())?))
    }

    fn unreachable(&self) -> Option<String> {
        if let Some(why) = self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Some(why);
        }
        let since = *self.busy_since.lock().unwrap_or_else(|e| e.into_inner());
        since
            .map(|t| t.elapsed())
            .filter(|waited| *waited >= HUNG_AFTER)
            .map(|waited| {
                format!(
                    "libvirtd has not answered a call for {}s (hung?); guests are left alone until it does",
                    waited.as_secs()
                )
            })
    }

    fn disk_targets(&self, name: &str) -> Result<Vec<String>> {
        self.with_domain(name, |d| {
            let xml = d.xml_desc(0)?;
            Ok(disk_elements(&xml)
                .into_iter()
                .filter_map(|(t, _)| t)
                .collect())
        })
    }
}

/// The `<host .../>` DHCP reservations in a network's XML: (MAC, element).
fn host_elements(xml: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<host ") {
        let Some(len) = rest[start..].find("/>") else {
            break;
        };
        let elem = &rest[start..start + len + 2];
        if let Some(mac) = attr(elem, "mac") {
            out.push((mac.to_ascii_lowercase(), elem.to_string()));
        }
        rest = &rest[start + len + 2..];
    }
    out
}

/// The value of attribute `name` in one element (either quote style).
fn attr<'a>(elem: &'a str, name: &str) -> Option<&'a str> {
    for q in ['\'', '"'] {
        let pat = format!(" {name}={q}");
        if let Some(i) = elem.find(&pat) {
            let v = &elem[i + pat.len()..];
            return v.find(q).map(|j| &v[..j]);
        }
    }
    None
}

/// Whether two `<host>` elements reserve the same thing.
fn host_same(a: &str, b: &str) -> bool {
    ["mac", "ip", "name"]
        .iter()
        .all(|k| attr(a, k).map(str::to_ascii_lowercase) == attr(b, k).map(str::to_ascii_lowercase))
}

/// The text of the first `<corral:node>` element.
fn corral_node(xml: &str) -> Option<String> {
    let start = xml.find("<corral:node>")? + "<corral:node>".len();
    let len = xml[start..].find("</corral:node>")?;
    Some(
        xml[start..start + len]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// Each `<disk>...</disk>` element of a domain's XML with its target dev.
fn disk_elements(xml: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<disk ") {
        let Some(len) = rest[start..].find("</disk>") else {
            break;
        };
        let element = &rest[start..start + len + "</disk>".len()];
        let target = element.find("<target dev=").and_then(|i| {
            let v = &element[i + "<target dev=".len()..];
            let q = v.chars().next()?;
            let v = &v[1..];
            v.find(q).map(|end| v[..end].to_string())
        });
        out.push((target, element.to_string()));
        rest = &rest[start + len..];
    }
    out
}

fn find_disk_element(xml: &str, target: &str) -> Option<String> {
    disk_elements(xml)
        .into_iter()
        .find(|(t, _)| t.as_deref() == Some(target))
        .map(|(_, e)| e)
}
