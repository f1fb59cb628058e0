//! The overlay data path (node-agent/src/net/vxlan.rs) on the real kernel:
//! two nodes and a guest on each, all network namespaces this test makes
//! (and deletes, even when it fails), with a veth between the nodes as the
//! underlay. Guests reach each other through VXLAN; the FDB and the
//! devices are set idempotently; the ebtables guard keeps DHCP and ARP for
//! the (distributed) gateway off the tunnel. Nothing outside its own
//! namespaces is touched. Runs as root, like the agent; CI runs tests as
//! root. Pings and datagrams are sent with python3 (raw ICMP, UDP), which
//! the test machines have where they may lack ping and arping.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use corral_node_agent::net::{
    bridge_name, ensure_overlay, guard_tunnel, remove_overlays_except, sync_fdb, vxlan_name, Fdb,
    FdbChange, Overlay, Shell, VxlanError, GUARD_CHAIN, VXLAN_PORT,
};

const NET_UID: &str = "c0ffee00-7777-4a1b-8c2d-0123456789ab";
const NS_PREFIX: &str = "cvxt-";
const VNI: u32 = 4242;
const MTU: u32 = 1450;
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const UNDERLAY_A: Ipv4Addr = Ipv4Addr::new(192, 168, 251, 1);
const UNDERLAY_B: Ipv4Addr = Ipv4Addr::new(192, 168, 251, 2);
const GUEST_A: &str = "10.77.0.10";
const GUEST_B: &str = "10.77.0.11";
const MAC_GA: &str = "52:54:00:77:00:0a";
const MAC_GB: &str = "52:54:00:77:00:0b";
/// Different on each node here (in Corral they are the same), so the test
/// can tell whose gateway answered.
const MAC_BR_A: &str = "02:77:00:00:00:0a";
const MAC_BR_B: &str = "02:77:00:00:00:0b";

/// Raw-socket ICMP echo: prints how many of N echoes were answered.
const PING: &str = r#"
import os, socket, struct, sys, time
dst, count = sys.argv[1], int(sys.argv[2])
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
ident = os.getpid() & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
got = 0
for seq in range(count):
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"corral-overlay"
    s.sendto(body[:2] + struct.pack("!H", csum(body)) + body[4:], (dst, 0))
    end = time.time() + 2
    while time.time() < end:
        s.settimeout(max(0.01, end - time.time()))
        try:
            data, addr = s.recvfrom(2048)
        except socket.timeout:
            break
        h = (data[0] & 15) * 4
        t, _, _, i, q = struct.unpack("!BBHHH", data[h:h + 8])
        if addr[0] == dst and t == 0 and i == ident and q == seq:
            got += 1
            break
print(got)
"#;

/// UDP datagrams from `src:sport` (bound to `dev`) to `dst` on each port
/// given, three each, in order.
const SEND: &str = r#"
import socket, sys
src, sport, dev, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_BINDTODEVICE", 25), dev.encode())
s.bind((src, sport))
for port in sys.argv[5:]:
    for _ in range(3):
        s.sendto(b"corral-" + port.encode(), (dst, int(port)))
"#;

/// Listens on UDP 0.0.0.0 at each port given (the last is the control),
/// prints "ready", then the ports that got a datagram: shortly after the
/// control arrived, or after 5 s.
const LISTEN: &str = r#"
import select, socket, sys, time
ports = [int(p) for p in sys.argv[1:]]
socks = []
for p in ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", p))
    socks.append(s)
print("ready", flush=True)
end, seen = time.time() + 5, set()
while time.time() < end:
    ready, _, _ = select.select(socks, [], [], max(0, end - time.time()))
    for s in ready:
        s.recvfrom(2048)
        seen.add(s.getsockname()[1])
        if ports[-1] in seen:
            end = min(end, time.time() + 0.3)
print(" ".join(str(p) for p in sorted(seen)), flush=True)
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

fn json(ns: &str, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ns_run(ns, args)).expect("JSON output")
}

/// `ip -d -j link show dev DEV`'s one link.
fn link(ns: &str, dev: &str) -> serde_json::Value {
    json(ns, &["ip", "-d", "-j", "link", "show", "dev", dev])[0].clone()
}

/// The programmed (MAC, dst) entries of `dev`'s FDB.
fn fdb_entries(ns: &str, dev: &str) -> BTreeSet<(String, String)> {
    json(ns, &["bridge", "-j", "fdb", "show", "dev", dev])
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|e| {
            Some((
                e["mac"].as_str()?.to_string(),
                e.get("dst")?.as_str()?.to_string(),
            ))
        })
        .collect()
}

/// ICMP echoes from `ns` to `dst` answered, of 3.
fn ping(ns: &str, dst: &str) -> u32 {
    ns_run(ns, &["python3", "-c", PING, dst, "3"])
        .trim()
        .parse()
        .expect("a count")
}

/// Packets counted by the rule of [`GUARD_CHAIN`] in `ns` that contains
/// `rule`.
fn drops(ns: &str, rule: &str) -> u64 {
    let listing = ns_run(ns, &["ebtables", "-t", "filter", "-L", GUARD_CHAIN, "--Lc"]);
    let line = listing
        .lines()
        .find(|l| l.contains(rule))
        .unwrap_or_else(|| panic!("no rule with {rule:?} in\n{listing}"));
    let pcnt = line
        .split("pcnt = ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no counter in {line:?}"));
    pcnt.parse().expect("a packet count")
}

/// Sends datagrams from `from` to 255.255.255.255 on `port` and then on a
/// control port, answering the ports a listener in `to` heard.
fn broadcast(from: (&str, &str, &str, u16), to: &str, port: u16) -> String {
    let (ns, src, dev, sport) = from;
    let control = (port + 6700).to_string();
    let port = port.to_string();
    let mut listener = Command::new("ip")
        .args([
            "netns", "exec", to, "python3", "-c", LISTEN, &port, &control,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the listener");
    let mut lines = BufReader::new(listener.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(Result::ok);
    assert_eq!(first.as_deref(), Some("ready"), "listener in {to}");
    let sport = sport.to_string();
    ns_run(
        ns,
        &[
            "python3",
            "-c",
            SEND,
            src,
            &sport,
            dev,
            "255.255.255.255",
            &port,
            &control,
        ],
    );
    let heard = lines.next().and_then(Result::ok).unwrap_or_default();
    let _ = listener.wait();
    heard
}

/// The namespaces and veths of one run, deleted on drop (also when the
/// test panics).
struct Rig {
    tag: String,
    a: String,
    b: String,
    ga: String,
    gb: String,
}

impl Rig {
    fn new() -> Rig {
        clear_stale();
        let tag = format!("{:x}", std::process::id());
        let ns = |what: &str| format!("{NS_PREFIX}{tag}-{what}");
        let rig = Rig {
            a: ns("a"),
            b: ns("b"),
            ga: ns("ga"),
            gb: ns("gb"),
            tag,
        };
        for n in rig.namespaces() {
            let out = run("ip", &["netns", "add", n]);
            assert!(out.status.success(), "ip netns add {n}: {out:?}");
            ns_run(n, &["ip", "link", "set", "lo", "up"]);
        }
        // The underlay: made straight in the nodes' namespaces.
        let (ua, ub) = (rig.veth("ua"), rig.veth("ub"));
        let out = run(
            "ip",
            &[
                "link", "add", &ua, "netns", &rig.a, "type", "veth", "peer", "name", &ub, "netns",
                &rig.b,
            ],
        );
        assert!(out.status.success(), "underlay veth: {out:?}");
        let br = bridge_name(NET_UID);
        for (node, dev, ip, guest_ns, port, guest, gip, gmac, brmac) in [
            (
                &rig.a,
                &ua,
                UNDERLAY_A,
                &rig.ga,
                rig.veth("pa"),
                rig.veth("ga"),
                GUEST_A,
                MAC_GA,
                MAC_BR_A,
            ),
            (
                &rig.b,
                &ub,
                UNDERLAY_B,
                &rig.gb,
                rig.veth("pb"),
                rig.veth("gb"),
                GUEST_B,
                MAC_GB,
                MAC_BR_B,
            ),
        ] {
            ns_run(
                node,
                &["ip", "addr", "add", &format!("{ip}/24"), "dev", dev],
            );
            ns_run(node, &["ip", "link", "set", dev, "up"]);
            ns_run(
                node,
                &[
                    "ip", "link", "add", "name", &br, "address", brmac, "type", "bridge",
                ],
            );
            ns_run(
                node,
                &["ip", "addr", "add", &format!("{GATEWAY}/24"), "dev", &br],
            );
            ns_run(node, &["ip", "link", "set", &br, "up"]);
            let out = run(
                "ip",
                &[
                    "link", "add", &port, "netns", node, "type", "veth", "peer", "name", &guest,
                    "netns", guest_ns, "address", gmac,
                ],
            );
            assert!(out.status.success(), "guest veth: {out:?}");
            ns_run(node, &["ip", "link", "set", &port, "master", &br, "up"]);
            ns_run(
                guest_ns,
                &["ip", "addr", "add", &format!("{gip}/24"), "dev", &guest],
            );
            ns_run(guest_ns, &["ip", "link", "set", &guest, "up"]);
        }
        rig
    }

    fn namespaces(&self) -> [&String; 4] {
        [&self.a, &self.b, &self.ga, &self.gb]
    }

    /// A veth name unique to this run (at most 15 characters).
    fn veth(&self, what: &str) -> String {
        format!("vt{}{what}", self.tag)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for n in self.namespaces() {
            let _ = run("ip", &["netns", "del", n]);
        }
        // Veths are made inside the namespaces; should one have stayed in
        // this one, it goes too (deleting one end deletes both).
        for what in ["ua", "ub", "pa", "pb", "ga", "gb"] {
            let name = self.veth(what);
            if run("ip", &["link", "show", "dev", &name]).status.success() {
                let _ = run("ip", &["link", "del", "dev", &name]);
            }
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

fn overlay(rig: &Rig, node: char) -> Overlay {
    Overlay {
        device: vxlan_name(NET_UID),
        bridge: bridge_name(NET_UID),
        vni: VNI,
        local: if node == 'a' { UNDERLAY_A } else { UNDERLAY_B },
        port: VXLAN_PORT,
        // One node binds the tunnel to its underlay device, one does not.
        underlay: (node == 'a').then(|| rig.veth("ua")),
        mtu: MTU,
        gateway: GATEWAY,
    }
}

fn fdb(peer: Ipv4Addr, macs: &[(&str, Ipv4Addr)]) -> Fdb {
    Fdb {
        flood: BTreeSet::from([peer]),
        macs: macs
            .iter()
            .map(|(m, ip)| (m.to_string(), *ip))
            .collect::<BTreeMap<_, _>>(),
    }
}

#[test]
fn guests_on_two_nodes_talk_over_vxlan_and_the_gateway_stays_local() {
    let started = Instant::now();
    let rig = Rig::new();
    let (sa, sb) = (Shell::in_netns(&rig.a), Shell::in_netns(&rig.b));
    let (oa, ob) = (overlay(&rig, 'a'), overlay(&rig, 'b'));
    let dev = oa.device.clone();
    let br = oa.bridge.clone();
    let fdb_a = fdb(UNDERLAY_B, &[(MAC_GB, UNDERLAY_B)]);
    let fdb_b = fdb(UNDERLAY_A, &[(MAC_GA, UNDERLAY_A)]);

    ensure_overlay(&sa, &oa).expect("overlay on A");
    ensure_overlay(&sb, &ob).expect("overlay on B");
    let two = FdbChange {
        added: 2,
        removed: 0,
    };
    assert_eq!(sync_fdb(&sa, &dev, &fdb_a).expect("FDB on A"), two);
    assert_eq!(sync_fdb(&sb, &dev, &fdb_b).expect("FDB on B"), two);
    guard_tunnel(&sa, std::slice::from_ref(&oa)).expect("guard on A");
    guard_tunnel(&sb, std::slice::from_ref(&ob)).expect("guard on B");

    // The device is as asked.
    let l = link(&rig.a, &dev);
    assert_eq!(l["linkinfo"]["info_kind"], "vxlan", "{l}");
    let data = &l["linkinfo"]["info_data"];
    assert_eq!(data["id"], VNI, "{l}");
    assert_eq!(data["local"], UNDERLAY_A.to_string(), "{l}");
    assert_eq!(data["port"], VXLAN_PORT, "{l}");
    assert_eq!(data["learning"], false, "{l}");
    assert_eq!(data["link"], rig.veth("ua"), "{l}");
    assert_eq!(l["master"], br.as_str(), "{l}");
    assert!(l["flags"].as_array().unwrap().contains(&"UP".into()), "{l}");
    assert!(link(&rig.b, &dev)["linkinfo"]["info_data"]
        .get("link")
        .is_none());

    // 1. Guests reach each other, through the tunnel.
    assert_eq!(ping(&rig.ga, GUEST_B), 3, "gA -> gB over VXLAN");
    assert_eq!(ping(&rig.gb, GUEST_A), 3, "gB -> gA over VXLAN");

    // 2. Idempotence: nothing changes the second time.
    let ifindex = |ns: &str| link(ns, &dev)["ifindex"].as_u64().expect("ifindex");
    let (ia, ib) = (ifindex(&rig.a), ifindex(&rig.b));
    let before = fdb_entries(&rig.a, &dev);
    ensure_overlay(&sa, &oa).expect("overlay on A again");
    ensure_overlay(&sb, &ob).expect("overlay on B again");
    assert_eq!(sync_fdb(&sa, &dev, &fdb_a).unwrap(), FdbChange::default());
    assert_eq!(sync_fdb(&sb, &dev, &fdb_b).unwrap(), FdbChange::default());
    assert_eq!((ifindex(&rig.a), ifindex(&rig.b)), (ia, ib));
    assert_eq!(fdb_entries(&rig.a, &dev), before);

    // 3. The FDB holds exactly what was programmed; stale entries go.
    let b = UNDERLAY_B.to_string();
    assert_eq!(
        fdb_entries(&rig.a, &dev),
        BTreeSet::from([
            ("00:00:00:00:00:00".to_string(), b.clone()),
            (MAC_GB.to_string(), b.clone()),
        ])
    );
    let only_flood = fdb(UNDERLAY_B, &[]);
    assert_eq!(
        sync_fdb(&sa, &dev, &only_flood).unwrap(),
        FdbChange {
            added: 0,
            removed: 1
        }
    );
    assert_eq!(
        fdb_entries(&rig.a, &dev),
        BTreeSet::from([("00:00:00:00:00:00".to_string(), b.clone())])
    );
    // Unknown unicast is flooded to the peer: still reachable.
    assert_eq!(ping(&rig.ga, GUEST_B), 3, "gA -> gB by flooding");
    // A guest that moves node: its entry is replaced in place.
    let elsewhere = Ipv4Addr::new(192, 168, 251, 3);
    assert_eq!(
        sync_fdb(&sa, &dev, &fdb(UNDERLAY_B, &[(MAC_GB, elsewhere)])).unwrap(),
        FdbChange {
            added: 1,
            removed: 0
        }
    );
    assert_eq!(
        sync_fdb(&sa, &dev, &fdb_a).unwrap(),
        FdbChange {
            added: 1,
            removed: 1
        }
    );
    assert_eq!(fdb_entries(&rig.a, &dev), before);
    // A bad MAC is refused by name, and nothing is changed.
    let bad = fdb(UNDERLAY_B, &[("52:54:00:77:00:zz", UNDERLAY_B)]);
    let err = sync_fdb(&sa, &dev, &bad).unwrap_err();
    assert!(matches!(err, VxlanError::BadMac { .. }), "{err}");
    assert!(err.to_string().contains("52:54:00:77:00:zz"), "{err}");
    assert_eq!(fdb_entries(&rig.a, &dev), before);

    // 4. MTU of the device and the bridge, and no learning on the port.
    for ns in [&rig.a, &rig.b] {
        assert_eq!(link(ns, &dev)["mtu"], MTU, "{ns}: VXLAN device MTU");
        assert_eq!(link(ns, &br)["mtu"], MTU, "{ns}: bridge MTU");
        let port = json(ns, &["bridge", "-d", "-j", "link", "show", "dev", &dev]);
        assert_eq!(port[0]["learning"], false, "{ns}: {port}");
    }

    // A device made otherwise is made anew (then reprogrammed).
    let mut moved = oa.clone();
    moved.port = 4790;
    ensure_overlay(&sa, &moved).expect("overlay with another port");
    let l = link(&rig.a, &dev);
    assert_ne!(l["ifindex"].as_u64(), Some(ia), "recreated");
    assert_eq!(l["linkinfo"]["info_data"]["port"], 4790);
    assert_eq!(l["mtu"], MTU);
    assert_eq!(l["master"], br.as_str());
    ensure_overlay(&sa, &oa).expect("overlay back to its port");
    assert_eq!(sync_fdb(&sa, &dev, &fdb_a).unwrap(), two);
    assert_eq!(ping(&rig.ga, GUEST_B), 3, "gA -> gB after recreation");

    // 5. The guard. Rewritten whole, once per hook.
    guard_tunnel(&sa, std::slice::from_ref(&oa)).expect("guard on A again");
    let listing = ns_run(&rig.a, &["ebtables", "-t", "filter", "-L"]);
    let jump = format!("-j {GUARD_CHAIN}");
    assert_eq!(listing.matches(&jump).count(), 2, "{listing}");
    assert_eq!(listing.matches("-j DROP").count(), 4, "{listing}");

    // ARP for the gateway is answered by the guest's own node, and never
    // leaves through the tunnel.
    let arp_dst = format!("-o {dev} --arp-ip-dst {GATEWAY}");
    let arp_before = drops(&rig.a, &arp_dst);
    ns_run(&rig.ga, &["ip", "neigh", "flush", "all"]);
    let poke = format!(
        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('{GATEWAY}', 9))"
    );
    ns_run(&rig.ga, &["python3", "-c", &poke]);
    let deadline = Instant::now() + Duration::from_secs(3);
    let gw_mac = loop {
        let n = json(
            &rig.ga,
            &["ip", "-j", "neigh", "show", &GATEWAY.to_string()],
        );
        if let Some(mac) = n[0]["lladdr"].as_str() {
            break mac.to_string();
        }
        assert!(Instant::now() < deadline, "gA never resolved the gateway");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(gw_mac, MAC_BR_A, "gA got its own node's gateway");
    assert!(
        drops(&rig.a, &arp_dst) > arp_before,
        "the ARP request was not dropped at A's tunnel port"
    );
    // Node B never heard it: a node that answers an ARP request learns the
    // asker.
    let heard = json(&rig.b, &["ip", "-j", "neigh", "show", GUEST_A]);
    assert_eq!(heard, serde_json::json!([]), "B's gateway heard gA");

    // DHCP: a client's broadcast (to port 67) stays on its node, while
    // other broadcasts cross; the server's answers (to 68) likewise.
    let dhcp = |port: u16| format!("-o {dev} --ip-proto udp --ip-dport {port}");
    let before_67 = drops(&rig.a, &dhcp(67));
    let heard = broadcast((&rig.ga, GUEST_A, &rig.veth("ga"), 68), &rig.gb, 67);
    assert_eq!(heard, "6767", "gB heard {heard:?}");
    assert!(
        drops(&rig.a, &dhcp(67)) > before_67,
        "DHCP request not dropped"
    );
    let before_68 = drops(&rig.b, &dhcp(68));
    let heard = broadcast((&rig.gb, GUEST_B, &rig.veth("gb"), 67), &rig.ga, 68);
    assert_eq!(heard, "6768", "gA heard {heard:?}");
    assert!(
        drops(&rig.b, &dhcp(68)) > before_68,
        "DHCP reply not dropped"
    );

    // 6. Sweeping: strays go, what is kept stays; then everything.
    let ia = ifindex(&rig.a);
    ns_run(&rig.a, &["ip", "link", "add", "cvxstale", "type", "bridge"]);
    assert_eq!(
        remove_overlays_except(&sa, std::slice::from_ref(&dev)).unwrap(),
        vec!["cvxstale".to_string()]
    );
    assert_eq!(ifindex(&rig.a), ia);
    assert_eq!(remove_overlays_except(&sa, &[]).unwrap(), vec![dev.clone()]);
    let gone = run(
        "ip",
        &["netns", "exec", &rig.a, "ip", "link", "show", "dev", &dev],
    );
    assert!(!gone.status.success(), "{dev} still there");
    assert_eq!(
        remove_overlays_except(&sa, &[]).unwrap(),
        Vec::<String>::new()
    );
    // No overlays: no guard chain, no jumps.
    guard_tunnel(&sa, &[]).expect("guard removed");
    let listing = ns_run(&rig.a, &["ebtables", "-t", "filter", "-L"]);
    assert!(!listing.contains(GUARD_CHAIN), "{listing}");
    guard_tunnel(&sa, &[]).expect("guard removed again");

    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}
