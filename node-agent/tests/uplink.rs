//! `corral agent --uplink`: the floating addresses the agent holds on the
//! uplink, in a network namespace of their own (a veth pair as the
//! provider network), on the real `ip` and `arping` of this host. Only
//! Corral's addresses (labelled IFACE:crf) are added and removed; the
//! operator's stay. Runs as root, like the agent; CI runs tests as root.
//! (That the DNAT still takes an address that is the node's own to the
//! guest, and that a moved address is taken up by the provider network,
//! is the rig's: cli/tests/rig.rs.)

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use corral_node_agent::net::{announce, parse_addresses, sync_uplink, Shell};

/// A node (`NS`, its uplink `up0`) and a neighbour on the provider
/// network (`NS-peer`, `peer0`), removed when dropped.
struct Netns(&'static str);

impl Netns {
    fn up(ns: &'static str) -> Netns {
        let peer = format!("{ns}-peer");
        for n in [ns, peer.as_str()] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        for args in [
            vec!["netns", "add", ns],
            vec!["netns", "add", &peer],
            vec![
                "-n", ns, "link", "add", "up0", "type", "veth", "peer", "name", "peer0",
            ],
            vec!["-n", ns, "link", "set", "peer0", "netns", &peer],
            vec!["-n", ns, "link", "set", "up0", "up"],
            vec!["-n", &peer, "link", "set", "peer0", "up"],
            // The operator's own address on the uplink.
            vec!["-n", ns, "addr", "add", "172.24.9.50/32", "dev", "up0"],
        ] {
            assert!(
                Command::new("ip").args(&args).status().unwrap().success(),
                "ip {args:?}"
            );
        }
        Netns(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in [self.0.to_string(), format!("{}-peer", self.0)] {
            let _ = Command::new("ip").args(["netns", "del", &n]).status();
        }
    }
}

fn all_addresses(ns: &str) -> BTreeSet<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "-4", "addr", "show", "dev", "up0"])
        .output()
        .unwrap();
    parse_addresses(&String::from_utf8_lossy(&out.stdout))
}

fn a(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 24, 9, last)
}

#[test]
fn only_corrals_addresses_come_and_go() {
    const NS: &str = "corral-uplink-a";
    let _ns = Netns::up(NS);
    let sh = Shell::in_netns(NS);
    let change = sync_uplink(&sh, "up0", &BTreeSet::from([a(5), a(6)])).unwrap();
    assert_eq!((change.added, change.removed), (vec![a(5), a(6)], vec![]));
    assert_eq!(all_addresses(NS), BTreeSet::from([a(5), a(6), a(50)]));
    // Held: nothing to do.
    let change = sync_uplink(&sh, "up0", &BTreeSet::from([a(5), a(6)])).unwrap();
    assert!(change.added.is_empty() && change.removed.is_empty());
    // One leaves; the operator's address is never Corral's to remove.
    let change = sync_uplink(&sh, "up0", &BTreeSet::from([a(6)])).unwrap();
    assert_eq!((change.added, change.removed), (vec![], vec![a(5)]));
    assert_eq!(all_addresses(NS), BTreeSet::from([a(6), a(50)]));
    let change = sync_uplink(&sh, "up0", &BTreeSet::new()).unwrap();
    assert_eq!(change.removed, [a(6)]);
    assert_eq!(all_addresses(NS), BTreeSet::from([a(50)]));
    // A name too long for the label is refused, not half-applied.
    assert!(sync_uplink(&sh, "a-very-long-nam", &BTreeSet::from([a(7)])).is_err());
}

#[test]
fn an_added_address_is_announced() {
    const NS: &str = "corral-uplink-b";
    const PEER: &str = "corral-uplink-b-peer";
    let _ns = Netns::up(NS);
    let sh = Shell::in_netns(NS);
    sync_uplink(&sh, "up0", &BTreeSet::from([a(8)])).unwrap();
    // The peer learns up0's MAC for the address from the gratuitous ARP
    // alone (it never asked): an entry it had is overridden.
    let mac = |ns: &str, dev: &str| {
        let out = Command::new("ip")
            .args(["-n", ns, "-br", "link", "show", "dev", dev])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_string()
    };
    let stale = "02:00:00:00:00:01";
    assert!(Command::new("ip")
        .args([
            "-n",
            PEER,
            "neigh",
            "replace",
            "172.24.9.8",
            "lladdr",
            stale
        ])
        .args(["dev", "peer0", "nud", "stale"])
        .status()
        .unwrap()
        .success());
    announce(&sh, "up0", a(8));
    let want = mac(NS, "up0");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("ip")
            .args(["-n", PEER, "neigh", "show", "172.24.9.8", "dev", "peer0"])
            .output()
            .unwrap();
        let neigh = String::from_utf8_lossy(&out.stdout).into_owned();
        if neigh.contains(&want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "peer0's entry: {neigh} (want {want})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
