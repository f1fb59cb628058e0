//! Network: an IPv4 layer-2 segment with IPAM. Every node that hosts an
//! instance on it gets a bridge; the network controller allocates addresses.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{default_true, is_zero_i64};
use crate::net::{parse_ipv4, Ipv4Cidr};
use crate::validate::{check_tags, header, impl_validate_update, index, NameRule};
use crate::{Condition, Defaults, FieldErrors, Validate};

crate::resource!(
    /// A virtual network (subnet) instances attach to.
    Network,
    NetworkSpec,
    NetworkStatus,
    "networks",
    Project
);

/// Smallest and largest prefix length of a Network's CIDR.
pub const NETWORK_PREFIX_RANGE: (u8, u8) = (8, 30);

/// How a network reaches the outside world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Instances reach only each other.
    Isolated,
    /// Instances reach outside through the host's address (masquerade).
    #[default]
    Nat,
    /// Attached to an existing host bridge; the outside network routes.
    Bridged,
    /// One layer-2 segment across every node with a port on it (a
    /// kernel VXLAN device per node, VNI `status.vni`); each node is the
    /// gateway (same address and MAC everywhere), DHCP server, metadata
    /// service and NAT for its own guests, as in `nat`.
    Overlay,
}

impl NetworkMode {
    /// Whether the outside is reached through the node's address
    /// (masquerade): `nat` and `overlay`.
    pub fn masquerades(self) -> bool {
        matches!(self, NetworkMode::Nat | NetworkMode::Overlay)
    }
}

/// Desired state of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSpec {
    /// IPv4 block in CIDR notation, prefix /8 to /30, host bits zero:
    /// `10.42.0.0/24`.
    pub cidr: String,
    /// Gateway address inside `cidr`; the first host address when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// `isolated`, `nat` (default), `overlay` or `bridged`.
    #[serde(default)]
    pub mode: NetworkMode,
    /// Name of the existing host bridge to attach to; required for (and only
    /// allowed with) `mode: bridged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_bridge: Option<String>,
    /// Serve DHCP to instances (default true).
    #[serde(default = "default_true")]
    pub dhcp: bool,
    /// DNS servers handed out by DHCP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_servers: Vec<String>,
    /// EC2-style tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            cidr: String::new(),
            gateway: None,
            mode: NetworkMode::default(),
            host_bridge: None,
            dhcp: true,
            dns_servers: Vec::new(),
            tags: BTreeMap::new(),
        }
    }
}

/// Observed state of a network, written by the network controller (IPAM)
/// and the node agents.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkStatus {
    /// Allocated addresses: IP -> owner (e.g. `Instance/web-1/0`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allocations: BTreeMap<String, String>,
    /// Bridge device per node: node name -> bridge name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bridges: BTreeMap<String, String>,
    /// `overlay` only: the VXLAN network identifier, unique in the
    /// cluster, allocated by the overlay controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// `overlay` only, by the overlay controller: the tunnel endpoint
    /// (`Node.status.vtep`) of each node with a port on this network.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vteps: BTreeMap<String, String>,
    /// `overlay` only, by the overlay controller: the node of each port's
    /// MAC address (lowercase), for the nodes' forwarding tables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub observed_generation: i64,
}

impl NetworkSpec {
    /// The parsed CIDR, if valid.
    pub fn parsed_cidr(&self) -> Option<Ipv4Cidr> {
        self.cidr.parse().ok()
    }

    /// The one gateway rule: `gateway` when set (validation keeps it a
    /// host address inside `cidr`), else the first host address; with the
    /// parsed CIDR. `None` when `cidr` does not parse.
    pub fn gateway(&self) -> Option<(Ipv4Cidr, std::net::Ipv4Addr)> {
        let cidr = self.parsed_cidr()?;
        let gw = self
            .gateway
            .as_deref()
            .and_then(parse_ipv4)
            .unwrap_or_else(|| cidr.first_host());
        Some((cidr, gw))
    }
}

/// Whether `s` can be a Linux network interface name.
pub fn is_interface_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

impl Validate for Network {
    fn validate(&self) -> FieldErrors {
        let mut errs = header(self, NameRule::DnsLabel);
        let spec = &self.spec;
        let mut cidr = None;
        if spec.cidr.is_empty() {
            errs.push("spec.cidr", "required");
        } else {
            match spec.cidr.parse::<Ipv4Cidr>() {
                Ok(c) => {
                    let (min, max) = NETWORK_PREFIX_RANGE;
                    if c.prefix() < min || c.prefix() > max {
                        errs.push(
                            "spec.cidr",
                            format!(
                                "prefix length must be between {min} and {max} (is /{})",
                                c.prefix()
                            ),
                        );
                    } else {
                        cidr = Some(c);
                    }
                }
                Err(e) => errs.push("spec.cidr", e.to_string()),
            }
        }
        if let Some(gw) = &spec.gateway {
            match parse_ipv4(gw) {
                None => errs.push("spec.gateway", "must be an IPv4 address like 10.0.0.1"),
                Some(ip) => {
                    if let Some(c) = cidr {
                        if !c.is_host(ip) {
                            errs.push("spec.gateway", format!("must be a host address inside {c}"));
                        }
                    }
                }
            }
        }
        match (&spec.mode, &spec.host_bridge) {
            (NetworkMode::Bridged, None) => {
                errs.push("spec.hostBridge", "required when spec.mode is bridged")
            }
            (NetworkMode::Bridged, Some(b)) if !is_interface_name(b) => errs.push(
                "spec.hostBridge",
                "must be a network interface name (at most 15 characters, no '/', ':' or spaces)",
            ),
            (NetworkMode::Isolated | NetworkMode::Nat | NetworkMode::Overlay, Some(_)) => {
                errs.push("spec.hostBridge", "only allowed when spec.mode is bridged")
            }
            _ => {}
        }
        for (i, d) in spec.dns_servers.iter().enumerate() {
            if parse_ipv4(d).is_none() {
                errs.push(
                    index("spec.dnsServers", i),
                    "must be an IPv4 address like 10.0.0.1",
                );
            }
        }
        check_tags(&mut errs, "spec.tags", &spec.tags);
        errs
    }
}

impl crate::HostRefs for Network {
    fn host_refs(&self) -> Vec<crate::HostRef<'_>> {
        match &self.spec.host_bridge {
            Some(name) => vec![crate::HostRef::HostInterface {
                field: "spec.hostBridge",
                name,
            }],
            None => Vec::new(),
        }
    }
}

impl Defaults for Network {
    /// `gateway` defaults to the first host address of `cidr`.
    fn apply_defaults(&mut self) {
        if self.spec.gateway.is_none() {
            if let Some((_, gw)) = self.spec.gateway() {
                self.spec.gateway = Some(gw.to_string());
            }
        }
    }
}

// Addressing and mode are fixed at creation.
impl_validate_update!(
    Network,
    "spec.cidr" => cidr,
    "spec.mode" => mode,
    "spec.hostBridge" => host_bridge,
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::testing::{assert_wire_names, round_trip, round_trip_kind};
    use crate::validate::testing::{assert_errors, assert_valid};
    use crate::Resource;

    fn net(cidr: &str) -> Network {
        Network::new(
            "demo",
            "lan",
            NetworkSpec {
                cidr: cidr.into(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn round_trip_and_dhcp_default() {
        let n: Network = round_trip_kind(
            r#"
metadata: {name: lan, project: demo}
spec:
  cidr: 10.42.0.0/24
  mode: nat
  dnsServers: [10.42.0.1, 1.1.1.1]
status:
  allocations: {10.42.0.10: Instance/web-1/0}
  bridges: {host-1: crl-1a2b3c}
  observedGeneration: 1
"#,
        );
        assert!(n.spec.dhcp, "dhcp defaults to true");
        assert_eq!(n.spec.mode, NetworkMode::Nat);
        assert_eq!(
            n.status.as_ref().unwrap().allocations["10.42.0.10"],
            "Instance/web-1/0"
        );
        let off: Network = round_trip(
            "{apiVersion: corral/v1, kind: Network, metadata: {name: a, project: b}, spec: {cidr: 10.0.0.0/8, dhcp: false, mode: isolated}}",
        );
        assert!(!off.spec.dhcp);
        assert!(NetworkSpec::default().dhcp);
    }

    #[test]
    fn defaults_gateway_to_first_host() {
        let mut n = net("10.42.0.0/24");
        n.apply_defaults();
        assert_eq!(n.spec.gateway.as_deref(), Some("10.42.0.1"));
        assert_valid(&n);
        n.spec.gateway = Some("10.42.0.254".into());
        n.apply_defaults();
        assert_eq!(n.spec.gateway.as_deref(), Some("10.42.0.254"));
        let mut bad = net("nonsense");
        bad.apply_defaults();
        assert_eq!(bad.spec.gateway, None);
    }

    #[test]
    fn cidr_rules() {
        let cases = [
            ("", "spec.cidr: required"),
            (
                "10.42.0.1/24",
                "spec.cidr: host bits must be zero (did you mean 10.42.0.0/24?)",
            ),
            (
                "10.42.0.0",
                "spec.cidr: must be an IPv4 CIDR block like 10.0.0.0/24",
            ),
            (
                "10.0.0.0/33",
                "spec.cidr: prefix length must be between 0 and 32",
            ),
            (
                "10.0.0.0/31",
                "spec.cidr: prefix length must be between 8 and 30 (is /31)",
            ),
            (
                "11.0.0.0/7",
                "spec.cidr: host bits must be zero (did you mean 10.0.0.0/7?)",
            ),
            (
                "8.0.0.0/7",
                "spec.cidr: prefix length must be between 8 and 30 (is /7)",
            ),
        ];
        for (cidr, want) in cases {
            assert_errors(&net(cidr).validate(), &[want]);
        }
        assert_valid(&net("10.0.0.0/8"));
        assert_valid(&net("192.168.1.0/30"));
    }

    #[test]
    fn gateway_mode_and_dns_rules_all_reported() {
        let mut n = net("10.42.0.0/24");
        n.spec.gateway = Some("10.42.1.1".into());
        n.spec.host_bridge = Some("br0".into());
        n.spec.dns_servers = vec!["1.1.1.1".into(), "dns.example".into()];
        n.spec.tags.insert("aws:x".into(), String::new());
        assert_errors(
            &n.validate(),
            &[
                "spec.gateway: must be a host address inside 10.42.0.0/24",
                "spec.hostBridge: only allowed when spec.mode is bridged",
                "spec.dnsServers[1]: must be an IPv4 address like 10.0.0.1",
                "spec.tags[\"aws:x\"]: key must not start with \"aws:\" (reserved)",
            ],
        );
        n.spec.tags.clear();
        n.spec.dns_servers.clear();
        n.spec.gateway = Some("10.42.0.255".into());
        n.spec.mode = NetworkMode::Bridged;
        n.spec.host_bridge = None;
        assert_errors(
            &n.validate(),
            &[
                "spec.gateway: must be a host address inside 10.42.0.0/24",
                "spec.hostBridge: required when spec.mode is bridged",
            ],
        );
        n.spec.gateway = Some("gw".into());
        n.spec.host_bridge = Some("br/0".into());
        assert_errors(
            &n.validate(),
            &[
                "spec.gateway: must be an IPv4 address like 10.0.0.1",
                "spec.hostBridge: must be a network interface name (at most 15 characters, no '/', ':' or spaces)",
            ],
        );
        n.spec.gateway = None;
        n.spec.host_bridge = Some("br0".into());
        assert_valid(&n);
    }

    #[test]
    fn mode_names() {
        assert_wire_names(&[
            ("isolated", NetworkMode::Isolated),
            ("nat", NetworkMode::Nat),
            ("bridged", NetworkMode::Bridged),
            ("overlay", NetworkMode::Overlay),
        ]);
    }
}
