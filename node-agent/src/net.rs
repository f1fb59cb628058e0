//! Host networking for the node's guests: a libvirt network (bridge,
//! dnsmasq serving only the IPAM reservations) per Network in use on this
//! node, and one iptables ruleset for everything Corral filters or
//! translates: security groups, anti-spoofing, isolation, masquerade,
//! floating addresses and the metadata redirect.
//!
//! Everything here is computed from a [`NetPlan`] (what should exist) and
//! applied whole: the rules go in as one `iptables-restore --noflush`
//! transaction per table, so a change reaches running guests within one
//! sync and nothing that no longer belongs to a plan survives it.
//!
//! Where the rules live, and why:
//! - Filtering is in the `mangle` table's FORWARD and INPUT hooks, which run
//!   before `filter`: libvirt and other tools add ACCEPT rules to `filter`,
//!   and a DROP in `mangle` is final whatever they do. Bridged guest-to-guest
//!   frames reach those hooks through br_netfilter (`bridge-nf-call-iptables`).
//! - Traffic the host itself sends to a guest (its own connections, and
//!   floating addresses reached from the host) is filtered in `filter`
//!   OUTPUT, after the `nat` OUTPUT hook has translated it.
//! - Networks are libvirt `open` networks: libvirt adds no firewall rules of
//!   its own, so the only rules are these. `filter` FORWARD accepts what
//!   `mangle` let through, for hosts whose FORWARD policy is DROP.
//!
//! Nothing here writes Corral objects; the agent reports.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use corral_api_types::net::Ipv4Cidr;
use corral_api_types::{NetworkMode, Protocol};

use crate::hypervisor::xml_escape;

/// Where guests find the metadata service.
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Prefix of Corral's libvirt network names (`corral-<network uid>`).
pub const NETWORK_PREFIX: &str = "corral-";
/// Prefix of Corral's bridges (`crb` + 12 hex digits of the network uid).
pub const BRIDGE_PREFIX: &str = "crb";
/// Prefix of Corral's guest tap devices (`crt` + 10 hex digits of the
/// instance uid + the NIC index).
pub const TAP_PREFIX: &str = "crt";
/// Prefix of every iptables chain Corral owns.
pub const CHAIN_PREFIX: &str = "CORRAL-";

/// The libvirt network name for a Network.
pub fn network_name(network_uid: &str) -> String {
    format!("{NETWORK_PREFIX}{network_uid}")
}

fn hex_of(uid: &str, n: usize) -> String {
    uid.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .take(n)
        .collect()
}

/// The bridge device for a Network (at most 15 characters).
pub fn bridge_name(network_uid: &str) -> String {
    format!("{BRIDGE_PREFIX}{}", hex_of(network_uid, 12))
}

/// The tap device of an instance's NIC (at most 15 characters): one
/// digit for the NIC, as validation allows at most
/// [`corral_api_types::kinds::instance::MAX_NICS`] of them.
pub fn tap_name(instance_uid: &str, nic: usize) -> String {
    const _: () = assert!(corral_api_types::kinds::instance::MAX_NICS <= 10);
    debug_assert!(nic < corral_api_types::kinds::instance::MAX_NICS);
    format!("{TAP_PREFIX}{}{}", hex_of(instance_uid, 10), nic % 10)
}

/// One Network as this node runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDef {
    /// The Network's uid.
    pub uid: String,
    /// `project/name`, for messages.
    pub display: String,
    pub cidr: Ipv4Cidr,
    pub gateway: Ipv4Addr,
    pub mode: NetworkMode,
    pub dhcp: bool,
    pub dns_servers: Vec<String>,
    /// The existing host bridge (`bridged` mode).
    pub host_bridge: Option<String>,
    /// DHCP reservations: MAC -> (IP, hostname).
    pub hosts: BTreeMap<String, (Ipv4Addr, String)>,
}

impl NetDef {
    /// Whether Corral runs a libvirt network for it (all but `bridged`).
    pub fn managed(&self) -> bool {
        self.mode != NetworkMode::Bridged
    }

    pub fn bridge(&self) -> String {
        match &self.host_bridge {
            Some(b) if !self.managed() => b.clone(),
            _ => bridge_name(&self.uid),
        }
    }

    /// The libvirt network definition (transient: created, never defined).
    pub fn libvirt_xml(&self) -> String {
        let e = xml_escape;
        let mut x = String::from(
            "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>\n",
        );
        let _ = writeln!(x, "  <name>{}</name>", e(&network_name(&self.uid)));
        x.push_str("  <forward mode='open'/>\n");
        let _ = writeln!(
            x,
            "  <bridge name='{}' stp='off' delay='0'/>",
            e(&self.bridge())
        );
        let _ = writeln!(
            x,
            "  <ip address='{}' netmask='{}'>",
            self.gateway,
            self.cidr.netmask()
        );
        if self.dhcp {
            x.push_str("    <dhcp>\n");
            for (mac, (ip, host)) in &self.hosts {
                let _ = writeln!(
                    x,
                    "      <host mac='{}' ip='{}' name='{}'/>",
                    e(mac),
                    ip,
                    e(host)
                );
            }
            x.push_str("    </dhcp>\n");
        }
        x.push_str("  </ip>\n");
        if self.dhcp {
            // Classless static routes (RFC 3442): the metadata service is
            // reached through the gateway even on isolated networks, which
            // get no default route. A client given option 121 ignores the
            // router option, so the default route is repeated here.
            let routes = match self.mode {
                NetworkMode::Isolated => format!("{METADATA_IP}/32,{gw}", gw = self.gateway),
                _ => format!("{METADATA_IP}/32,{gw},0.0.0.0/0,{gw}", gw = self.gateway),
            };
            x.push_str("  <dnsmasq:options>\n");
            let _ = writeln!(x, "    <dnsmasq:option value='dhcp-option=121,{routes}'/>");
            let dns: Vec<&str> = self
                .dns_servers
                .iter()
                .map(String::as_str)
                .filter(|s| s.parse::<Ipv4Addr>().is_ok())
                .collect();
            if !dns.is_empty() {
                // What DHCP hands out (option 6); dnsmasq itself still
                // answers on the gateway.
                let _ = writeln!(
                    x,
                    "    <dnsmasq:option value='dhcp-option=6,{}'/>",
                    dns.join(",")
                );
            }
            if self.mode == NetworkMode::Isolated {
                // No router: an isolated network has no way out.
                x.push_str("    <dnsmasq:option value='dhcp-option=3'/>\n");
            }
            x.push_str("  </dnsmasq:options>\n");
        }
        x.push_str("</network>\n");
        x
    }

    /// The `<host>` element of one reservation, as `virNetworkUpdate`
    /// takes it.
    pub fn host_xml(mac: &str, ip: Ipv4Addr, name: &str) -> String {
        format!(
            "<host mac='{}' ip='{}' name='{}'/>",
            xml_escape(mac),
            ip,
            xml_escape(name)
        )
    }
}

/// One allow rule, resolved to concrete source (ingress) or destination
/// (egress) blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    pub protocol: Protocol,
    /// TCP/UDP port range, or ICMP type (from) and code (to); `None` = all.
    pub from_port: Option<i32>,
    pub to_port: Option<i32>,
    /// CIDR blocks (source groups already expanded to their members' /32s).
    pub peers: Vec<String>,
}

/// One instance NIC on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// `project/instance/nic`, for comments.
    pub display: String,
    pub tap: String,
    /// The Network's uid (it must be in the plan).
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub ingress: Vec<Allow>,
    /// `None`: no group of this NIC restricts egress.
    pub egress: Option<Vec<Allow>>,
    pub floating_ip: Option<Ipv4Addr>,
}

/// Everything this node's host networking should be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetPlan {
    pub networks: Vec<NetDef>,
    pub ports: Vec<Port>,
    /// Where the agent's metadata service listens (on every gateway).
    pub metadata_port: u16,
}

/// The iptables-restore input for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRules {
    pub table: &'static str,
    /// Corral chains and their rules, in order.
    pub chains: Vec<(String, Vec<String>)>,
    /// Built-in chain -> the Corral chain it jumps to first.
    pub hooks: Vec<(&'static str, String)>,
}

fn chain_key(tap: &str) -> String {
    tap.trim_start_matches(TAP_PREFIX).to_string()
}

fn allow_match(a: &Allow, dir_flag: &str, peer: &str) -> String {
    let mut m = String::new();
    if peer != "0.0.0.0/0" {
        let _ = write!(m, "{dir_flag} {peer} ");
    }
    match a.protocol {
        Protocol::All => {}
        Protocol::Tcp | Protocol::Udp => {
            let p = a.protocol.to_string();
            let _ = write!(m, "-p {p} ");
            match (a.from_port, a.to_port) {
                (Some(f), Some(t)) if f >= 0 && t >= 0 && !(f == 0 && t == 65535) => {
                    if f == t {
                        let _ = write!(m, "-m {p} --dport {f} ");
                    } else {
                        let _ = write!(m, "-m {p} --dport {f}:{t} ");
                    }
                }
                _ => {}
            }
        }
        Protocol::Icmp => {
            m.push_str("-p icmp ");
            match (a.from_port, a.to_port) {
                (Some(t), Some(c)) if t >= 0 && c >= 0 => {
                    let _ = write!(m, "-m icmp --icmp-type {t}/{c} ");
                }
                (Some(t), _) if t >= 0 => {
                    let _ = write!(m, "-m icmp --icmp-type {t} ");
                }
                _ => {}
            }
        }
        Protocol::Number(n) => {
            let _ = write!(m, "-p {n} ");
        }
    }
    m
}

fn allow_rules(out: &mut Vec<String>, allows: &[Allow], dir_flag: &str) {
    for a in allows {
        for peer in &a.peers {
            out.push(format!("{}-j RETURN", allow_match(a, dir_flag, peer)));
        }
    }
}

impl NetPlan {
    fn network(&self, uid: &str) -> Option<&NetDef> {
        self.networks.iter().find(|n| n.uid == uid)
    }

    /// The complete ruleset, per table. Empty when there is nothing to
    /// filter or translate.
    pub fn rules(&self) -> Vec<TableRules> {
        let mut mangle_fwd = Vec::new();
        let mut mangle_in = Vec::new();
        let mut filter_out = Vec::new();
        let mut filter_fwd = Vec::new();
        let mut nat_pre = Vec::new();
        let mut nat_out = Vec::new();
        let mut nat_post = Vec::new();
        let mut per_port: Vec<(String, Vec<String>)> = Vec::new();

        for p in &self.ports {
            let Some(net) = self.network(&p.network) else {
                continue;
            };
            let br = net.bridge();
            let key = chain_key(&p.tap);
            let (cin, cout) = (format!("CORRAL-I-{key}"), format!("CORRAL-E-{key}"));
            // Anti-spoofing: a guest sends only from its own address, which
            // is what lets the metadata service and source-group rules trust
            // source addresses. DHCP from 0.0.0.0 may reach the host only.
            mangle_in.push(format!(
                "-m physdev --physdev-in {tap} -s 0.0.0.0/32 -p udp -m udp --sport 68 --dport 67 -j RETURN",
                tap = p.tap
            ));
            mangle_in.push(format!(
                "-m physdev --physdev-in {tap} ! -s {ip}/32 -j DROP",
                tap = p.tap,
                ip = p.ip
            ));
            mangle_fwd.push(format!(
                "-m physdev --physdev-in {tap} ! -s {ip}/32 -j DROP",
                tap = p.tap,
                ip = p.ip
            ));
            // Egress, then ingress: a guest-to-guest packet passes both.
            mangle_fwd.push(format!(
                "-m physdev --physdev-in {tap} -j {cout}",
                tap = p.tap
            ));
            mangle_fwd.push(format!("-o {br} -d {ip}/32 -j {cin}", ip = p.ip));
            filter_out.push(format!("-o {br} -d {ip}/32 -j {cin}", ip = p.ip));

            let mut ingress = vec![
                "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN".to_string(),
                "-p udp -m udp --sport 67 --dport 68 -j RETURN".to_string(),
            ];
            allow_rules(&mut ingress, &p.ingress, "-s");
            ingress.push("-j DROP".into());
            let mut egress =
                vec!["-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN".to_string()];
            match &p.egress {
                None => egress.push("-j RETURN".into()),
                Some(allows) => {
                    allow_rules(&mut egress, allows, "-d");
                    egress.push("-j DROP".into());
                }
            }
            per_port.push((cin, ingress));
            per_port.push((cout, egress));

            if let Some(fip) = p.floating_ip {
                nat_pre.push(format!(
                    "-d {fip}/32 -j DNAT --to-destination {ip}",
                    ip = p.ip
                ));
                nat_out.push(format!(
                    "-d {fip}/32 -j DNAT --to-destination {ip}",
                    ip = p.ip
                ));
                // Guests of the same network reaching the floating address
                // get answers from it, not from the private one.
                nat_post.push(format!(
                    "-s {cidr} -d {ip}/32 -m conntrack --ctstate DNAT -j SNAT --to-source {gw}",
                    cidr = net.cidr,
                    ip = p.ip,
                    gw = net.gateway
                ));
                nat_post.push(format!(
                    "-s {ip}/32 ! -d {cidr} -j SNAT --to-source {fip}",
                    ip = p.ip,
                    cidr = net.cidr
                ));
            }
        }

        for n in &self.networks {
            let br = n.bridge();
            match n.mode {
                NetworkMode::Isolated => {
                    mangle_fwd.push(format!("-i {br} ! -o {br} -j DROP"));
                    mangle_fwd.push(format!("-o {br} ! -i {br} -j DROP"));
                }
                NetworkMode::Nat => {
                    nat_post.push(format!(
                        "-s {cidr} ! -d {cidr} -j MASQUERADE",
                        cidr = n.cidr
                    ));
                }
                NetworkMode::Bridged => {}
            }
            if n.managed() {
                filter_fwd.push(format!("-i {br} -j ACCEPT"));
                filter_fwd.push(format!("-o {br} -j ACCEPT"));
                // The metadata service, at the gateway.
                nat_pre.push(format!(
                    "-i {br} -d {METADATA_IP}/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination {gw}:{port}",
                    gw = n.gateway,
                    port = self.metadata_port
                ));
                // Guests reach the host for DHCP, DNS and metadata only.
                mangle_in.push(format!(
                    "-i {br} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
                ));
                mangle_in.push(format!("-i {br} -p udp -m udp --dport 67 -j RETURN"));
                mangle_in.push(format!("-i {br} -p udp -m udp --dport 53 -j RETURN"));
                mangle_in.push(format!("-i {br} -p tcp -m tcp --dport 53 -j RETURN"));
                mangle_in.push(format!(
                    "-i {br} -d {gw}/32 -p tcp -m tcp --dport {port} -j RETURN",
                    gw = n.gateway,
                    port = self.metadata_port
                ));
                mangle_in.push(format!("-i {br} -p icmp -j RETURN"));
                mangle_in.push(format!("-i {br} -j DROP"));
            }
        }
        if self.networks.iter().any(|n| n.managed()) {
            // Only guest networks reach the metadata service.
            mangle_in.push(format!(
                "-p tcp -m tcp --dport {} -j DROP",
                self.metadata_port
            ));
        }

        let mut out = Vec::new();
        let mut mangle_chains = vec![
            ("CORRAL-FORWARD".to_string(), mangle_fwd),
            ("CORRAL-INPUT".to_string(), mangle_in),
        ];
        mangle_chains.extend(per_port.clone());
        let mut filter_chains = vec![
            ("CORRAL-FORWARD".to_string(), filter_fwd),
            ("CORRAL-OUTPUT".to_string(), filter_out),
        ];
        // Host-to-guest traffic is judged by the same ingress chains.
        filter_chains.extend(
            per_port
                .into_iter()
                .filter(|(c, _)| c.starts_with("CORRAL-I-")),
        );
        if self.ports.is_empty() && self.networks.is_empty() {
            return out;
        }
        out.push(TableRules {
            table: "mangle",
            chains: mangle_chains,
            hooks: vec![
                ("FORWARD", "CORRAL-FORWARD".into()),
                ("INPUT", "CORRAL-INPUT".into()),
            ],
        });
        out.push(TableRules {
            table: "filter",
            chains: filter_chains,
            hooks: vec![
                ("FORWARD", "CORRAL-FORWARD".into()),
                ("OUTPUT", "CORRAL-OUTPUT".into()),
            ],
        });
        out.push(TableRules {
            table: "nat",
            chains: vec![
                ("CORRAL-PREROUTING".into(), nat_pre),
                ("CORRAL-OUTPUT".into(), nat_out),
                ("CORRAL-POSTROUTING".into(), nat_post),
            ],
            hooks: vec![
                ("PREROUTING", "CORRAL-PREROUTING".into()),
                ("OUTPUT", "CORRAL-OUTPUT".into()),
                ("POSTROUTING", "CORRAL-POSTROUTING".into()),
            ],
        });
        out
    }
}

/// Why the host's firewall could not be set.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("running {cmd}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
}

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, FirewallError> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let spawn = |source| FirewallError::Spawn {
        cmd: cmd.to_string(),
        source,
    };
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let Some(input) = stdin {
        if let Some(mut s) = child.stdin.take() {
            s.write_all(input.as_bytes()).map_err(spawn)?;
        }
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        return Err(FirewallError::Failed {
            cmd: format!("{cmd} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Corral's chains that exist in `table` now.
fn existing_chains(table: &str) -> Result<Vec<String>, FirewallError> {
    let dump = run("iptables-save", &["-t", table], None)?;
    Ok(dump
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.starts_with(CHAIN_PREFIX))
        .map(str::to_string)
        .collect())
}

/// The restore script that makes `table` hold exactly `rules` (`None`: no
/// Corral chains at all). Existing chains not wanted any more are flushed
/// and deleted; jumps from built-in chains to deleted chains go first.
pub fn restore_script(table: &str, rules: Option<&TableRules>, existing: &[String]) -> String {
    let mut s = format!("*{table}\n");
    write_chains(&mut s, rules, existing);
    s.push_str("COMMIT\n");
    s
}

/// The body of a restore: `rules`' chains declared (flushed) and filled,
/// then every chain of `existing` not among them flushed and deleted.
fn write_chains(s: &mut String, rules: Option<&TableRules>, existing: &[String]) {
    let wanted: Vec<&str> = rules
        .map(|r| r.chains.iter().map(|(c, _)| c.as_str()).collect())
        .unwrap_or_default();
    if let Some(r) = rules {
        for (c, _) in &r.chains {
            let _ = writeln!(s, ":{c} - [0:0]");
        }
        for (c, lines) in &r.chains {
            for l in lines {
                let _ = writeln!(s, "-A {c} {l}");
            }
        }
    }
    // Flush every unwanted chain before deleting any: they may jump to
    // each other.
    let stale: Vec<&String> = existing
        .iter()
        .filter(|c| !wanted.contains(&c.as_str()))
        .collect();
    for c in &stale {
        let _ = writeln!(s, "-F {c}");
    }
    for c in &stale {
        let _ = writeln!(s, "-X {c}");
    }
}

/// Jump rules from built-in chains, first in line.
fn ensure_hooks(table: &str, hooks: &[(&'static str, String)]) -> Result<(), FirewallError> {
    for (builtin, chain) in hooks {
        let listing = run("iptables", &["-w", "-t", table, "-S", builtin], None)?;
        let jump = format!("-A {builtin} -j {chain}");
        let rules: Vec<&str> = listing.lines().filter(|l| l.starts_with("-A ")).collect();
        if rules.first() == Some(&jump.as_str())
            && rules.iter().filter(|l| **l == jump).count() == 1
        {
            continue;
        }
        // Not first (someone inserted above us) or duplicated: redo.
        while run(
            "iptables",
            &["-w", "-t", table, "-D", builtin, "-j", chain],
            None,
        )
        .is_ok()
        {}
        run(
            "iptables",
            &["-w", "-t", table, "-I", builtin, "1", "-j", chain],
            None,
        )?;
    }
    Ok(())
}

fn remove_hooks(table: &str) -> Result<(), FirewallError> {
    let listing = run("iptables", &["-w", "-t", table, "-S"], None)?;
    for l in listing.lines() {
        let Some(rest) = l.strip_prefix("-A ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(builtin), Some("-j"), Some(target), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !builtin.starts_with(CHAIN_PREFIX) && target.starts_with(CHAIN_PREFIX) {
            run(
                "iptables",
                &["-w", "-t", table, "-D", builtin, "-j", target],
                None,
            )?;
        }
    }
    Ok(())
}

/// Bridged guest-to-guest traffic passes iptables only with br_netfilter
/// on (`bridge-nf-call-iptables`); without it security groups between
/// guests of one network would not hold, so this is an error.
fn ensure_bridge_netfilter() -> Result<(), FirewallError> {
    let knob = std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
    if !knob.exists() {
        // A module on most distributions; built in on some kernels.
        let _ = run("modprobe", &["br_netfilter"], None);
    }
    let ok = std::fs::read_to_string(knob).is_ok_and(|v| v.trim() == "1")
        || std::fs::write(knob, "1").is_ok();
    if !ok {
        return Err(FirewallError::Failed {
            cmd: "enabling br_netfilter".into(),
            stderr: format!(
                "{} is missing or read-only: security groups cannot filter bridged traffic",
                knob.display()
            ),
        });
    }
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
    Ok(())
}

/// Makes the host's iptables hold exactly `plan`'s rules. Idempotent; an
/// empty plan removes every Corral chain and jump.
pub fn apply_firewall(plan: &NetPlan) -> Result<(), FirewallError> {
    let rules = plan.rules();
    if !rules.is_empty() {
        ensure_bridge_netfilter()?;
    }
    for table in ["mangle", "filter", "nat"] {
        let want = rules.iter().find(|r| r.table == table);
        let existing = existing_chains(table)?;
        if want.is_none() {
            if existing.is_empty() {
                continue;
            }
            remove_hooks(table)?;
        }
        let script = restore_script(table, want, &existing);
        run("iptables-restore", &["-w", "--noflush"], Some(&script))?;
        if let Some(r) = want {
            ensure_hooks(table, &r.hooks)?;
        }
    }
    Ok(())
}

/// Moves the host's iptables from `applied` (what this agent made it hold
/// last, and found intact when it last reasserted it) to `plan`, with one
/// `iptables-restore` per table whose Corral rules changed: the chains,
/// and the jumps from built-in chains deleted or inserted in the same
/// transaction. Nothing is read back: the periodic full [`apply_firewall`]
/// repairs what someone else changed meanwhile. If a restore fails (a
/// chain or jump removed by hand, say), it does the full apply instead.
/// Returns whether it had to.
pub fn update_firewall(applied: &NetPlan, plan: &NetPlan) -> Result<bool, FirewallError> {
    let before = applied.rules();
    let after = plan.rules();
    if after.iter().any(|r| !r.chains.is_empty()) && !before.iter().any(|r| !r.chains.is_empty()) {
        ensure_bridge_netfilter()?;
    }
    for table in ["mangle", "filter", "nat"] {
        let old = before.iter().find(|r| r.table == table);
        let new = after.iter().find(|r| r.table == table);
        let Some(script) = update_script(table, old, new) else {
            continue;
        };
        if let Err(e) = run("iptables-restore", &["-w", "--noflush"], Some(&script)) {
            tracing::warn!(table, error = %e, "incremental firewall update failed; reapplying in full");
            apply_firewall(plan)?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// The restore script that takes `table` from `old` to `new` (both as
/// this agent wrote them), or `None` if they are the same.
pub fn update_script(
    table: &str,
    old: Option<&TableRules>,
    new: Option<&TableRules>,
) -> Option<String> {
    if old == new {
        return None;
    }
    let no_hooks = Vec::new();
    let old_hooks = old.map_or(&no_hooks, |r| &r.hooks);
    let new_hooks = new.map_or(&no_hooks, |r| &r.hooks);
    let existing: Vec<String> = old
        .map(|r| r.chains.iter().map(|(c, _)| c.clone()).collect())
        .unwrap_or_default();
    let mut s = format!("*{table}\n");
    // Jumps that go: before their chains may be deleted.
    for (builtin, chain) in old_hooks.iter().filter(|h| !new_hooks.contains(h)) {
        let _ = writeln!(s, "-D {builtin} -j {chain}");
    }
    write_chains(&mut s, new, &existing);
    // New jumps, first in line, once their chains exist.
    for (builtin, chain) in new_hooks.iter().filter(|h| !old_hooks.contains(h)) {
        let _ = writeln!(s, "-I {builtin} 1 -j {chain}");
    }
    s.push_str("COMMIT\n");
    Some(s)
}

/// A DHCP lease dnsmasq handed out, from libvirt's status file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub mac: String,
    pub ip: Ipv4Addr,
}

/// The leases on a Corral bridge (`/var/lib/libvirt/dnsmasq/<bridge>.status`).
pub fn leases(bridge: &str) -> Vec<Lease> {
    let path = format!("/var/lib/libvirt/dnsmasq/{bridge}.status");
    std::fs::read_to_string(path)
        .map(|text| parse_leases(&text))
        .unwrap_or_default()
}

/// Whether the NICs behind `taps` hold DHCP leases for exactly their
/// allocated addresses: (all do, reason, message) for `AddressLeased`.
/// NICs on networks Corral serves no DHCP for are not judged.
pub fn lease_verdict(
    plan: &NetPlan,
    taps: &[String],
    leases_on: impl Fn(&str) -> Vec<Lease>,
) -> (bool, &'static str, String) {
    let mut waiting = Vec::new();
    for (idx, tap) in taps.iter().enumerate() {
        let Some(port) = plan.ports.iter().find(|p| &p.tap == tap) else {
            continue;
        };
        let Some(n) = plan.networks.iter().find(|n| n.uid == port.network) else {
            continue;
        };
        if !n.managed() || !n.dhcp {
            continue;
        }
        match leases_on(&n.bridge()).iter().find(|l| l.mac == port.mac) {
            Some(l) if l.ip == port.ip => {}
            Some(l) => {
                return (
                    false,
                    "LeaseMismatch",
                    format!(
                        "NIC {idx} ({}) holds a lease for {} but was allocated {}",
                        port.mac, l.ip, port.ip
                    ),
                )
            }
            None => waiting.push(format!("NIC {idx} ({})", port.mac)),
        }
    }
    if waiting.is_empty() {
        (true, "Leased", String::new())
    } else {
        (
            false,
            "WaitingForLease",
            format!("no DHCP lease yet for {}", waiting.join(", ")),
        )
    }
}

/// Leases from libvirt's dnsmasq status file (a JSON array).
pub fn parse_leases(text: &str) -> Vec<Lease> {
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(text)
    else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|l| {
            Some(Lease {
                mac: l["mac-address"].as_str()?.to_ascii_lowercase(),
                ip: l["ip-address"].as_str()?.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(mode: NetworkMode) -> NetDef {
        NetDef {
            uid: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
            display: "p/lan".into(),
            cidr: "10.42.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 42, 0, 1),
            mode,
            dhcp: true,
            dns_servers: vec![],
            host_bridge: None,
            hosts: BTreeMap::from([(
                "52:54:00:00:00:01".to_string(),
                (Ipv4Addr::new(10, 42, 0, 5), "web'<1>".to_string()),
            )]),
        }
    }

    #[test]
    fn names_fit_linux_interface_names() {
        let uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        assert_eq!(bridge_name(uid), "crb0f1e2d3c4b5a");
        assert!(bridge_name(uid).len() <= 15);
        assert_eq!(tap_name(uid, 3), "crt0f1e2d3c4b3");
        assert!(tap_name(uid, 3).len() <= 15);
    }

    #[test]
    fn network_xml_reserves_only_ipam_addresses_and_escapes() {
        let x = net(NetworkMode::Nat).libvirt_xml();
        assert!(x.contains("<forward mode='open'/>"), "{x}");
        assert!(x.contains("<bridge name='crb0f1e2d3c4b5a'"), "{x}");
        assert!(
            x.contains("<host mac='52:54:00:00:00:01' ip='10.42.0.5' name='web&apos;&lt;1&gt;'/>"),
            "{x}"
        );
        assert!(!x.contains("<range"), "no dynamic pool: {x}");
        assert!(
            x.contains("dhcp-option=121,169.254.169.254/32,10.42.0.1,0.0.0.0/0,10.42.0.1"),
            "{x}"
        );
        let iso = net(NetworkMode::Isolated).libvirt_xml();
        assert!(
            iso.contains("dhcp-option=121,169.254.169.254/32,10.42.0.1'"),
            "{iso}"
        );
        assert!(iso.contains("dhcp-option=3'"), "{iso}");
    }

    fn port(ingress: Vec<Allow>, egress: Option<Vec<Allow>>) -> Port {
        Port {
            display: "p/web/0".into(),
            tap: "crtabcdef01230".into(),
            network: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
            ip: Ipv4Addr::new(10, 42, 0, 5),
            mac: "52:54:00:00:00:01".into(),
            ingress,
            egress,
            floating_ip: Some(Ipv4Addr::new(192, 0, 2, 10)),
        }
    }

    fn chain<'a>(rules: &'a [TableRules], table: &str, chain: &str) -> &'a [String] {
        &rules
            .iter()
            .find(|r| r.table == table)
            .unwrap()
            .chains
            .iter()
            .find(|(c, _)| c == chain)
            .unwrap_or_else(|| panic!("{table} {chain}"))
            .1
    }

    #[test]
    fn rules_allow_only_what_groups_say() {
        let plan = NetPlan {
            networks: vec![net(NetworkMode::Nat)],
            ports: vec![port(
                vec![
                    Allow {
                        protocol: Protocol::Tcp,
                        from_port: Some(80),
                        to_port: Some(80),
                        peers: vec!["10.42.0.6/32".into()],
                    },
                    Allow {
                        protocol: Protocol::Icmp,
                        from_port: Some(-1),
                        to_port: Some(-1),
                        peers: vec!["0.0.0.0/0".into()],
                    },
                ],
                None,
            )],
            metadata_port: 8775,
        };
        let r = plan.rules();
        let ingress = chain(&r, "mangle", "CORRAL-I-abcdef01230");
        assert_eq!(
            ingress,
            [
                "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                "-p udp -m udp --sport 67 --dport 68 -j RETURN",
                "-s 10.42.0.6/32 -p tcp -m tcp --dport 80 -j RETURN",
                "-p icmp -j RETURN",
                "-j DROP",
            ]
        );
        assert_eq!(
            chain(&r, "mangle", "CORRAL-E-abcdef01230").last().unwrap(),
            "-j RETURN",
            "no egress rule: unrestricted"
        );
        let fwd = chain(&r, "mangle", "CORRAL-FORWARD");
        assert!(fwd.contains(
            &"-m physdev --physdev-in crtabcdef01230 ! -s 10.42.0.5/32 -j DROP".to_string()
        ));
        let pre = chain(&r, "nat", "CORRAL-PREROUTING");
        assert!(pre.contains(&"-d 192.0.2.10/32 -j DNAT --to-destination 10.42.0.5".to_string()));
        assert!(pre.contains(&"-i crb0f1e2d3c4b5a -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.42.0.1:8775".to_string()));
        let post = chain(&r, "nat", "CORRAL-POSTROUTING");
        assert!(post.contains(&"-s 10.42.0.0/24 ! -d 10.42.0.0/24 -j MASQUERADE".to_string()));
        // Host-to-guest traffic meets the same ingress chain.
        assert!(chain(&r, "filter", "CORRAL-OUTPUT")
            .contains(&"-o crb0f1e2d3c4b5a -d 10.42.0.5/32 -j CORRAL-I-abcdef01230".to_string()));
    }

    #[test]
    fn egress_rules_restrict_and_isolated_networks_have_no_way_out() {
        let plan = NetPlan {
            networks: vec![net(NetworkMode::Isolated)],
            ports: vec![port(
                vec![],
                Some(vec![Allow {
                    protocol: Protocol::Udp,
                    from_port: Some(53),
                    to_port: Some(53),
                    peers: vec!["10.0.0.0/8".into()],
                }]),
            )],
            metadata_port: 8775,
        };
        let r = plan.rules();
        assert_eq!(
            chain(&r, "mangle", "CORRAL-E-abcdef01230"),
            [
                "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                "-d 10.0.0.0/8 -p udp -m udp --dport 53 -j RETURN",
                "-j DROP"
            ]
        );
        let fwd = chain(&r, "mangle", "CORRAL-FORWARD");
        assert!(fwd.contains(&"-i crb0f1e2d3c4b5a ! -o crb0f1e2d3c4b5a -j DROP".to_string()));
        assert!(!chain(&r, "nat", "CORRAL-POSTROUTING")
            .iter()
            .any(|l| l.contains("MASQUERADE")));
    }

    #[test]
    fn leases_are_judged_against_the_allocation() {
        // As libvirt's leases helper writes the status file.
        let status = r#"[
          {"ip-address": "10.42.0.5", "mac-address": "52:54:00:00:00:01",
           "hostname": "web", "expiry-time": 1764100000}
        ]"#;
        let leases = parse_leases(status);
        assert_eq!(
            leases,
            [Lease {
                mac: "52:54:00:00:00:01".into(),
                ip: Ipv4Addr::new(10, 42, 0, 5)
            }]
        );
        let plan = NetPlan {
            networks: vec![net(NetworkMode::Nat)],
            ports: vec![port(vec![], None)],
            metadata_port: 8775,
        };
        let taps = ["crtabcdef01230".to_string()];
        let bridge = net(NetworkMode::Nat).bridge();
        let on = |l: Vec<Lease>| {
            let bridge = bridge.clone();
            move |b: &str| if b == bridge { l.clone() } else { Vec::new() }
        };
        assert_eq!(
            lease_verdict(&plan, &taps, on(leases.clone())),
            (true, "Leased", String::new())
        );
        let (ok, why, msg) = lease_verdict(&plan, &taps, on(Vec::new()));
        assert_eq!((ok, why), (false, "WaitingForLease"), "{msg}");
        let other = parse_leases(&status.replace("10.42.0.5", "10.42.0.99"));
        let (ok, why, msg) = lease_verdict(&plan, &taps, on(other));
        assert_eq!((ok, why), (false, "LeaseMismatch"));
        assert!(
            msg.contains("10.42.0.99") && msg.contains("10.42.0.5"),
            "{msg}"
        );
        assert!(parse_leases("not json").is_empty());
    }

    #[test]
    fn restore_removes_what_is_no_longer_planned() {
        let existing = vec!["CORRAL-FORWARD".to_string(), "CORRAL-I-old".to_string()];
        let s = restore_script("mangle", None, &existing);
        assert_eq!(
            s,
            "*mangle\n-F CORRAL-FORWARD\n-F CORRAL-I-old\n-X CORRAL-FORWARD\n-X CORRAL-I-old\nCOMMIT\n"
        );
        let plan = NetPlan {
            networks: vec![net(NetworkMode::Nat)],
            ports: vec![],
            metadata_port: 8775,
        };
        let rules = plan.rules();
        let s = restore_script(
            "mangle",
            rules.iter().find(|r| r.table == "mangle"),
            &existing,
        );
        assert!(s.contains(":CORRAL-FORWARD - [0:0]\n"), "{s}");
        assert!(s.contains("-X CORRAL-I-old\n"), "{s}");
        assert!(!s.contains("-X CORRAL-FORWARD"), "{s}");
    }
}
