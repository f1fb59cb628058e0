//! Host networking for the node's guests: a libvirt network (bridge,
//! dnsmasq serving only the IPAM reservations) per Network in use on this
//! node, and one iptables ruleset for everything Corral filters or
//! translates: security groups, anti-spoofing, isolation, masquerade,
//! floating addresses and the metadata redirect; and its ip6tables
//! counterpart, security groups and isolation for guests' IPv6.
//!
//! Everything here is computed from a [`NetPlan`] (what should exist) and
//! applied whole: the rules go in as one `iptables-restore --noflush`
//! (`ip6tables-restore`) transaction per table, so a change reaches
//! running guests within one sync and nothing that no longer belongs to a
//! plan survives it.
//!
//! Where the rules live, and why:
//! - Filtering is in the `mangle` table's FORWARD and INPUT hooks, which run
//!   before `filter`: libvirt and other tools add ACCEPT rules to `filter`,
//!   and a DROP in `mangle` is final whatever they do. Bridged guest-to-guest
//!   frames reach those hooks through br_netfilter (`bridge-nf-call-iptables`,
//!   and `bridge-nf-call-ip6tables` for IPv6).
//! - Traffic the host itself sends to a guest (its own connections, and
//!   floating addresses reached from the host) is filtered in `filter`
//!   OUTPUT, after the `nat` OUTPUT hook has translated it.
//! - Networks are libvirt `open` networks: libvirt adds no firewall rules of
//!   its own, so the only rules are these. `filter` FORWARD accepts what
//!   `mangle` let through, for hosts whose FORWARD policy is DROP.
//!
//! Nothing here writes Corral objects; the agent reports.
//!
//! What lives where: the names of devices and libvirt networks
//! (names.rs), a Network as a libvirt network with its DHCP reservations
//! (libvirt_net.rs), the rulesets a plan makes (firewall.rs, IPv4;
//! firewall6.rs, IPv6) and how they are written into the host's iptables
//! and ip6tables (iptables.rs), DHCP leases
//! (leases.rs), how the tools run as child processes (command.rs), the
//! floating addresses held on the uplink (uplink.rs), and
//! an overlay network's VXLAN tunnel, forwarding table and tunnel guard
//! (vxlan/). The plan's types are here.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use corral_api_types::net::Ipv4Cidr;
use corral_api_types::{NetworkMode, Protocol};

mod command;
mod conntrack;
mod firewall;
mod firewall6;
mod iptables;
mod leases;
mod libvirt_net;
mod names;
mod uplink;
mod vxlan;

pub use command::Shell;
pub use conntrack::{forget_flows, released_floating, ConntrackError};
pub use firewall::{Family, TableRules};
pub use iptables::{apply_firewall, restore_script, update_firewall, update_script, FirewallError};
pub use leases::{lease_verdict, leases, parse_leases, Lease};
pub use libvirt_net::gateway_mac;
pub use names::{
    bridge_name, network_name, tap_name, BRIDGE_PREFIX, CHAIN_PREFIX, NETWORK_PREFIX, TAP_PREFIX,
};
pub use uplink::{announce, parse_addresses, sync_uplink, uplink_label, UplinkChange, UplinkError};
pub use vxlan::{
    ensure_overlay, guard_tunnel, remove_overlays_except, sync_fdb, vxlan_name, Fdb, FdbChange,
    Overlay, VxlanError, GUARD_CHAIN, VXLAN_PORT, VXLAN_PREFIX,
};

/// Where guests find the metadata service.
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

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
    /// `overlay` mode: the MTU inside the tunnel (set from the agent's
    /// options even before the tunnel exists, so the network is never
    /// redefined when it comes).
    pub mtu: Option<u32>,
    /// `overlay` mode: the tunnel (once the Network has its VNI and this
    /// node a tunnel endpoint).
    pub overlay: Option<OverlayDef>,
}

/// An overlay Network's tunnel on this node and its forwarding table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayDef {
    pub vni: u32,
    /// This node's tunnel endpoint.
    pub local: Ipv4Addr,
    pub port: u16,
    /// MTU of the bridge, the tunnel and the guests' NICs.
    pub mtu: u32,
    /// The other nodes with ports on the network (broadcast and unknown
    /// destinations go to each).
    pub flood: std::collections::BTreeSet<Ipv4Addr>,
    /// Each remote port's MAC (lowercase) → its node's tunnel endpoint.
    pub macs: BTreeMap<String, Ipv4Addr>,
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
}

/// One allow rule, resolved to concrete source (ingress) or destination
/// (egress) blocks, of either family: each goes to its own ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    pub protocol: Protocol,
    /// TCP/UDP port range, or ICMP type (from) and code (to); `None` = all.
    pub from_port: Option<i32>,
    pub to_port: Option<i32>,
    /// CIDR blocks, IPv4 or IPv6 (source groups already expanded to their
    /// members' /32s).
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

#[cfg(test)]
pub(crate) mod fixtures {
    //! A network, a NIC and a chain lookup the unit tests of this module
    //! share.
    use super::*;

    /// The rules of chain `chain` in table `table` (panics when absent).
    pub fn chain<'a>(rules: &'a [TableRules], table: &str, chain: &str) -> &'a [String] {
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

    pub fn net(mode: NetworkMode) -> NetDef {
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
            mtu: None,
            overlay: None,
        }
    }

    pub fn port(ingress: Vec<Allow>, egress: Option<Vec<Allow>>) -> Port {
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
}
