//! The IPv6 ruleset a [`NetPlan`] makes, for ip6tables: the counterpart
//! of firewall.rs's IPv4 one, in the same places (`mangle` FORWARD and
//! INPUT, `filter` FORWARD) with the same chain names, so a guest's IPv6
//! meets its groups as its IPv4 does — ingress denied but for what a rule
//! allows, egress as the groups say (unrestricted when none restricts
//! it), replies always let through. What differs, and why:
//!
//! - Guests have no IPv6 address from Corral (link-local, or what they
//!   set themselves), so a guest's chains are found by its tap, not its
//!   address: egress by `--physdev-in`, ingress by `--physdev-out` of
//!   bridged frames (the kernel knows the outgoing port of nothing else
//!   in FORWARD).
//! - For the same reason there is no anti-spoofing: an IPv6 source block
//!   is as trustworthy as on any shared link, and `sourceGroup` rules
//!   (their members are IPv4 addresses) allow no IPv6.
//! - Neighbour discovery (ICMPv6 133-136) always passes both ways, as
//!   DHCP does for IPv4: without it no IPv6 address, link-local ones
//!   included, is ever reachable.
//! - No `nat` table: nothing is translated.
//! - Host-originated IPv6 is not matched to a guest (the port a frame
//!   leaves by is chosen after `filter` OUTPUT). Corral's own bridges
//!   carry no host IPv6 (libvirt disables IPv6 on a network without an
//!   IPv6 address); only a `bridged` Network's host bridge can.
//!
//! Pure: iptables.rs writes it into the host with ip6tables-restore.

use corral_api_types::NetworkMode;

use super::firewall::{allow_rules, chain_key, Family};
use super::{NetPlan, TableRules};

/// Neighbour discovery: router solicitation and advertisement, neighbour
/// solicitation and advertisement.
const NEIGHBOUR_DISCOVERY: [u8; 4] = [133, 134, 135, 136];

/// The rules every guest chain starts with: replies, and neighbour
/// discovery.
fn always_allowed() -> Vec<String> {
    let mut out = vec!["-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN".to_string()];
    for t in NEIGHBOUR_DISCOVERY {
        out.push(format!("-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j RETURN"));
    }
    out
}

impl NetPlan {
    /// The complete IPv6 ruleset, per table. Empty when there is nothing
    /// to filter.
    pub fn rules_v6(&self) -> Vec<TableRules> {
        let mut mangle_fwd = Vec::new();
        let mut mangle_in = Vec::new();
        let mut filter_fwd = Vec::new();
        let mut per_port: Vec<(String, Vec<String>)> = Vec::new();

        for p in &self.ports {
            if self.network(&p.network).is_none() {
                continue;
            }
            let key = chain_key(&p.tap);
            let (cin, cout) = (format!("CORRAL-I-{key}"), format!("CORRAL-E-{key}"));
            // Egress, then ingress: a guest-to-guest frame passes both.
            mangle_fwd.push(format!(
                "-m physdev --physdev-in {tap} -j {cout}",
                tap = p.tap
            ));
            mangle_fwd.push(format!(
                "-m physdev --physdev-out {tap} --physdev-is-bridged -j {cin}",
                tap = p.tap
            ));

            let mut ingress = always_allowed();
            allow_rules(&mut ingress, &p.ingress, Family::Ipv6, "-s");
            ingress.push("-j DROP".into());
            let mut egress = always_allowed();
            match &p.egress {
                None => egress.push("-j RETURN".into()),
                Some(allows) => {
                    allow_rules(&mut egress, allows, Family::Ipv6, "-d");
                    egress.push("-j DROP".into());
                }
            }
            per_port.push((cin, ingress));
            per_port.push((cout, egress));
        }

        for n in &self.networks {
            let br = n.bridge();
            if n.mode == NetworkMode::Isolated {
                mangle_fwd.push(format!("-i {br} ! -o {br} -j DROP"));
                mangle_fwd.push(format!("-o {br} ! -i {br} -j DROP"));
            }
            if n.managed() {
                filter_fwd.push(format!("-i {br} -j ACCEPT"));
                filter_fwd.push(format!("-o {br} -j ACCEPT"));
                // Guests reach the host for nothing over IPv6 but ICMPv6
                // and replies (DHCP, DNS and metadata are IPv4).
                mangle_in.push(format!(
                    "-i {br} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
                ));
                mangle_in.push(format!("-i {br} -p ipv6-icmp -j RETURN"));
                mangle_in.push(format!("-i {br} -j DROP"));
            }
        }

        if self.ports.is_empty() && self.networks.is_empty() {
            return Vec::new();
        }
        let mut mangle_chains = vec![
            ("CORRAL-FORWARD".to_string(), mangle_fwd),
            ("CORRAL-INPUT".to_string(), mangle_in),
        ];
        mangle_chains.extend(per_port);
        vec![
            TableRules {
                family: Family::Ipv6,
                table: "mangle",
                chains: mangle_chains,
                hooks: vec![
                    ("FORWARD", "CORRAL-FORWARD".into()),
                    ("INPUT", "CORRAL-INPUT".into()),
                ],
            },
            TableRules {
                family: Family::Ipv6,
                table: "filter",
                chains: vec![("CORRAL-FORWARD".to_string(), filter_fwd)],
                hooks: vec![("FORWARD", "CORRAL-FORWARD".into())],
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use corral_api_types::Protocol;

    use super::super::fixtures::{chain, net, port};
    use super::super::Allow;
    use super::*;

    fn allow(protocol: Protocol, ports: Option<(i32, i32)>, peers: &[&str]) -> Allow {
        Allow {
            protocol,
            from_port: ports.map(|p| p.0),
            to_port: ports.map(|p| p.1),
            peers: peers.iter().map(|p| p.to_string()).collect(),
        }
    }

    const ALWAYS: [&str; 5] = [
        "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "-p ipv6-icmp -m icmp6 --icmpv6-type 133 -j RETURN",
        "-p ipv6-icmp -m icmp6 --icmpv6-type 134 -j RETURN",
        "-p ipv6-icmp -m icmp6 --icmpv6-type 135 -j RETURN",
        "-p ipv6-icmp -m icmp6 --icmpv6-type 136 -j RETURN",
    ];

    fn with_always(rest: &[&str]) -> Vec<String> {
        ALWAYS.iter().chain(rest).map(|s| s.to_string()).collect()
    }

    #[test]
    fn ingress_admits_ipv6_blocks_only_and_neighbour_discovery_always() {
        let plan = NetPlan {
            networks: vec![net(NetworkMode::Nat)],
            ports: vec![port(
                vec![
                    allow(
                        Protocol::Tcp,
                        Some((22, 22)),
                        &["2001:db8::/32", "10.0.0.0/8"],
                    ),
                    // A source group's members: IPv4, nothing for IPv6.
                    allow(Protocol::Tcp, Some((80, 80)), &["10.42.0.6/32"]),
                    // ICMP is IPv4's; ICMPv6 is protocol 58.
                    allow(Protocol::Icmp, Some((-1, -1)), &["::/0"]),
                    allow(Protocol::Number(58), None, &["::/0"]),
                    allow(Protocol::Udp, Some((1000, 2000)), &["fd00::/8"]),
                ],
                None,
            )],
            metadata_port: 8775,
        };
        let r = plan.rules_v6();
        assert_eq!(
            r.iter().map(|t| t.table).collect::<Vec<_>>(),
            ["mangle", "filter"],
            "no nat table for IPv6"
        );
        assert!(r.iter().all(|t| t.family == Family::Ipv6));
        assert_eq!(
            chain(&r, "mangle", "CORRAL-I-abcdef01230"),
            with_always(&[
                "-s 2001:db8::/32 -p tcp -m tcp --dport 22 -j RETURN",
                "-p 58 -j RETURN",
                "-s fd00::/8 -p udp -m udp --dport 1000:2000 -j RETURN",
                "-j DROP",
            ])
        );
        assert_eq!(
            chain(&r, "mangle", "CORRAL-E-abcdef01230"),
            with_always(&["-j RETURN"]),
            "no egress rule: unrestricted"
        );
        assert_eq!(
            chain(&r, "mangle", "CORRAL-FORWARD"),
            [
                "-m physdev --physdev-in crtabcdef01230 -j CORRAL-E-abcdef01230",
                "-m physdev --physdev-out crtabcdef01230 --physdev-is-bridged -j CORRAL-I-abcdef01230",
            ]
        );
        assert_eq!(
            chain(&r, "mangle", "CORRAL-INPUT"),
            [
                "-i crb0f1e2d3c4b5a -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                "-i crb0f1e2d3c4b5a -p ipv6-icmp -j RETURN",
                "-i crb0f1e2d3c4b5a -j DROP",
            ]
        );
        assert_eq!(
            chain(&r, "filter", "CORRAL-FORWARD"),
            [
                "-i crb0f1e2d3c4b5a -j ACCEPT",
                "-o crb0f1e2d3c4b5a -j ACCEPT"
            ]
        );
        // No IPv6 block ever reaches the IPv4 ruleset.
        let v4 = plan.rules();
        assert!(v4
            .iter()
            .flat_map(|t| t.chains.iter().flat_map(|c| &c.1))
            .all(|l| !l.contains("::")));
        assert!(v4.iter().all(|t| t.family == Family::Ipv4));
    }

    #[test]
    fn egress_rules_restrict_ipv6_as_they_do_ipv4() {
        // EC2's default egress (0.0.0.0/0, all) lets no IPv6 out but
        // neighbour discovery and replies; `::/0` lets it all out.
        for (rules, want) in [
            (
                vec![allow(Protocol::All, None, &["0.0.0.0/0"])],
                with_always(&["-j DROP"]),
            ),
            (
                vec![allow(Protocol::All, None, &["0.0.0.0/0", "::/0"])],
                with_always(&["-j RETURN", "-j DROP"]),
            ),
            (
                vec![allow(Protocol::Tcp, Some((443, 443)), &["2001:db8:1::/48"])],
                with_always(&[
                    "-d 2001:db8:1::/48 -p tcp -m tcp --dport 443 -j RETURN",
                    "-j DROP",
                ]),
            ),
        ] {
            let plan = NetPlan {
                networks: vec![net(NetworkMode::Isolated)],
                ports: vec![port(vec![], Some(rules.clone()))],
                metadata_port: 8775,
            };
            let r = plan.rules_v6();
            assert_eq!(
                chain(&r, "mangle", "CORRAL-E-abcdef01230"),
                want,
                "{rules:?}"
            );
            assert_eq!(
                chain(&r, "mangle", "CORRAL-I-abcdef01230"),
                with_always(&["-j DROP"]),
                "ingress: default deny"
            );
            let fwd = chain(&r, "mangle", "CORRAL-FORWARD");
            assert!(fwd.contains(&"-i crb0f1e2d3c4b5a ! -o crb0f1e2d3c4b5a -j DROP".to_string()));
        }
    }

    #[test]
    fn nothing_planned_is_no_ruleset() {
        assert!(NetPlan::default().rules_v6().is_empty());
        assert!(NetPlan::default().rules().is_empty());
    }
}
