//! [`Libvirt`]: the one [`Hypervisor`] implementation, for any libvirt
//! URI. It owns the connection (one, shared by every call, reopened with
//! backoff when libvirtd goes away) and maps each trait call to libvirt's.
//! The XML it writes and parses is in xml.rs.
//!
//! libvirt's test driver (`test:///…`, simulated hosts) keeps no device it
//! cannot run: domains are defined with their disks only, and disks are
//! added and removed by redefining the domain (the driver has no
//! persistent hot-plug). It must not decide anything about guests.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::Domain;

use super::xml::{
    corral_node, disk_elements, find_disk_element, host_elements, host_same, with_disk, without,
};
use super::{
    disk_xml, domain_name, DiskSpec, DomainInfo, DomainSpec, HostFacts, Hypervisor,
    HypervisorError, PowerState, Result, DOMAIN_PREFIX,
};

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
    pub(super) virt_type: String,
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

    /// Whether this is libvirt's test driver (a simulated host).
    pub(super) fn is_test(&self) -> bool {
        self.virt_type == "test"
    }

    /// On the test driver, which has no persistent hot-plug: redefines the
    /// domain with its inactive definition changed by `edit` (`None`:
    /// nothing to change).
    fn redefine(&self, name: &str, edit: impl Fn(&str) -> Option<String>) -> Result<()> {
        self.with_conn(|conn| {
            let dom = Self::lookup(conn, name)?
                .ok_or_else(|| HypervisorError::NoDomain(name.to_string()))?;
            let xml = dom.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)?;
            if let Some(changed) = edit(&xml) {
                conn.define_domain_xml(&changed)?;
            }
            Ok(())
        })
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
        if self.is_test() {
            let element = disk_xml(disk);
            return self.redefine(name, |xml| {
                find_disk_element(xml, &disk.target)
                    .is_none()
                    .then(|| with_disk(xml, &element))
                    .flatten()
            });
        }
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
        if self.is_test() {
            return self.redefine(name, |xml| {
                find_disk_element(xml, target).map(|disk| without(xml, &disk))
            });
        }
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
        // The test driver changes only the definition (see `redefine`).
        let flags = if self.is_test() {
            virt::sys::VIR_DOMAIN_XML_INACTIVE
        } else {
            0
        };
        self.with_domain(name, |d| {
            let xml = d.xml_desc(flags)?;
            Ok(disk_elements(&xml)
                .into_iter()
                .filter_map(|(t, _)| t)
                .collect())
        })
    }
}
