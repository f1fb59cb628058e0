//! The two-node rig (scripts/rig, issue 19's fixture): two nodes as
//! network namespaces, each with its own libvirtd, virtlogd and `corral
//! agent` (its tunnel endpoint the node's underlay address, node nI in
//! zone corral-1<a, b>), reaching `corral up` over the underlay bridge,
//! as `./scripts/up --nodes 2` runs them. The example manifests/two-nodes
//! boots real TCG guests on both, one per zone, on one overlay Network:
//! each is answered by its own node's DHCP and pings the other through the
//! VXLAN tunnel, admitted by a security group whose rule names the group
//! itself (members on the other node). The rig's client, the outside
//! world on the provider network, pings a guest at its floating address
//! (held on that guest's node's uplink, answered by ARP and DNATed there)
//! while a rule admits it, and not once the rule is gone; moved to the
//! other guest, the address is announced by the other node and the client
//! reaches it there within seconds. Each node's taps, bridges, tunnels and domains exist in
//! that node and nowhere else; `scripts/rig down` leaves no namespace,
//! link, process or file behind, also when the test fails (the rig is
//! torn down from `Drop`).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::guests::{guest_server_on, node_token, repo, wait_until_or};
use common::{write, Server, BIN};
use serde_json::Value;

const NODES: usize = 2;
const RIG_HOST: &str = "192.168.240.1";
/// The project of manifests/two-nodes.
const PROJECT: &str = "two-nodes";

fn rig_script() -> PathBuf {
    common::guests::repo().join("scripts/rig")
}

fn rig(args: &[&str]) -> String {
    let out = Command::new(rig_script())
        .args(args)
        .output()
        .expect("running scripts/rig");
    assert!(
        out.status.success(),
        "scripts/rig {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The rig while the test runs; torn down whatever happens.
struct Rig;

impl Rig {
    fn up() -> Rig {
        // A rig a crashed run left behind is removed first.
        rig(&["down"]);
        rig(&["up", &NODES.to_string()]);
        Rig
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = Command::new(rig_script()).arg("down").status();
    }
}

/// `corral agent` inside node `i`'s namespace, on that node's libvirtd.
struct NodeAgent(Child);

impl NodeAgent {
    fn start(s: &Server, i: usize, node: &str, token: &str) -> NodeAgent {
        let port = s.addr.rsplit(':').next().unwrap();
        let log = std::fs::File::create(format!("/tmp/corral-rig-agent-n{i}.log")).unwrap();
        let child = Command::new(rig_script())
            .args(["exec", &i.to_string(), BIN, "agent", "--server"])
            .arg(format!("https://{RIG_HOST}:{port}"))
            .args(["--token", token, "--node", node, "--virt-type", "qemu"])
            .arg("--vtep")
            .arg(vtep(i))
            .args(["--uplink", "eth0"])
            .args(["--zone", &zone(i)])
            .arg("--libvirt")
            .arg(rig(&["libvirt", &i.to_string()]))
            .arg("--agent-dir")
            .arg(format!("/var/lib/corral-rig/n{i}/agent"))
            .arg("--server-ca")
            .arg(s.ca.as_ref().expect("a TLS server"))
            .env("RUST_LOG", "corral_node_agent=info,warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting corral agent in the node");
        NodeAgent(child)
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Node `i`'s underlay address (scripts/rig's numbering).
fn vtep(i: usize) -> String {
    format!("192.168.240.{}", 10 + i)
}

/// Node `i`'s availability zone (as `./scripts/up --nodes` names them):
/// manifests/two-nodes places one guest in each of the first two.
fn zone(i: usize) -> String {
    format!("corral-1{}", char::from(b'a' + (i - 1) as u8))
}

/// Whether the rig's client gets an answer to one ping of `ip`.
fn client_pings(ip: &str) -> bool {
    Command::new(rig_script())
        .args(["ping", ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn links_in(netns: Option<&str>) -> String {
    let mut cmd = Command::new("ip");
    if let Some(n) = netns {
        cmd.args(["-n", n]);
    }
    let out = cmd.args(["-br", "link"]).output().expect("ip link");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn domains(i: usize) -> String {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(rig(&["libvirt", &i.to_string()]))
        .args(["list", "--name"])
        .output()
        .expect("virsh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn instance(s: &Server, name: &str) -> Value {
    s.corral(&["get", "instance", name, "-p", PROJECT, "-o", "json"])
        .json()
}

#[test]
fn guests_boot_on_two_rig_nodes_each_in_its_own_namespace() {
    let rig = Rig::up();
    // The server after the rig: its certificate names the underlay
    // address the agents use.
    let (s, _cleanup, _guest) = guest_server_on("0.0.0.0");
    let mut agents = Vec::new();
    let mut nodes = Vec::new();
    let mut tokens = Vec::new();
    for i in 1..=NODES {
        let node = format!("rig{}n{i}", std::process::id());
        let token = node_token(&s, &node);
        agents.push(NodeAgent::start(&s, i, &node, &token));
        nodes.push(node);
        tokens.push(token);
    }
    let diagnose = || {
        let mut d = s.corral(&["get", "nodes"]).stdout;
        for i in 1..=NODES {
            d += &format!(
                "\nagent n{i}:\n{}",
                std::fs::read_to_string(format!("/tmp/corral-rig-agent-n{i}.log"))
                    .unwrap_or_default()
            );
        }
        d
    };
    wait_until_or(
        "both rig nodes Ready",
        || {
            let list = s.corral(&["get", "nodes", "-o", "json"]).json();
            nodes.iter().all(|n| {
                list["items"].as_array().unwrap().iter().any(|x| {
                    x["metadata"]["name"] == n.as_str()
                        && x["status"]["conditions"].as_array().is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                })
            })
        },
        diagnose,
    );

    let example = repo().join("manifests/two-nodes");
    s.corral(&["apply", "-f", example.to_str().unwrap()]).ok();
    s.corral(&[
        "wait",
        "instance/a",
        "instance/b",
        "-p",
        PROJECT,
        "--for",
        "condition=Ready",
        "--timeout",
        "6m",
    ])
    .ok();

    // One guest per node (a in n1's zone, b in n2's), each booted with its
    // address from its own node's DHCP.
    let mut placed = Vec::new();
    for (name, node) in [("a", &nodes[0]), ("b", &nodes[1])] {
        let i = instance(&s, name);
        assert_eq!(i["status"]["nodeName"], node.as_str(), "{name}: {i}");
        let ip = i["status"]["addresses"][0]["ip"]
            .as_str()
            .unwrap()
            .to_string();
        let console = s.corral(&["console", name, "-p", PROJECT]).stdout;
        assert!(
            console.contains(&format!("ip {ip}/24 gw 10.42.0.1")),
            "{name} on {node}: {console}"
        );
        placed.push((
            name,
            node.clone(),
            i["metadata"]["uid"].as_str().unwrap().to_string(),
        ));
    }

    // Each reached the other over the tunnel (user-data runs before Ready).
    for (name, peer) in [("a", "10.42.0.11"), ("b", "10.42.0.10")] {
        let console = s.corral(&["console", name, "-p", PROJECT]).stdout;
        assert!(
            console.contains(&format!("corral-guest: user-data-out ping {peer} ok")),
            "{name} did not reach {peer}:\n{console}\n{}",
            diagnose()
        );
    }
    // The Network got a VNI and knows both nodes' tunnel endpoints and
    // where each port is.
    let lan = s
        .corral(&["get", "network", "lan", "-p", PROJECT, "-o", "json"])
        .json();
    assert!(
        lan["status"]["vni"].as_u64().is_some_and(|v| v >= 4096),
        "{lan}"
    );
    for (idx, node) in nodes.iter().enumerate() {
        assert_eq!(
            lan["status"]["vteps"][node],
            vtep(idx + 1).as_str(),
            "{lan}"
        );
    }
    assert_eq!(
        lan["status"]["ports"].as_object().map(|p| p.len()),
        Some(2),
        "{lan}"
    );
    let lan_uid = lan["metadata"]["uid"].as_str().unwrap().to_string();
    let tunnel = corral_node_agent::net::vxlan_name(&lan_uid);

    // Each node's libvirtd runs exactly its own guest, and the guest's
    // tap lives in that node's namespace, not on this host.
    let host_links = links_in(None);
    for (idx, node) in nodes.iter().enumerate() {
        let i = idx + 1;
        let (name, _, uid) = placed.iter().find(|p| p.1 == *node).unwrap();
        let domain = format!("corral-{uid}");
        let listed = domains(i);
        assert_eq!(
            listed.split_whitespace().collect::<Vec<_>>(),
            [domain.as_str()],
            "node n{i}"
        );
        let tap = corral_node_agent::net::tap_name(uid, 0);
        let node_links = links_in(Some(&format!("corral-n{i}")));
        assert!(
            node_links.contains(&tap),
            "{name}'s tap {tap} not in n{i}:\n{node_links}"
        );
        assert!(
            !host_links.contains(&tap),
            "{name}'s tap {tap} on the host:\n{host_links}"
        );
        // The tunnel is the node's; the tap carries the overlay's MTU.
        assert!(
            node_links.contains(&tunnel),
            "no {tunnel} in n{i}:\n{node_links}"
        );
        assert!(!host_links.contains(&tunnel), "{tunnel} on the host");
        let tap_link = Command::new("ip")
            .args(["-n", &format!("corral-n{i}"), "link", "show", &tap])
            .output()
            .unwrap();
        let tap_link = String::from_utf8_lossy(&tap_link.stdout);
        assert!(tap_link.contains("mtu 1450"), "{tap_link}");
    }

    // The outside world reaches a at its floating address: the client has
    // the provider pool on its link, a's node holds the address on its
    // eth0 (`--uplink eth0`) and answers ARP for it, its agent DNATs it
    // to a, and a's group admits the provider network's pings.
    wait_until_or(
        "a's floating address",
        || instance(&s, "a")["status"]["addresses"][0]["floatingIp"].is_string(),
        diagnose,
    );
    let fip = instance(&s, "a")["status"]["addresses"][0]["floatingIp"]
        .as_str()
        .unwrap()
        .to_string();
    let address = s
        .corral(&["get", "address", "a-public", "-p", PROJECT, "-o", "json"])
        .json();
    assert_eq!(address["status"]["ip"], fip.as_str(), "{address}");
    assert!(fip.starts_with("172.24.4."), "from corral up's pool: {fip}");
    // (The client's pings work: it reaches n1 on the provider network.)
    assert!(client_pings(&vtep(1)), "the client cannot ping n1");
    assert!(
        !client_pings(&fip),
        "the client reached {fip} with no route to the pool"
    );
    let node_rules = |i: usize| {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("corral-n{i}"), "iptables-save"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Corral's addresses on node i's uplink (labelled eth0:crf).
    let uplink = |i: usize| {
        let out = Command::new("ip")
            .args(["-n", &format!("corral-n{i}"), "-o", "-4", "addr", "show"])
            .args(["dev", "eth0", "label", "eth0:crf"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let held = |i: usize| uplink(i).contains(&format!(" {fip}/32 "));
    let dnat = format!("-d {fip}/32 -j DNAT --to-destination 10.42.0.10");
    // Only a's node translates it and holds it.
    wait_until_or(
        "n1 to DNAT a's floating address and hold it on its uplink",
        || node_rules(1).contains(&dnat) && held(1),
        || {
            format!(
                "n1's rules:\n{}\n{}\n{}",
                node_rules(1),
                uplink(1),
                diagnose()
            )
        },
    );
    assert!(!node_rules(2).contains(&fip), "{}", node_rules(2));
    assert!(!held(2), "{}", uplink(2));
    self::rig(&["pool", "172.24.4.0/24"]);
    wait_until_or(
        "the client to ping a at its floating address",
        || client_pings(&fip),
        || format!("n1's rules:\n{}\n{}", node_rules(1), diagnose()),
    );
    // Without the rule, a's ingress chain drops the client's pings (the
    // address being n1's own does not take them from the DNAT).
    let members_only = "apiVersion: corral/v1\nkind: SecurityGroup\n\
        metadata: {name: mesh, project: two-nodes}\n\
        spec:\n  ingress:\n    - {protocol: icmp, sourceGroup: mesh}\n";
    let file = write(&s.scratch("rig"), "mesh.yaml", members_only);
    s.corral(&["apply", "-f", file.to_str().unwrap()]).ok();
    wait_until_or(
        "the client's pings to be refused",
        || !client_pings(&fip) && !client_pings(&fip),
        || format!("n1's rules:\n{}", node_rules(1)),
    );
    let rules = node_rules(1);
    assert!(
        rules.contains(&dnat) && !rules.contains("-s 192.168.240.0/24 -p icmp -j RETURN"),
        "{rules}"
    );
    assert!(held(1), "{}", uplink(1));

    // The address moves to b, on n2: n1 lets it go, n2 takes it and
    // announces it, and the client (its neighbour cache holding n1's MAC
    // for it) reaches b there within seconds.
    let admitted = example.join("20-securitygroup.yaml");
    s.corral(&["apply", "-f", admitted.to_str().unwrap()]).ok();
    wait_until_or(
        "the client's pings admitted again",
        || client_pings(&fip),
        || format!("n1's rules:\n{}", node_rules(1)),
    );
    let to_b = "apiVersion: corral/v1\nkind: Address\n\
        metadata: {name: a-public, project: two-nodes}\n\
        spec: {pool: public, instance: b}\n";
    let file = write(&s.scratch("rig"), "to-b.yaml", to_b);
    s.corral(&["apply", "-f", file.to_str().unwrap()]).ok();
    wait_until_or(
        "n2 to hold the floating address and n1 to let it go",
        || held(2) && !held(1),
        || format!("n1:\n{}\nn2:\n{}\n{}", uplink(1), uplink(2), diagnose()),
    );
    let moved = Instant::now();
    let b_ip = instance(&s, "b")["status"]["addresses"][0]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        node_rules(2).contains(&format!("-d {fip}/32 -j DNAT --to-destination {b_ip}")),
        "{}",
        node_rules(2)
    );
    assert!(!node_rules(1).contains(&fip), "{}", node_rules(1));
    wait_until_or(
        "the client to ping b at the floating address",
        || client_pings(&fip),
        || format!("n2's rules:\n{}\n{}", node_rules(2), diagnose()),
    );
    let took = moved.elapsed();
    let n2_mac = {
        let out = Command::new("ip")
            .args(["-n", "corral-n2", "-br", "link", "show", "dev", "eth0"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string()
    };
    let neigh = self::rig(&["client", "ip", "neigh", "show", &fip]);
    assert!(
        !n2_mac.is_empty() && neigh.contains(&n2_mac),
        "the client's neighbour entry for {fip} is not n2's eth0 ({n2_mac}): {neigh}"
    );
    assert!(
        took < Duration::from_secs(10),
        "the client reached b only after {took:?} (gratuitous ARP not taken?)"
    );

    // Node 1 restarted with its tunnel lost: the agent, started again,
    // rebuilds the tunnel and its forwarding table, and restarts no guest.
    let (_, _, uid_on_1) = placed.iter().find(|p| p.1 == nodes[0]).unwrap();
    let (peer_name, _, _) = placed.iter().find(|p| p.1 == nodes[1]).unwrap();
    let peer_mac = instance(&s, peer_name)["status"]["addresses"][0]["mac"]
        .as_str()
        .unwrap()
        .to_ascii_lowercase();
    let domid = || {
        let out = Command::new("virsh")
            .arg("-c")
            .arg(self::rig(&["libvirt", "1"]))
            .args(["domid", &format!("corral-{uid_on_1}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let fdb = || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                "corral-n1",
                "bridge",
                "fdb",
                "show",
                "dev",
                &tunnel,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = domid();
    assert!(
        !before.is_empty() && before != "-",
        "a running domain on n1: {before:?}"
    );
    drop(agents.remove(0));
    let gone = Command::new("ip")
        .args(["-n", "corral-n1", "link", "del", &tunnel])
        .status()
        .unwrap();
    assert!(gone.success());
    agents.insert(0, NodeAgent::start(&s, 1, &nodes[0], &tokens[0]));
    wait_until_or(
        "n1's tunnel and forwarding table rebuilt",
        || {
            let table = fdb();
            table.contains(&format!("{peer_mac} dst {}", vtep(2)))
                && table.contains(&format!("00:00:00:00:00:00 dst {}", vtep(2)))
        },
        || format!("fdb:\n{}\n{}", fdb(), diagnose()),
    );
    assert_eq!(domid(), before, "the guest on n1 was restarted");

    for name in ["a", "b"] {
        s.corral(&["delete", "instance", name, "-p", PROJECT]).ok();
    }
    wait_until_or(
        "instances gone and their domains destroyed",
        || {
            let list = s
                .corral(&["get", "instances", "-p", PROJECT, "-o", "json"])
                .json();
            list["items"].as_array().is_some_and(|a| a.is_empty())
                && (1..=NODES).all(|i| domains(i).trim().is_empty())
        },
        diagnose,
    );
    drop(agents);
    drop(rig);
    // Nothing of the rig is left.
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.contains("corral-n") && !netns.contains("corral-client"),
        "{netns}"
    );
    let links = links_in(None);
    assert!(
        !links.contains("crig0") && !links.contains("crn1") && !links.contains("crc0"),
        "{links}"
    );
    assert!(!std::path::Path::new("/var/lib/corral-rig").exists());
}
