//! The iptables ruleset a [`NetPlan`] makes: per table, Corral's chains
//! and the jumps into them from the built-in chains (see the module doc
//! of `net` for where each rule lives and why). Its IPv6 counterpart, for
//! ip6tables, is firewall6.rs. Pure: iptables.rs writes them into the
//! host.

use std::fmt::Write as _;

use corral_api_types::net::spelled_ipv6;
use corral_api_types::{NetworkMode, Protocol};

use super::{Allow, NetDef, NetPlan, METADATA_IP, TAP_PREFIX};

/// The packet filter a ruleset is for: iptables (IPv4) or ip6tables
/// (IPv6). A plan makes one ruleset of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    /// Whether a rule's peer block is of this family ([`spelled_ipv6`],
    /// api-types' rule). Source groups expand to IPv4 /32s.
    pub(super) fn holds(self, peer: &str) -> bool {
        spelled_ipv6(peer) == (self == Family::Ipv6)
    }
}

/// The iptables-restore input for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRules {
    pub family: Family,
    pub table: &'static str,
    /// Corral chains and their rules, in order.
    pub chains: Vec<(String, Vec<String>)>,
    /// Built-in chain -> the Corral chain it jumps to first.
    pub hooks: Vec<(&'static str, String)>,
}

pub(super) fn chain_key(tap: &str) -> String {
    tap.trim_start_matches(TAP_PREFIX).to_string()
}

/// The match of one allow rule for one peer block, or `None` where it
/// can match nothing: an `icmp` rule (ICMP for IPv4, protocol 1) meets
/// no IPv6 packet, as in EC2; ICMPv6 is protocol 58 (`icmpv6`).
fn allow_match(a: &Allow, family: Family, dir_flag: &str, peer: &str) -> Option<String> {
    let mut m = String::new();
    if peer != "0.0.0.0/0" && peer != "::/0" {
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
        Protocol::Icmp if family == Family::Ipv6 => return None,
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
    Some(m)
}

/// One RETURN per allow rule and peer block of `family`.
pub(super) fn allow_rules(out: &mut Vec<String>, allows: &[Allow], family: Family, dir_flag: &str) {
    for a in allows {
        for peer in a.peers.iter().filter(|p| family.holds(p)) {
            if let Some(m) = allow_match(a, family, dir_flag, peer) {
                out.push(format!("{m}-j RETURN"));
            }
        }
    }
}

impl NetPlan {
    pub(super) fn network(&self, uid: &str) -> Option<&NetDef> {
        self.networks.iter().find(|n| n.uid == uid)
    }

    /// The complete ruleset of `family`, per table.
    pub fn ruleset(&self, family: Family) -> Vec<TableRules> {
        match family {
            Family::Ipv4 => self.rules(),
            Family::Ipv6 => self.rules_v6(),
        }
    }

    /// The complete IPv4 ruleset, per table. Empty when there is nothing
    /// to filter or translate.
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
            allow_rules(&mut ingress, &p.ingress, Family::Ipv4, "-s");
            ingress.push("-j DROP".into());
            let mut egress =
                vec!["-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN".to_string()];
            match &p.egress {
                None => egress.push("-j RETURN".into()),
                Some(allows) => {
                    allow_rules(&mut egress, allows, Family::Ipv4, "-d");
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
                NetworkMode::Nat | NetworkMode::Overlay => {
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
            family: Family::Ipv4,
            table: "mangle",
            chains: mangle_chains,
            hooks: vec![
                ("FORWARD", "CORRAL-FORWARD".into()),
                ("INPUT", "CORRAL-INPUT".into()),
            ],
        });
        out.push(TableRules {
            family: Family::Ipv4,
            table: "filter",
            chains: filter_chains,
            hooks: vec![
                ("FORWARD", "CORRAL-FORWARD".into()),
                ("OUTPUT", "CORRAL-OUTPUT".into()),
            ],
        });
        out.push(TableRules {
            family: Family::Ipv4,
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

#[cfg(test)]
mod tests {

    use super::super::fixtures::{chain, net, port};
    use super::*;

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
                        peers: vec!["0.0.0.0/0".into(), "::/0".into()],
                    },
                    // IPv6 blocks are ip6tables' (firewall6.rs).
                    Allow {
                        protocol: Protocol::All,
                        from_port: None,
                        to_port: None,
                        peers: vec!["2001:db8::/32".into()],
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
}
