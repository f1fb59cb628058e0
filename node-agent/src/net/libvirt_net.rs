//! A Network as this node runs it in libvirt: the transient network's
//! definition (bridge, gateway, dnsmasq serving only the IPAM
//! reservations, the routes to the metadata service) and one reservation
//! as `virNetworkUpdate` takes it. Text only: the hypervisor applies it.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use corral_api_types::NetworkMode;

use super::{network_name, NetDef, METADATA_IP};
use crate::hypervisor::xml_escape;

/// The MAC of an overlay network's gateway, the same on every node: a
/// locally administered unicast address from the network's uid.
pub fn gateway_mac(network_uid: &str) -> String {
    let h = network_uid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let b = h.to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4]
    )
}

impl NetDef {
    /// An overlay network's MTU (its tunnel's, else the default).
    pub fn overlay_mtu(&self) -> u32 {
        self.mtu.unwrap_or(1450)
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
        if self.mode == NetworkMode::Overlay {
            // The distributed gateway: the same address and MAC on every
            // node, so a guest's ARP entry for it holds wherever it runs
            // and the tunnel never carries it (vxlan.rs guards that). The
            // MTU leaves room for the VXLAN header, on the bridge and
            // every tap libvirt plugs into it.
            let _ = writeln!(x, "  <mac address='{}'/>", gateway_mac(&self.uid));
            let _ = writeln!(x, "  <mtu size='{}'/>", self.overlay_mtu());
        }
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
            if self.mode == NetworkMode::Overlay {
                // Option 26: the guest's interface MTU, inside the tunnel.
                let _ = writeln!(
                    x,
                    "    <dnsmasq:option value='dhcp-option-force=26,{}'/>",
                    self.overlay_mtu()
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::net;
    use super::*;

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
}
