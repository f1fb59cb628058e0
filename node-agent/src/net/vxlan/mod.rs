//! The kernel data path of overlay Networks: per Network, a VXLAN device
//! enslaved to the Network's bridge with learning off ([`ensure_overlay`]),
//! its forwarding database programmed from the store ([`sync_fdb`]: one
//! all-zero flood entry per peer node, one entry per remote guest MAC),
//! the sweep of devices no Network wants any more
//! ([`remove_overlays_except`]) and the ebtables guard that keeps DHCP and
//! the distributed gateway's ARP on their own node ([`guard_tunnel`]).
//!
//! Runs `ip`, `bridge`, `ebtables` and `ebtables-restore` through
//! command.rs, on the host or inside a network namespace ([`Shell`]);
//! blocking. Device names come from names.rs.
//!
//! What lives where: running the commands on a [`Shell`], the errors, the
//! checks of names and MACs and the device itself ([`Overlay`],
//! [`ensure_overlay`], [`remove_overlays_except`]) here; the forwarding
//! database (fdb.rs); the ebtables guard (guard.rs).

use super::command::{self, CommandError, Failure, Shell};
use std::net::Ipv4Addr;

use serde::Deserialize;

mod fdb;
mod guard;

pub use super::names::{vxlan_name, VXLAN_PREFIX};
pub use fdb::{sync_fdb, Fdb, FdbChange};
pub use guard::{guard_tunnel, GUARD_CHAIN};

/// The IANA VXLAN port, what [`Overlay::port`] normally is.
pub const VXLAN_PORT: u16 = 4789;
/// The FDB entries whose MAC is all zero: where broadcast, multicast and
/// unknown unicast frames go (one per peer node).
const FLOOD_MAC: &str = "00:00:00:00:00:00";
/// VNIs are 24 bits.
const MAX_VNI: u32 = (1 << 24) - 1;

/// Why the overlay data path could not be set.
#[derive(Debug, thiserror::Error)]
pub enum VxlanError {
    #[error("running {cmd}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("reading what {cmd} printed")]
    Parse {
        cmd: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{cmd} printed {what}")]
    Unexpected { cmd: String, what: String },
    #[error("device {device} does not exist")]
    Missing { device: String },
    #[error("{mac:?} is not a guest MAC address: {why}")]
    BadMac { mac: String, why: &'static str },
    #[error("{name:?} is not a network interface name")]
    BadName { name: String },
    #[error("VNI {vni} is out of range (at most {MAX_VNI})")]
    BadVni { vni: u32 },
}

impl From<CommandError> for VxlanError {
    fn from(e: CommandError) -> VxlanError {
        match e.failure {
            Failure::Spawn(source) => VxlanError::Spawn { cmd: e.cmd, source },
            Failure::Exit(stderr) => VxlanError::Failed { cmd: e.cmd, stderr },
        }
    }
}

// Where the commands run (the type lives with command.rs, which the
// firewall shares); the overlay's own ways of running them.
impl Shell {
    /// The command line that runs `prog args...`, for messages.
    fn describe(&self, prog: &str, args: &[&str]) -> String {
        command::describe(self.netns(), prog, args)
    }

    /// Runs `prog args...` (with `stdin` fed to it), answering its stdout;
    /// a non-zero exit is an error carrying its stderr.
    fn run(&self, prog: &str, args: &[&str], stdin: Option<&str>) -> Result<String, VxlanError> {
        Ok(command::run(self.netns(), prog, args, stdin)?)
    }

    /// Runs a command that prints a JSON array (`ip -j`, `bridge -j`).
    fn json<T: for<'de> Deserialize<'de>>(
        &self,
        prog: &str,
        args: &[&str],
    ) -> Result<Vec<T>, VxlanError> {
        let out = self.run(prog, args, None)?;
        parse_json(&out).map_err(|source| VxlanError::Parse {
            cmd: self.describe(prog, args),
            source,
        })
    }
}

/// A JSON array as `ip -j` and `bridge -j` print it (nothing at all when
/// there is nothing to list).
fn parse_json<T: for<'de> Deserialize<'de>>(out: &str) -> Result<Vec<T>, serde_json::Error> {
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(out)
}

/// One overlay Network's device on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The VXLAN device ([`vxlan_name`]).
    pub device: String,
    /// The Network's bridge (made by libvirt), which the device joins.
    pub bridge: String,
    pub vni: u32,
    /// This node's underlay address: the tunnels' source.
    pub local: Ipv4Addr,
    /// UDP destination port ([`VXLAN_PORT`] normally).
    pub port: u16,
    /// The underlay device to bind the tunnel to, if any.
    pub underlay: Option<String>,
    /// MTU of the device and of the bridge (the underlay's less 50).
    pub mtu: u32,
    /// The Network's gateway, which every node holds (same IP and MAC).
    pub gateway: Ipv4Addr,
}

/// A link as `ip -d -j link show` prints it (only what is read here).
#[derive(Debug, Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    master: Option<String>,
    #[serde(default)]
    linkinfo: Option<LinkInfo>,
}

#[derive(Debug, Deserialize)]
struct LinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
    #[serde(default)]
    info_data: Option<serde_json::Value>,
}

impl Link {
    /// Whether this is a VXLAN device made as `o` asks.
    fn is_overlay(&self, o: &Overlay) -> bool {
        let Some(info) = &self.linkinfo else {
            return false;
        };
        let Some(data) = info.info_data.as_ref() else {
            return false;
        };
        info.info_kind.as_deref() == Some("vxlan")
            && data.get("id").and_then(|v| v.as_u64()) == Some(u64::from(o.vni))
            && data.get("local").and_then(|v| v.as_str()) == Some(o.local.to_string().as_str())
            && data.get("port").and_then(|v| v.as_u64()) == Some(u64::from(o.port))
            && data.get("learning").and_then(|v| v.as_bool()) == Some(false)
            && data.get("link").and_then(|v| v.as_str()) == o.underlay.as_deref()
    }

    fn is_up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }
}

/// A bridge port as `bridge -d -j link show` prints it.
#[derive(Debug, Deserialize)]
struct BridgePort {
    #[serde(default)]
    learning: Option<bool>,
}

/// Linux interface names: 1 to 15 bytes, no `/`, `:` or whitespace; and
/// none that `ip` could read as an option.
fn check_ifname(name: &str) -> Result<(), VxlanError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(VxlanError::BadName {
            name: name.to_string(),
        })
    }
}

/// A guest MAC, lowercased: six hex pairs, unicast, not all zero.
fn guest_mac(mac: &str) -> Result<String, VxlanError> {
    let bad = |why| VxlanError::BadMac {
        mac: mac.to_string(),
        why,
    };
    let pairs: Vec<&str> = mac.split(':').collect();
    if pairs.len() != 6
        || !pairs
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(bad("not six hex pairs"));
    }
    let mac = mac.to_ascii_lowercase();
    if mac == FLOOD_MAC {
        return Err(bad("all zero"));
    }
    if u8::from_str_radix(pairs[0], 16).is_ok_and(|b| b & 1 == 1) {
        return Err(bad("multicast"));
    }
    Ok(mac)
}

/// The link named `name`, if there is one.
fn show_link(sh: &Shell, name: &str) -> Result<Option<Link>, VxlanError> {
    match sh.json::<Link>("ip", &["-d", "-j", "link", "show", "dev", name]) {
        Ok(links) => Ok(links.into_iter().find(|l| l.ifname == name)),
        Err(VxlanError::Failed { stderr, .. }) if stderr.contains("does not exist") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes `o.device` a VXLAN device as `o` describes, enslaved to
/// `o.bridge` and up, with learning off both in the device and on its
/// bridge port, and the device and the bridge at `o.mtu`. A device of
/// that name made otherwise (other VNI, address, port or underlay) is
/// deleted and made anew, which empties its forwarding database: call
/// [`sync_fdb`] after. Idempotent: nothing is changed that is already so.
pub fn ensure_overlay(sh: &Shell, o: &Overlay) -> Result<(), VxlanError> {
    check_ifname(&o.device)?;
    check_ifname(&o.bridge)?;
    if let Some(u) = &o.underlay {
        check_ifname(u)?;
    }
    if o.vni > MAX_VNI {
        return Err(VxlanError::BadVni { vni: o.vni });
    }
    let dev = o.device.as_str();
    let link = match show_link(sh, dev)? {
        Some(l) if l.is_overlay(o) => l,
        found => {
            if found.is_some() {
                tracing::info!(
                    device = dev,
                    vni = o.vni,
                    "VXLAN device differs; recreating"
                );
                sh.run("ip", &["link", "del", "dev", dev], None)?;
            } else {
                tracing::info!(device = dev, vni = o.vni, "creating VXLAN device");
            }
            let (vni, local, port) = (o.vni.to_string(), o.local.to_string(), o.port.to_string());
            let mut args = vec![
                "link",
                "add",
                "name",
                dev,
                "type",
                "vxlan",
                "id",
                &vni,
                "local",
                &local,
                "dstport",
                &port,
                "nolearning",
            ];
            if let Some(u) = &o.underlay {
                args.extend(["dev", u.as_str()]);
            }
            sh.run("ip", &args, None)?;
            show_link(sh, dev)?.ok_or_else(|| VxlanError::Missing {
                device: dev.to_string(),
            })?
        }
    };

    let mtu = o.mtu.to_string();
    let mut set = vec!["link", "set", "dev", dev];
    if link.mtu != o.mtu {
        set.extend(["mtu", mtu.as_str()]);
    }
    if link.master.as_deref() != Some(o.bridge.as_str()) {
        set.extend(["master", o.bridge.as_str()]);
    }
    if !link.is_up() {
        set.push("up");
    }
    if set.len() > 4 {
        tracing::debug!(device = dev, bridge = %o.bridge, "setting VXLAN device");
        sh.run("ip", &set, None)?;
    }

    let bridge = show_link(sh, &o.bridge)?.ok_or_else(|| VxlanError::Missing {
        device: o.bridge.clone(),
    })?;
    if bridge.mtu != o.mtu {
        tracing::debug!(bridge = %o.bridge, mtu = o.mtu, "setting bridge MTU");
        sh.run("ip", &["link", "set", "dev", &o.bridge, "mtu", &mtu], None)?;
    }

    let port: Vec<BridgePort> = sh.json("bridge", &["-d", "-j", "link", "show", "dev", dev])?;
    if port.iter().any(|p| p.learning != Some(false)) || port.is_empty() {
        sh.run(
            "bridge",
            &["link", "set", "dev", dev, "learning", "off"],
            None,
        )?;
    }
    Ok(())
}

/// Deletes every link named with [`VXLAN_PREFIX`] that is not in `keep`,
/// answering the names deleted (one that vanishes meanwhile is not).
pub fn remove_overlays_except(sh: &Shell, keep: &[String]) -> Result<Vec<String>, VxlanError> {
    let links: Vec<Link> = sh.json("ip", &["-j", "link", "show"])?;
    let mut removed = Vec::new();
    for l in links {
        if !l.ifname.starts_with(VXLAN_PREFIX) || keep.contains(&l.ifname) {
            continue;
        }
        check_ifname(&l.ifname)?;
        match sh.run("ip", &["link", "del", "dev", &l.ifname], None) {
            Ok(_) => {
                tracing::info!(device = %l.ifname, "removed VXLAN device");
                removed.push(l.ifname);
            }
            Err(VxlanError::Failed { stderr, .. })
                if stderr.contains("Cannot find device") || stderr.contains("does not exist") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn overlay(device: &str, gw: [u8; 4]) -> Overlay {
        Overlay {
            device: device.into(),
            bridge: "crb0f1e2d3c4b5a".into(),
            vni: 42,
            local: Ipv4Addr::new(192, 0, 2, 1),
            port: VXLAN_PORT,
            underlay: None,
            mtu: 1450,
            gateway: Ipv4Addr::from(gw),
        }
    }

    #[test]
    fn bad_names_and_vnis_are_refused() {
        for name in ["", "-x", "a/b", "a b", "a:b", "sixteen-chars-xx", ".."] {
            assert!(matches!(
                check_ifname(name),
                Err(VxlanError::BadName { .. })
            ));
        }
        check_ifname("cvx0f1e2d3c4b5a").unwrap();
        let sh = Shell::in_netns("/nonexistent");
        let mut o = overlay("cvx0", [10, 0, 0, 1]);
        o.vni = 1 << 24;
        assert!(matches!(
            ensure_overlay(&sh, &o),
            Err(VxlanError::BadVni { vni: 16_777_216 })
        ));
        o.vni = 1;
        o.bridge = "br -x".into();
        assert!(matches!(
            ensure_overlay(&sh, &o),
            Err(VxlanError::BadName { .. })
        ));
        assert!(matches!(
            guard_tunnel(&sh, &[overlay("a b", [10, 0, 0, 1])]),
            Err(VxlanError::BadName { .. })
        ));
    }

    #[test]
    fn errors_name_the_command_and_its_stderr_once() {
        let err = Shell::host()
            .run("ip", &["link", "show", "dev", "cvxnosuchdev0"], None)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("ip link show dev cvxnosuchdev0 failed: "),
            "{msg}"
        );
        assert_eq!(msg.matches("does not exist").count(), 1, "{msg}");
        let err = Shell::host()
            .run("corral-no-such-program", &[], None)
            .unwrap_err();
        assert_eq!(err.to_string(), "running corral-no-such-program");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn link_details_decide_whether_to_recreate() {
        let out = r#"[{"ifindex":4,"ifname":"cvx1","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],
            "mtu":1450,"master":"br0","linkinfo":{"info_kind":"vxlan","info_data":{"id":42,
            "local":"192.0.2.1","link":"ua","port":4789,"learning":false,"ttl":0}}}]"#;
        let link = parse_json::<Link>(out).unwrap().remove(0);
        let mut o = overlay("cvx1", [10, 0, 0, 1]);
        o.underlay = Some("ua".into());
        assert!(link.is_overlay(&o) && link.is_up());
        assert_eq!(link.master.as_deref(), Some("br0"));
        for change in [
            |o: &mut Overlay| o.vni = 43,
            |o: &mut Overlay| o.port = 4790,
            |o: &mut Overlay| o.local = Ipv4Addr::new(192, 0, 2, 9),
            |o: &mut Overlay| o.underlay = None,
        ] {
            let mut other = o.clone();
            change(&mut other);
            assert!(!link.is_overlay(&other), "{other:?}");
        }
        let bridge = r#"[{"ifindex":3,"ifname":"br0","flags":["UP"],"mtu":1500,
            "linkinfo":{"info_kind":"bridge","info_data":{"stp_state":0}}}]"#;
        let bridge = parse_json::<Link>(bridge).unwrap().remove(0);
        assert!(!bridge.is_overlay(&o));
    }
}
