//! DHCP leases: what libvirt's dnsmasq handed out on a Corral bridge, and
//! whether each NIC holds the address IPAM allocated (`AddressLeased`).

use std::net::Ipv4Addr;

use super::NetPlan;

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
    use super::super::fixtures::{net, port};
    use super::*;
    use corral_api_types::NetworkMode;

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
}
