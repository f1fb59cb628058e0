//! A released floating address's tracked flows are forgotten, on the real
//! `conntrack` of this host, in a network namespace of its own: the flows
//! addressed to it (DNAT) and those answered to it (SNAT) go, others stay,
//! and finding none is no failure. Runs as root, like the agent.

use std::net::Ipv4Addr;
use std::process::Command;

use corral_node_agent::net::{forget_flows, Shell};

struct Netns(&'static str);

impl Netns {
    fn up(ns: &'static str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
        assert!(Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .unwrap()
            .success());
        Netns(ns)
    }

    fn conntrack(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", self.0, "conntrack"])
            .args(args)
            .output()
            .expect("conntrack (scripts/install-deps installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn insert(&self, src: &str, dst: &str, reply_src: &str, reply_dst: &str, sport: &str) {
        let out = Command::new("ip")
            .args(["netns", "exec", self.0, "conntrack", "-I", "-p", "tcp"])
            .args(["-s", src, "-d", dst, "--sport", sport, "--dport", "22"])
            .args(["-r", reply_src, "-q", reply_dst])
            .args(["--reply-port-src", "22", "--reply-port-dst", sport])
            .args(["--state", "ESTABLISHED", "-t", "600", "-u", "SEEN_REPLY"])
            .output()
            .expect("conntrack (scripts/install-deps installs it)");
        assert!(
            out.status.success(),
            "inserting a flow: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", self.0]).status();
    }
}

#[test]
fn a_released_floating_addresss_flows_are_forgotten() {
    let ns = Netns::up("corral-ct-test");
    let fip = Ipv4Addr::new(172, 24, 4, 9);
    // A client's connection to the floating address, DNATed to the guest.
    ns.insert(
        "192.168.240.2",
        "172.24.4.9",
        "10.0.0.5",
        "192.168.240.2",
        "40001",
    );
    // The guest's own connection out, SNATed to the floating address.
    ns.insert("10.0.0.5", "192.0.2.1", "192.0.2.1", "172.24.4.9", "40002");
    // Another guest's flow, which must stay.
    ns.insert(
        "192.168.240.2",
        "172.24.4.10",
        "10.0.0.6",
        "192.168.240.2",
        "40003",
    );
    assert_eq!(ns.conntrack(&["-L"]).lines().count(), 3);

    forget_flows(&Shell::in_netns(ns.0), fip).unwrap();
    let left = ns.conntrack(&["-L"]);
    assert_eq!(left.lines().count(), 1, "{left}");
    assert!(left.contains("dst=172.24.4.10"), "{left}");
    assert!(!left.contains("172.24.4.9"), "{left}");
    // Nothing left to forget is no failure.
    forget_flows(&Shell::in_netns(ns.0), fip).unwrap();
}
