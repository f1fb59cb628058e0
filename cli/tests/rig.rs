//! The two-node rig (scripts/rig, issue 19's fixture): two nodes as
//! network namespaces, each with its own libvirtd, virtlogd and `corral
//! agent` (its tunnel endpoint the node's underlay address), reaching
//! `corral up` over the underlay bridge. Real TCG guests boot on both, on
//! one overlay Network: each is answered by its own node's DHCP and pings
//! the other through the VXLAN tunnel, admitted by a security group whose
//! rule names the group itself (members on the other node). Each node's
//! taps, bridges, tunnels and domains exist in that node and nowhere
//! else; `scripts/rig down` leaves no namespace, link, process or file
//! behind, also when the test fails (the rig is torn down from `Drop`).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::guests::{guest_project, guest_server_on, node_token, wait_until_or};
use common::{write, Server, BIN};
use serde_json::Value;

const NODES: usize = 2;
const RIG_HOST: &str = "192.168.240.1";

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

/// Guest `name` at `ip`, pinging `peer` from user-data until it answers.
fn pinging_guest(name: &str, ip: &str, peer: &str) -> String {
    format!(
        "---\napiVersion: corral/v1\nkind: Instance\nmetadata: {{name: {name}, project: rig}}\n\
         spec:\n  instanceType: m1.tiny\n  image: tiny\n\
         \x20 nics: [{{network: lan, fixedIp: {ip}, securityGroups: [mesh]}}]\n\
         \x20 userData: |\n\
         \x20   #!/bin/sh\n\
         \x20   for n in $(seq 1 150); do\n\
         \x20     if ping -c 1 -W 1 {peer} >/dev/null 2>&1; then echo \"ping {peer} ok\"; exit 0; fi\n\
         \x20     sleep 1\n\
         \x20   done\n\
         \x20   echo \"ping {peer} fail\"\n"
    )
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
    s.corral(&["get", "instance", name, "-p", "rig", "-o", "json"])
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

    let mut manifest = guest_project("rig", "10.73.0.0/24", "overlay");
    // Members admit each other's pings, wherever they run.
    manifest +=
        "---\napiVersion: corral/v1\nkind: SecurityGroup\nmetadata: {name: mesh, project: rig}\n\
                 spec:\n  ingress:\n    - {protocol: icmp, sourceGroup: mesh}\n";
    manifest += &pinging_guest("a", "10.73.0.10", "10.73.0.11");
    manifest += &pinging_guest("b", "10.73.0.11", "10.73.0.10");
    let file = write(&s.scratch("rig"), "rig.yaml", &manifest);
    s.corral(&["apply", "-f", file.to_str().unwrap()]).ok();
    s.corral(&[
        "wait",
        "instance/a",
        "instance/b",
        "-p",
        "rig",
        "--for",
        "condition=Ready",
        "--timeout",
        "6m",
    ])
    .ok();

    // One guest per node (the scheduler spreads them), each booted with
    // its address from its own node's DHCP.
    let mut placed = Vec::new();
    for name in ["a", "b"] {
        let i = instance(&s, name);
        let node = i["status"]["nodeName"].as_str().unwrap().to_string();
        let ip = i["status"]["addresses"][0]["ip"]
            .as_str()
            .unwrap()
            .to_string();
        let console = s.corral(&["console", name, "-p", "rig"]).stdout;
        assert!(
            console.contains(&format!("ip {ip}/24 gw 10.73.0.1")),
            "{name} on {node}: {console}"
        );
        placed.push((
            name,
            node,
            i["metadata"]["uid"].as_str().unwrap().to_string(),
        ));
    }
    assert_ne!(placed[0].1, placed[1].1, "spread over both nodes");

    // Each reached the other over the tunnel (user-data runs before Ready).
    for (name, peer) in [("a", "10.73.0.11"), ("b", "10.73.0.10")] {
        let console = s.corral(&["console", name, "-p", "rig"]).stdout;
        assert!(
            console.contains(&format!("corral-guest: user-data-out ping {peer} ok")),
            "{name} did not reach {peer}:\n{console}\n{}",
            diagnose()
        );
    }
    // The Network got a VNI and knows both nodes' tunnel endpoints and
    // where each port is.
    let lan = s
        .corral(&["get", "network", "lan", "-p", "rig", "-o", "json"])
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
        s.corral(&["delete", "instance", name, "-p", "rig"]).ok();
    }
    wait_until_or(
        "instances gone and their domains destroyed",
        || {
            let list = s
                .corral(&["get", "instances", "-p", "rig", "-o", "json"])
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
    assert!(!netns.contains("corral-n"), "{netns}");
    let links = links_in(None);
    assert!(
        !links.contains("crig0") && !links.contains("crn1"),
        "{links}"
    );
    assert!(!std::path::Path::new("/var/lib/corral-rig").exists());
}
