//! Security groups over IPv6 (node-agent/src/net/firewall6.rs) on the real
//! kernel: a node and two guests, all network namespaces this test makes
//! (and deletes, even when it fails), the guests' veths plugged into the
//! node's bridge as libvirt plugs taps. `apply_firewall` and
//! `update_firewall` run inside the node's namespace, ip6tables-restore
//! with iptables-restore; `ip6tables-save` there shows Corral's chains;
//! TCP between the guests' IPv6 addresses (ULA and link-local) passes or
//! not as their groups say, while neighbour discovery always passes.
//! Nothing outside its own namespaces is touched. Runs as root, like the
//! agent; CI runs tests as root. Connections are made with python3.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};

use corral_api_types::{NetworkMode, Protocol};
use corral_node_agent::net::{
    apply_firewall, bridge_name, tap_name, update_firewall, Allow, NetDef, NetPlan, Port, Shell,
};

const NET_UID: &str = "6e6e0000-7777-4a1b-8c2d-0123456789ab";
const UID_A: &str = "a6a60000-7777-4a1b-8c2d-0123456789ab";
const UID_B: &str = "b6b60000-7777-4a1b-8c2d-0123456789ab";
const NS_PREFIX: &str = "cfw6-";
const ULA_A: &str = "fd00:6::a";
const ULA_B: &str = "fd00:6::b";
const LL_B: &str = "fe80::b";
const PORT: u16 = 2222;

/// Accepts TCP on [::]:PORT, greeting each connection; prints "ready".
const SERVE: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"corral")
    c.close()
"#;

/// Connects to argv[1]:argv[2]; prints "open" (greeted), "refused" or
/// "timeout".
const CONNECT: &str = r#"
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)
    c.settimeout(1.5)
    print("open" if c.recv(16) == b"corral" else "silent")
except ConnectionRefusedError:
    print("refused")
except OSError:
    print("timeout")
"#;

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e}"))
}

/// Runs `args` in `ns`, panicking with its stderr if it fails.
fn ns_run(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["netns", "exec", ns];
    all.extend(args);
    let out = run("ip", &all);
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        all.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The namespaces of one run and the guest B's listener, gone on drop
/// (also when the test panics).
struct Rig {
    node: String,
    ga: String,
    gb: String,
    listener: Option<Child>,
}

impl Rig {
    fn new() -> Rig {
        clear_stale();
        let tag = format!("{:x}", std::process::id());
        let ns = |what: &str| format!("{NS_PREFIX}{tag}-{what}");
        let mut rig = Rig {
            node: ns("node"),
            ga: ns("ga"),
            gb: ns("gb"),
            listener: None,
        };
        for n in [&rig.node, &rig.ga, &rig.gb] {
            let out = run("ip", &["netns", "add", n]);
            assert!(out.status.success(), "ip netns add {n}: {out:?}");
            ns_run(n, &["ip", "link", "set", "lo", "up"]);
            // No duplicate address detection: addresses usable at once.
            ns_run(
                n,
                &["sysctl", "-q", "-w", "net.ipv6.conf.default.accept_dad=0"],
            );
        }
        let br = bridge_name(NET_UID);
        ns_run(
            &rig.node,
            &["ip", "link", "add", "name", &br, "type", "bridge"],
        );
        // Solicitations flood: no snooping querier decides who hears them.
        ns_run(
            &rig.node,
            &[
                "ip",
                "link",
                "set",
                &br,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        );
        ns_run(&rig.node, &["ip", "link", "set", &br, "up"]);
        for (uid, guest_ns, ula, ll) in [
            (UID_A, &rig.ga, ULA_A, "fe80::a"),
            (UID_B, &rig.gb, ULA_B, LL_B),
        ] {
            let tap = tap_name(uid, 0);
            let out = run(
                "ip",
                &[
                    "link", "add", &tap, "netns", &rig.node, "type", "veth", "peer", "name",
                    "eth0", "netns", guest_ns,
                ],
            );
            assert!(out.status.success(), "guest veth: {out:?}");
            ns_run(&rig.node, &["ip", "link", "set", &tap, "master", &br, "up"]);
            for addr in [format!("{ula}/64"), format!("{ll}/64")] {
                ns_run(
                    guest_ns,
                    &["ip", "-6", "addr", "add", &addr, "dev", "eth0", "nodad"],
                );
            }
            ns_run(guest_ns, &["ip", "link", "set", "eth0", "up"]);
        }
        let mut listener = Command::new("ip")
            .args([
                "netns",
                "exec",
                &rig.gb,
                "python3",
                "-c",
                SERVE,
                &PORT.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the listener");
        let mut lines = BufReader::new(listener.stdout.take().expect("stdout")).lines();
        rig.listener = Some(listener);
        let first = lines.next().and_then(Result::ok);
        assert_eq!(first.as_deref(), Some("ready"), "listener in {}", rig.gb);
        rig
    }

    fn shell(&self) -> Shell {
        Shell::in_netns(&self.node)
    }

    /// What guest A's TCP connection to `addr` meets.
    fn connect(&self, addr: &str) -> String {
        ns_run(
            &self.ga,
            &["python3", "-c", CONNECT, addr, &PORT.to_string()],
        )
        .trim()
        .to_string()
    }

    /// Corral's lines in the node's `ip6tables-save`.
    fn ip6tables(&self) -> String {
        let mut out = String::new();
        for table in ["mangle", "filter"] {
            for line in ns_run(&self.node, &["ip6tables-save", "-t", table]).lines() {
                if line.contains("CORRAL") && !line.starts_with(':') {
                    out.push_str(&format!("{table}: {line}\n"));
                }
            }
        }
        out
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut l) = self.listener.take() {
            let _ = l.kill();
            let _ = l.wait();
        }
        for n in [&self.node, &self.ga, &self.gb] {
            let _ = run("ip", &["netns", "del", n]);
        }
    }
}

/// Namespaces of earlier runs that died before their cleanup.
fn clear_stale() {
    let list = run("ip", &["netns", "list"]);
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| u32::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

fn tcp(peers: &[&str]) -> Allow {
    Allow {
        protocol: Protocol::Tcp,
        from_port: Some(PORT.into()),
        to_port: Some(PORT.into()),
        peers: peers.iter().map(|p| p.to_string()).collect(),
    }
}

fn all(peers: &[&str]) -> Allow {
    Allow {
        protocol: Protocol::All,
        from_port: None,
        to_port: None,
        peers: peers.iter().map(|p| p.to_string()).collect(),
    }
}

/// A's and B's NICs: B admits `b_ingress`, A's egress is `a_egress`.
fn plan(b_ingress: Vec<Allow>, a_egress: Option<Vec<Allow>>) -> NetPlan {
    let port = |uid: &str, n: u8, ingress, egress| Port {
        display: format!("fw6/vm{n}/0"),
        tap: tap_name(uid, 0),
        network: NET_UID.into(),
        ip: Ipv4Addr::new(10, 252, 6, 10 + n),
        mac: format!("52:54:00:f6:00:{n:02x}"),
        ingress,
        egress,
        floating_ip: None,
    };
    NetPlan {
        networks: vec![NetDef {
            uid: NET_UID.into(),
            display: "fw6/lan".into(),
            cidr: "10.252.6.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 252, 6, 1),
            mode: NetworkMode::Nat,
            dhcp: true,
            dns_servers: vec![],
            host_bridge: None,
            hosts: BTreeMap::new(),
            mtu: None,
            overlay: None,
        }],
        ports: vec![
            port(UID_A, 1, vec![], a_egress),
            port(UID_B, 2, b_ingress, None),
        ],
        metadata_port: 8775,
    }
}

#[test]
fn ipv6_traffic_passes_as_the_groups_say() {
    let rig = Rig::new();
    let sh = rig.shell();
    let key = |uid: &str| tap_name(uid, 0).trim_start_matches("crt").to_string();
    let (tap_b, kb, ka) = (tap_name(UID_B, 0), key(UID_B), key(UID_A));
    let ll_b = format!("{LL_B}%eth0");

    // Before any rule, IPv6 between the guests flows: the rig works.
    assert_eq!(rig.connect(ULA_B), "open", "no firewall yet");

    // B admits nothing: ingress is denied, neighbour discovery is not.
    let mut applied = plan(vec![], None);
    apply_firewall(&sh, &applied).expect("full apply");
    let rules = rig.ip6tables();
    for want in [
        "mangle: -A FORWARD -j CORRAL-FORWARD".to_string(),
        "mangle: -A INPUT -j CORRAL-INPUT".to_string(),
        "filter: -A FORWARD -j CORRAL-FORWARD".to_string(),
        format!("mangle: -A CORRAL-FORWARD -m physdev --physdev-out {tap_b} --physdev-is-bridged -j CORRAL-I-{kb}"),
        format!("mangle: -A CORRAL-FORWARD -m physdev --physdev-in {tap_b} -j CORRAL-E-{kb}"),
        format!("mangle: -A CORRAL-I-{kb} -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j RETURN"),
        format!("mangle: -A CORRAL-I-{kb} -j DROP"),
        format!("mangle: -A CORRAL-E-{ka} -j RETURN"),
    ] {
        assert!(rules.contains(&format!("{want}\n")), "no {want:?} in\n{rules}");
    }
    assert_eq!(rig.connect(ULA_B), "timeout", "B admits nothing\n{rules}");
    let neigh = ns_run(
        &rig.ga,
        &["ip", "-6", "neigh", "show", "to", ULA_B, "dev", "eth0"],
    );
    assert!(
        neigh.contains("lladdr"),
        "neighbour discovery must pass while TCP is dropped: {neigh:?}"
    );

    // Each step is an incremental update, as the agent makes them.
    let steps = [
        (
            "B admits its ULA /64",
            plan(vec![tcp(&["fd00:6::/64", "10.0.0.0/8"])], None),
            [("ula", "open"), ("link-local", "timeout")],
        ),
        (
            "B admits another block and link-local",
            plan(vec![tcp(&["2001:db8::/32", "fe80::/10"])], None),
            [("ula", "timeout"), ("link-local", "open")],
        ),
        (
            "B admits anyone, A's egress is EC2's default (IPv4 only)",
            plan(vec![tcp(&["::/0"])], Some(vec![all(&["0.0.0.0/0"])])),
            [("ula", "timeout"), ("link-local", "timeout")],
        ),
        (
            "A may send to ::/0 too",
            plan(
                vec![tcp(&["::/0"])],
                Some(vec![all(&["0.0.0.0/0"]), all(&["::/0"])]),
            ),
            [("ula", "open"), ("link-local", "open")],
        ),
    ];
    for (what, next, want) in steps {
        let fell_back = update_firewall(&sh, &applied, &next)
            .unwrap_or_else(|e| panic!("{what}: incremental update failed: {e}"));
        assert!(!fell_back, "{what}: fell back to the full apply");
        let rules = rig.ip6tables();
        for (to, expect) in want {
            let addr = if to == "ula" { ULA_B } else { ll_b.as_str() };
            assert_eq!(rig.connect(addr), expect, "{what}: A to B's {to}\n{rules}");
        }
        // What the update wrote is what a full apply writes.
        apply_firewall(&sh, &next).unwrap_or_else(|e| panic!("{what}: full apply failed: {e}"));
        assert_eq!(
            rig.ip6tables(),
            rules,
            "{what}: incremental and full differ"
        );
        applied = next;
    }
    // `::/0` is written as no address match at all.
    let rules = rig.ip6tables();
    assert!(
        rules.contains(&format!(
            "mangle: -A CORRAL-E-{ka} -j RETURN\nmangle: -A CORRAL-E-{ka} -j DROP\n"
        )),
        "{rules}"
    );

    // The last guest goes: no chain of Corral's is left, nothing filtered.
    let empty = NetPlan::default();
    update_firewall(&sh, &applied, &empty).expect("emptying");
    assert_eq!(rig.ip6tables(), "", "Corral's IPv6 chains left behind");
    apply_firewall(&sh, &plan(vec![], None)).expect("full apply");
    assert_ne!(rig.ip6tables(), "");
    apply_firewall(&sh, &empty).expect("clearing");
    assert_eq!(rig.ip6tables(), "", "Corral's IPv6 chains left behind");
    assert_eq!(rig.connect(ULA_B), "open", "nothing filtered any more");
}
