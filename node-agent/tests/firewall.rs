//! The agent's incremental firewall update (`update_firewall`, one
//! `iptables-restore` or `ip6tables-restore` per changed table) leaves the
//! host's iptables and ip6tables exactly as the full apply
//! (`apply_firewall`) would, on the real iptables of this host (root):
//! guests arriving, groups changing, guests leaving, and the last one
//! going. Runs as root, like the agent; CI runs tests as root. (The IPv6
//! rules' effect on traffic is firewall_ipv6.rs's, in namespaces.)

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;

use corral_api_types::{NetworkMode, Protocol};
use corral_node_agent::net::{
    apply_firewall as apply_on, update_firewall as update_on, Allow, NetDef, NetPlan, Port, Shell,
};

fn apply_firewall(plan: &NetPlan) -> Result<(), corral_node_agent::net::FirewallError> {
    apply_on(&Shell::host(), plan)
}

fn update_firewall(
    applied: &NetPlan,
    plan: &NetPlan,
) -> Result<bool, corral_node_agent::net::FirewallError> {
    update_on(&Shell::host(), applied, plan)
}

/// The host's iptables are one shared state: one test at a time.
static IPTABLES: Mutex<()> = Mutex::new(());

const NET_UID: &str = "f1e2d3c4-b5a6-4978-8796-a5b4c3d2e1f0";

fn network() -> NetDef {
    NetDef {
        uid: NET_UID.into(),
        display: "fwtest/lan".into(),
        cidr: "10.251.7.0/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 251, 7, 1),
        mode: NetworkMode::Nat,
        dhcp: true,
        dns_servers: vec![],
        host_bridge: None,
        hosts: BTreeMap::new(),
        mtu: None,
        overlay: None,
    }
}

fn port(n: u8, ssh_from: &str, floating: bool) -> Port {
    Port {
        display: format!("fwtest/vm{n}/0"),
        tap: format!("crtfw00000{n:02}0"),
        network: NET_UID.into(),
        ip: Ipv4Addr::new(10, 251, 7, 10 + n),
        mac: format!("52:54:00:fe:00:{n:02x}"),
        ingress: vec![
            Allow {
                protocol: Protocol::Tcp,
                from_port: Some(22),
                to_port: Some(22),
                peers: vec![ssh_from.into()],
            },
            Allow {
                protocol: Protocol::Number(58),
                from_port: None,
                to_port: None,
                peers: vec![format!("2001:db8:{n}::/48")],
            },
        ],
        egress: None,
        floating_ip: floating.then(|| Ipv4Addr::new(192, 0, 2, 100 + n)),
    }
}

fn plan(ports: Vec<Port>) -> NetPlan {
    NetPlan {
        networks: if ports.is_empty() {
            vec![]
        } else {
            vec![network()]
        },
        ports,
        metadata_port: 8775,
    }
}

/// Corral's part of every table of both families: its chains, their
/// rules and the jumps to them, as `iptables-save` and `ip6tables-save`
/// print them (counters dropped).
fn corral_state() -> String {
    let mut out = String::new();
    for (save, tables) in [
        ("iptables-save", &["mangle", "filter", "nat"][..]),
        ("ip6tables-save", &["mangle", "filter"][..]),
    ] {
        for table in tables {
            let dump = Command::new(save)
                .args(["-t", table])
                .output()
                .unwrap_or_else(|e| panic!("{save} runs: {e}"));
            assert!(dump.status.success(), "{save} -t {table} failed");
            let text = String::from_utf8(dump.stdout).unwrap();
            for line in text.lines() {
                if line.contains("CORRAL") {
                    let line = match line.split_once(" [") {
                        Some((head, _)) if line.starts_with(':') => head,
                        _ => line,
                    };
                    out.push_str(&format!("{save} {table}: {line}\n"));
                }
            }
        }
    }
    out
}

#[test]
fn incremental_updates_match_the_full_apply() {
    let _one = IPTABLES.lock().unwrap_or_else(|e| e.into_inner());
    // Start from nothing of Corral's.
    apply_firewall(&plan(vec![])).expect("clearing Corral's rules");
    assert_eq!(corral_state(), "", "Corral's chains left over");

    let steps = [
        ("first guest", plan(vec![port(1, "0.0.0.0/0", false)])),
        (
            "second guest, with a floating address",
            plan(vec![
                port(1, "0.0.0.0/0", false),
                port(2, "10.0.0.0/8", true),
            ]),
        ),
        (
            "a group rule changes",
            plan(vec![
                port(1, "192.168.0.0/16", false),
                port(2, "10.0.0.0/8", true),
            ]),
        ),
        (
            "first guest leaves",
            plan(vec![port(2, "10.0.0.0/8", true)]),
        ),
        ("last guest leaves", plan(vec![])),
    ];
    let mut applied = plan(vec![]);
    for (what, next) in steps {
        let fell_back = update_firewall(&applied, &next)
            .unwrap_or_else(|e| panic!("{what}: incremental update failed: {e}"));
        assert!(!fell_back, "{what}: fell back to the full apply");
        let incremental = corral_state();
        apply_firewall(&next).unwrap_or_else(|e| panic!("{what}: full apply failed: {e}"));
        let full = corral_state();
        assert_eq!(incremental, full, "{what}: incremental and full differ");
        if next.ports.is_empty() {
            assert_eq!(full, "", "{what}: Corral's chains left behind");
        } else {
            assert!(
                full.contains("-j CORRAL"),
                "{what}: no jump to Corral's chains\n{full}"
            );
            assert!(
                full.contains("ip6tables-save mangle: -A FORWARD -j CORRAL-FORWARD")
                    && full.contains("-p ipv6-icmp -m icmp6 --icmpv6-type 135 -j RETURN")
                    && full.contains(" -s 2001:db8:"),
                "{what}: no IPv6 ruleset\n{full}"
            );
        }
        applied = next;
    }
}

#[test]
fn chains_removed_by_hand_make_it_fall_back() {
    let _one = IPTABLES.lock().unwrap_or_else(|e| e.into_inner());
    let two = plan(vec![
        port(3, "0.0.0.0/0", false),
        port(4, "0.0.0.0/0", false),
    ]);
    apply_firewall(&two).expect("full apply");
    // Someone deletes Corral's chains behind the agent's back; the agent
    // still believes `two` is applied, and now one guest leaves: the
    // restore that flushes the leaving guest's chain fails.
    apply_firewall(&plan(vec![])).expect("clearing by hand");
    let one = plan(vec![port(3, "0.0.0.0/0", false)]);
    let fell_back = update_firewall(&two, &one).expect("the update repairs");
    assert!(
        fell_back,
        "a failed restore must fall back to the full apply"
    );
    let repaired = corral_state();
    assert!(repaired.contains("-j CORRAL"), "{repaired}");
    apply_firewall(&one).expect("full apply");
    assert_eq!(repaired, corral_state());
    apply_firewall(&plan(vec![])).expect("clearing");
    assert_eq!(corral_state(), "");
}
