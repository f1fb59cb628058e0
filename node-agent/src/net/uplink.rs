//! Floating addresses answered on the node's provider side (`corral agent
//! --uplink IFACE`), as nova-network's multi_host put them on its
//! public interface: each floating address of a port on this node is a
//! /32 on the uplink, labelled `IFACE:crf` so only Corral's are ever
//! removed, and announced with a gratuitous ARP (`arping -U`) when it is
//! added, so the provider network's neighbour caches follow an address
//! that moved here from another node. The address being local does not
//! take the packets from the guest: the `nat` PREROUTING DNAT runs before
//! the routing decision.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::command::{run, Failure};
use super::Shell;

/// The label Corral's addresses on `dev` carry (`None`: the name is too
/// long for one, 15 characters at most).
pub fn uplink_label(dev: &str) -> Option<String> {
    let label = format!("{dev}:crf");
    (label.len() <= 15).then_some(label)
}

/// The addresses in `ip -o -4 addr show` output.
pub fn parse_addresses(out: &str) -> BTreeSet<Ipv4Addr> {
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

/// What one uplink pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UplinkChange {
    pub added: Vec<Ipv4Addr>,
    pub removed: Vec<Ipv4Addr>,
}

/// A failed uplink command: its command line and why.
#[derive(Debug, thiserror::Error)]
#[error("{cmd}: {message}")]
pub struct UplinkError {
    pub cmd: String,
    pub message: String,
}

fn ip(sh: &Shell, args: &[&str]) -> Result<String, UplinkError> {
    run(sh.netns(), "ip", args, None).map_err(|e| UplinkError {
        cmd: e.cmd,
        message: match e.failure {
            Failure::Spawn(s) => s.to_string(),
            Failure::Exit(s) => s,
        },
    })
}

/// Makes Corral's addresses on `dev` exactly `want` (as /32s labelled
/// [`uplink_label`]); answers what it added and removed. Addresses on
/// `dev` without the label are never touched. The caller announces the
/// added ones ([`announce`]).
pub fn sync_uplink(
    sh: &Shell,
    dev: &str,
    want: &BTreeSet<Ipv4Addr>,
) -> Result<UplinkChange, UplinkError> {
    let label = uplink_label(dev).ok_or_else(|| UplinkError {
        cmd: format!("--uplink {dev}"),
        message: "the interface name is too long for the label {dev}:crf (15 characters)".into(),
    })?;
    let have = parse_addresses(&ip(
        sh,
        &["-o", "-4", "addr", "show", "dev", dev, "label", &label],
    )?);
    let mut change = UplinkChange::default();
    for a in have.difference(want) {
        ip(sh, &["addr", "del", &format!("{a}/32"), "dev", dev])?;
        change.removed.push(*a);
    }
    for a in want.difference(&have) {
        let cidr = format!("{a}/32");
        ip(sh, &["addr", "add", &cidr, "dev", dev, "label", &label])?;
        change.added.push(*a);
    }
    Ok(change)
}

/// Sends gratuitous ARPs for `addr` on `dev` (two, a second apart, in
/// the background): neighbours that cached another node's MAC for it
/// take this one's.
pub fn announce(sh: &Shell, dev: &str, addr: Ipv4Addr) {
    let (sh, dev) = (sh.clone(), dev.to_string());
    std::thread::spawn(move || {
        let a = addr.to_string();
        let args = ["-U", "-c", "2", "-I", &dev, "-s", &a, &a];
        if let Err(e) = run(sh.netns(), "arping", &args, None) {
            let why = match e.failure {
                Failure::Spawn(s) => s.to_string(),
                Failure::Exit(s) => s,
            };
            tracing::warn!(command = %e.cmd, error = %why, "gratuitous ARP");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_fit_the_kernel() {
        assert_eq!(uplink_label("eth0").as_deref(), Some("eth0:crf"));
        assert_eq!(uplink_label("enp0s31f6").as_deref(), Some("enp0s31f6:crf"));
        assert_eq!(uplink_label("a-very-long-nam"), None);
    }

    #[test]
    fn addresses_are_read_from_ip_o() {
        let out = "2: eth0    inet 172.24.4.5/32 scope global eth0:crf\\       valid_lft forever preferred_lft forever\n\
                   2: eth0    inet 172.24.4.9/32 scope global eth0:crf\\       valid_lft forever preferred_lft forever\n";
        let got: Vec<_> = parse_addresses(out).into_iter().collect();
        assert_eq!(
            got,
            [Ipv4Addr::new(172, 24, 4, 5), Ipv4Addr::new(172, 24, 4, 9)]
        );
        assert!(parse_addresses("").is_empty());
    }
}
