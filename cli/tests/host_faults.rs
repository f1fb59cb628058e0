//! Host faults under real guests: libvirtd SIGKILLed while the agent
//! manages guests, and an agent cut off from the server by a firewall
//! rule while its guests keep running. Real processes throughout:
//! `corral up`, a separate `corral agent` on `qemu:///system`, libvirtd,
//! virtlogd, QEMU (TCG here) and iptables.
//!
//! Needs root, libvirtd (scripts/start-libvirt), iptables and the guest
//! image (tests/images/build-guest); fails, never skips, without them.
//! Both tests disturb the whole host (libvirtd is shared, iptables is
//! global): run them under the host lock,
//! `flock /tmp/corral-host.lock cargo test -p corral-cli --test host_faults`.
//! libvirtd is restarted and the firewall rule removed even when a test
//! fails.
//!
//! Over 600 lines on purpose: as guests.rs, its cases boot guests one at
//! a time under this binary's lock and share its helpers.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::guests::{
    boots, domid, domstate, guest_project, guest_server, guest_server_on, node_user, one_at_a_time,
    qemu_pid, repo, virsh, virsh_ok, wait_until, wait_until_or, Agent,
};
use common::{seeded, write, Server};
use serde_json::Value;

/// The agents here log to this file (appended); each test reads what
/// was written after it started.
const AGENT_LOG: &str = "/tmp/corral-host-faults-agent.log";

fn base() -> String {
    guest_project("faults", "10.47.0.0/24", "nat")
}

fn instance_yaml(name: &str) -> String {
    format!(
        "apiVersion: corral/v1\nkind: Instance\nmetadata: {{name: {name}, project: faults}}\nspec:\n  instanceType: m1.tiny\n  image: tiny\n  nics: [{{network: lan}}]\n"
    )
}

fn apply(s: &Server, name: &str, yaml: &str) {
    let p = write(&s.scratch("faults"), name, yaml);
    s.corral(&["apply", "-f", p.to_str().unwrap()]).ok();
}

/// The instance, or `None` once it is gone.
fn instance(s: &Server, name: &str) -> Option<Value> {
    let out = s.corral(&["get", "instance", name, "-p", "faults", "-o", "json"]);
    (out.code == 0).then(|| out.json())
}

fn phase(s: &Server, name: &str) -> String {
    instance(s, name)
        .and_then(|i| i["status"]["phase"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn condition(object: &Value, type_: &str) -> String {
    object["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

fn ready(s: &Server, name: &str) -> bool {
    instance(s, name).is_some_and(|i| condition(&i, "Ready") == "True")
}

fn uid(s: &Server, name: &str) -> String {
    instance(s, name).expect("instance")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string()
}

fn node(s: &Server, name: &str) -> Value {
    s.api("GET", &format!("/v1/nodes/{name}"), None)
}

/// Corral domains whose disks live under the test's directory.
fn test_domains(s: &Server) -> Vec<String> {
    let dir = s.dir.display().to_string();
    virsh(&["list", "--all", "--name"])
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with("corral-"))
        .filter(|n| {
            Command::new("virsh")
                .args(["-c", "qemu:///system", "domblklist", n])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&dir))
        })
        .map(str::to_string)
        .collect()
}

/// Every Instance of the project that should run has exactly one domain,
/// running; no other domain of this test exists. Answers the count.
fn one_running_domain_per_instance(s: &Server) -> usize {
    let list = s
        .corral(&["get", "instances", "-p", "faults", "-o", "json"])
        .json();
    let uids: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["uid"].as_str().unwrap().to_string())
        .collect();
    let mut domains = test_domains(s);
    domains.sort();
    let mut want: Vec<String> = uids.iter().map(|u| format!("corral-{u}")).collect();
    want.sort();
    assert_eq!(domains, want, "one domain per Instance, and no other");
    for d in &domains {
        assert_eq!(domstate(d), "running", "{d}");
    }
    domains.len()
}

/// What the agents logged since `from` bytes into [`AGENT_LOG`].
fn log_since(from: u64) -> String {
    let text = std::fs::read(AGENT_LOG).unwrap_or_default();
    String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned()
}

fn log_len() -> u64 {
    std::fs::metadata(AGENT_LOG).map(|m| m.len()).unwrap_or(0)
}

/// Deletes the project's instances and waits until the agent has removed
/// its network too: nothing of the test stays on the host.
fn tear_down(s: &Server) {
    let net_uid = s
        .corral(&["get", "network", "lan", "-p", "faults", "-o", "json"])
        .json()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let list = s
        .corral(&["get", "instances", "-p", "faults", "-o", "json"])
        .json();
    let names = common::names(&list);
    if !names.is_empty() {
        let mut args = vec!["delete", "instance"];
        args.extend(names.iter().map(String::as_str));
        args.extend(["-p", "faults", "--wait", "--timeout", "120s"]);
        s.corral(&args).ok();
    }
    wait_until("the test's domains gone", || test_domains(s).is_empty());
    wait_until("the test's libvirt network gone", || {
        !virsh(&["net-list", "--all", "--name"]).contains(&net_uid)
    });
}

// ------------------------------------------------------------- libvirtd

/// libvirtd's pid, from its pid file, checked against /proc.
fn libvirtd_pid() -> u32 {
    let text = std::fs::read_to_string("/run/libvirtd.pid").expect("/run/libvirtd.pid");
    let pid: u32 = text.trim().parse().expect("a pid in /run/libvirtd.pid");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "libvirtd", "pid {pid} from /run/libvirtd.pid");
    pid
}

/// Whether `pid` is gone (or a zombie nobody reaped yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// SIGKILLs libvirtd and waits until it is gone; answers its pid.
fn kill_libvirtd() -> u32 {
    let pid = libvirtd_pid();
    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_until("libvirtd gone", || exited(pid));
    pid
}

/// Starts libvirtd when it does not answer, and waits until it does.
fn ensure_libvirtd() -> bool {
    if virsh_ok(&["version"]) {
        return true;
    }
    // Through the script: libvirtd must not inherit this process's
    // descriptors (the host lock the test runs under, a CI pipe).
    let _ = Command::new(repo().join("scripts/start-libvirt"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if virsh_ok(&["version"]) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Brings libvirtd back when dropped, whatever happened.
struct RestoreLibvirtd;

impl Drop for RestoreLibvirtd {
    fn drop(&mut self) {
        if !ensure_libvirtd() {
            eprintln!("libvirtd did not come back: run scripts/start-libvirt");
        }
    }
}

#[test]
fn libvirtd_killed_under_the_agent_leaves_guests_running_and_work_resumes() {
    let t0 = Instant::now();
    let _one = one_at_a_time();
    let (s, _cleanup, _guest) = guest_server();
    let (node_name, token) = node_user(&s);
    let log_from = log_len();
    let mut agent = Agent::start_with(&s, &s.url, &token, &node_name, &s.dir, Path::new(AGENT_LOG));

    apply(&s, "base.yaml", &base());
    apply(
        &s,
        "two.yaml",
        &format!(
            "{}---\n{}",
            instance_yaml("steady"),
            instance_yaml("doomed")
        ),
    );
    wait_until("steady Ready", || ready(&s, "steady"));
    wait_until("doomed Running", || phase(&s, "doomed") == "Running");
    let steady = format!("corral-{}", uid(&s, "steady"));
    let doomed_uid = uid(&s, "doomed");
    let doomed = format!("corral-{doomed_uid}");
    let steady_pid = qemu_pid(&steady).expect("steady's QEMU");
    let steady_id = domid(&steady);
    let steady_boots = boots(&s, &uid(&s, "steady"));
    let doomed_pid = qemu_pid(&doomed).expect("doomed's QEMU");
    let mut checked = BTreeMap::<&str, String>::new();

    // SIGKILL libvirtd, then ask for work it is needed for: a new
    // instance, and the deletion of a running one.
    let _restore = RestoreLibvirtd;
    let killed_at = Instant::now();
    let pid = kill_libvirtd();
    apply(&s, "fresh.yaml", &instance_yaml("fresh"));
    s.corral(&["delete", "instance", "doomed", "-p", "faults"])
        .ok();

    // While libvirtd is away: the guests run on, nothing is marked Failed
    // or recreated, the agent keeps heartbeating and does not exit.
    let outage = Duration::from_secs(15);
    let mut polls = 0;
    while killed_at.elapsed() < outage {
        polls += 1;
        assert_eq!(
            phase(&s, "steady"),
            "Running",
            "steady while libvirtd is down"
        );
        let fresh = phase(&s, "fresh");
        assert!(
            !matches!(fresh.as_str(), "Running" | "Failed"),
            "fresh is {fresh} while libvirtd is down"
        );
        assert_eq!(qemu_pid(&steady), Some(steady_pid), "steady's QEMU");
        assert_eq!(qemu_pid(&doomed), Some(doomed_pid), "doomed's QEMU");
        assert!(agent.running(), "the agent exited while libvirtd was down");
        assert_eq!(condition(&node(&s, &node_name), "Ready"), "True");
        std::thread::sleep(Duration::from_millis(500));
    }
    let node_during = node(&s, &node_name);
    assert_eq!(
        condition(&node_during, "HypervisorReachable"),
        "False",
        "{node_during:#}"
    );
    checked.insert(
        "during the outage",
        format!(
            "{polls} polls over {outage:?}: steady Running, fresh neither Running nor Failed, both QEMUs alive, agent alive, Node Ready=True and HypervisorReachable=False ({})",
            node_during["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "HypervisorReachable"))
                .map(|c| c["message"].to_string())
                .unwrap_or_default()
        ),
    );

    assert!(ensure_libvirtd(), "libvirtd did not restart");
    let restarted_at = Instant::now();
    wait_until_or(
        "fresh Ready",
        || ready(&s, "fresh"),
        || {
            s.corral(&["describe", "instance", "fresh", "-p", "faults"])
                .stdout
        },
    );
    wait_until_or(
        "doomed gone",
        || instance(&s, "doomed").is_none(),
        || {
            s.corral(&["describe", "instance", "doomed", "-p", "faults"])
                .stdout
        },
    );
    let converged_after = restarted_at.elapsed();
    assert!(
        !virsh(&["list", "--all", "--name"]).contains(&doomed),
        "doomed's domain left behind"
    );
    let doomed_dir = s.dir.join("agent/instances").join(&doomed_uid);
    assert!(!doomed_dir.exists(), "{} left behind", doomed_dir.display());
    assert!(qemu_pid(&doomed).is_none(), "doomed's QEMU still runs");
    checked.insert(
        "deleted during the outage",
        "no domain, no QEMU, no files".into(),
    );
    checked.insert("created during the outage", "Running and Ready".into());

    assert_eq!(
        qemu_pid(&steady),
        Some(steady_pid),
        "steady's QEMU was replaced"
    );
    assert_eq!(domid(&steady), steady_id);
    assert!(ready(&s, "steady"));
    assert_eq!(
        boots(&s, &uid(&s, "steady")),
        steady_boots,
        "steady rebooted"
    );
    checked.insert(
        "pre-existing guest",
        format!("same QEMU pid {steady_pid}, same domain id {steady_id}, no new boot, Ready"),
    );
    let n = one_running_domain_per_instance(&s);
    checked.insert(
        "domains",
        format!("exactly one running per Instance ({n}), no other"),
    );
    wait_until("Node Ready", || {
        let node = node(&s, &node_name);
        condition(&node, "Ready") == "True" && condition(&node, "HypervisorReachable") == "True"
    });
    assert!(agent.running(), "the agent exited");
    checked.insert(
        "node",
        "Ready=True, HypervisorReachable=True again, the agent never exited".into(),
    );

    // The loss and the recovery are logged once each, not once per call.
    let log = log_since(log_from);
    let lost = log.matches("lost the libvirt connection").count();
    let restored = log.matches("libvirt connection restored").count();
    assert!(lost >= 1 && restored >= 1, "{log}");
    assert!(
        lost <= 3 && restored <= 3,
        "lost {lost}, restored {restored}: {log}"
    );
    // Each of the agent's loops says it once, not on every retry (15 s of
    // retries by the scan, the network sync and 3 instances' workers).
    let warnings = log.lines().filter(|l| l.contains("WARN")).count();
    assert!(warnings <= 10, "{warnings} warnings: {log}");
    checked.insert(
        "agent log",
        format!("'lost' {lost}x, 'restored' {restored}x, {warnings} WARN lines in all"),
    );

    tear_down(&s);
    drop(agent);
    println!(
        "host-faults/libvirtd: SIGKILL of libvirtd (pid {pid}), down {outage:?}, converged {converged_after:?} after its restart; {:?} in all",
        t0.elapsed()
    );
    for (what, how) in &checked {
        println!("  checked {what}: {how}");
    }
}

/// An agent started while libvirtd is down waits for it, as nova-compute
/// waits for libvirt, instead of exiting: it registers its Node once
/// libvirtd answers, and instances then run there.
#[test]
fn agent_started_before_libvirtd_waits_for_it() {
    let _one = one_at_a_time();
    let (s, _cleanup, _guest) = guest_server();
    let (node_name, token) = node_user(&s);
    apply(&s, "base.yaml", &base());
    let log_from = log_len();
    let _restore = RestoreLibvirtd;
    kill_libvirtd();
    let mut agent = Agent::start_with(&s, &s.url, &token, &node_name, &s.dir, Path::new(AGENT_LOG));

    let node_exists = |s: &Server| s.corral(&["get", "node", &node_name, "-o", "json"]).code == 0;
    let waited = Duration::from_secs(8);
    let start = Instant::now();
    let mut polls = 0;
    while start.elapsed() < waited {
        polls += 1;
        assert!(
            agent.running(),
            "the agent exited while libvirtd was down: {}",
            log_since(log_from)
        );
        assert!(
            !node_exists(&s),
            "the Node registered without a hypervisor to describe"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = log_since(log_from);
    assert!(
        log.contains("libvirt does not answer yet"),
        "the agent should say why it waits: {log}"
    );

    assert!(ensure_libvirtd(), "libvirtd did not restart");
    wait_until("Node Ready", || {
        node_exists(&s) && condition(&node(&s, &node_name), "Ready") == "True"
    });
    apply(&s, "late.yaml", &instance_yaml("late"));
    wait_until_or(
        "late Ready",
        || ready(&s, "late"),
        || {
            s.corral(&["describe", "instance", "late", "-p", "faults"])
                .stdout
        },
    );
    assert_eq!(
        instance(&s, "late").unwrap()["status"]["nodeName"],
        node_name.as_str()
    );
    assert!(agent.running(), "the agent exited");
    tear_down(&s);
    drop(agent);
    println!(
        "host-faults/agent-first: the agent ran {polls} polls over {waited:?} without libvirtd and without exiting, then registered and booted an instance"
    );
}

/// SIGCONTs libvirtd when dropped, whatever happened.
struct ResumeLibvirtd(u32);

impl Drop for ResumeLibvirtd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// libvirtd hung (SIGSTOPped, not dead: its socket stays open and never
/// answers) under the agent: the agent stays alive and Ready, its Node
/// says the hypervisor is unreachable and why, and once libvirtd answers
/// again the work asked for meanwhile is done.
#[test]
fn libvirtd_hung_under_the_agent_is_reported_and_work_resumes() {
    let _one = one_at_a_time();
    let (s, _cleanup, _guest) = guest_server();
    let (node_name, token) = node_user(&s);
    let mut agent = Agent::start_with(&s, &s.url, &token, &node_name, &s.dir, Path::new(AGENT_LOG));
    apply(&s, "base.yaml", &base());
    wait_until("Node Ready", || {
        s.corral(&["get", "node", &node_name, "-o", "json"]).code == 0
            && condition(&node(&s, &node_name), "HypervisorReachable") == "True"
    });
    let _restore = RestoreLibvirtd;
    let pid = libvirtd_pid();
    assert!(Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let resume = ResumeLibvirtd(pid);
    let stopped = Instant::now();
    apply(&s, "during.yaml", &instance_yaml("during"));
    wait_until("HypervisorReachable=False saying libvirtd is hung", || {
        let n = node(&s, &node_name);
        let said = n["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "HypervisorReachable"))
            .and_then(|c| c["message"].as_str())
            .unwrap_or_default()
            .to_string();
        condition(&n, "HypervisorReachable") == "False" && said.contains("has not answered")
    });
    let n = node(&s, &node_name);
    assert_eq!(condition(&n, "Ready"), "True", "the agent is alive: {n}");
    assert!(agent.running(), "the agent exited while libvirtd hung");
    // Hung for 30 s in all (the chaos figure): the agent lives on
    // and the node stays Ready throughout.
    while stopped.elapsed() < Duration::from_secs(30) {
        assert!(agent.running(), "the agent exited while libvirtd hung");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(condition(&node(&s, &node_name), "Ready"), "True");
    let hung_for = stopped.elapsed();
    drop(resume);
    wait_until("HypervisorReachable=True again", || {
        condition(&node(&s, &node_name), "HypervisorReachable") == "True"
    });
    wait_until_or(
        "during Ready",
        || ready(&s, "during"),
        || {
            s.corral(&["describe", "instance", "during", "-p", "faults"])
                .stdout
        },
    );
    assert!(agent.running(), "the agent exited");
    tear_down(&s);
    drop(agent);
    println!("host-faults/hung: libvirtd stopped {hung_for:?}; reported, then the instance asked for meanwhile booted");
}

/// libvirtd SIGKILLed at seeded moments while the agent is at work. Each
/// round asks for a new instance and for the deletion of the previous
/// round's, then kills libvirtd 0-3 s later (which may land in the
/// middle of a define, a start or a destroy, or after them), keeps it down
/// 2-6 s, restarts it, and checks the invariants. Replay a run with its
/// printed `CORRAL_CHAOS_SEED`.
#[test]
fn libvirtd_killed_at_seeded_moments_mid_work() {
    let t0 = Instant::now();
    let seed = seeded::seed();
    let mut rng = seeded::Rng::new(seed, 0x11b);
    let _one = one_at_a_time();
    let (s, _cleanup, _guest) = guest_server();
    let (node_name, token) = node_user(&s);
    let mut agent = Agent::start_with(&s, &s.url, &token, &node_name, &s.dir, Path::new(AGENT_LOG));
    apply(&s, "base.yaml", &base());
    apply(&s, "steady.yaml", &instance_yaml("steady"));
    wait_until("steady Ready", || ready(&s, "steady"));
    let steady = format!("corral-{}", uid(&s, "steady"));
    let steady_pid = qemu_pid(&steady).expect("steady's QEMU");
    let _restore = RestoreLibvirtd;
    let mut previous: Option<(String, String)> = None;
    let mut rounds = Vec::new();
    for round in 0..2 {
        let name = format!("r{round}");
        apply(&s, &format!("{name}.yaml"), &instance_yaml(&name));
        if let Some((prev, _)) = &previous {
            s.corral(&["delete", "instance", prev, "-p", "faults"]).ok();
        }
        let delay = Duration::from_millis(rng.range(0, 3000));
        std::thread::sleep(delay);
        kill_libvirtd();
        let down = Duration::from_millis(rng.range(2000, 6000));
        let killed = Instant::now();
        while killed.elapsed() < down {
            assert_eq!(qemu_pid(&steady), Some(steady_pid), "steady's QEMU");
            assert!(agent.running(), "the agent exited while libvirtd was down");
            assert_ne!(phase(&s, &name), "Failed", "{name} while libvirtd is down");
            std::thread::sleep(Duration::from_millis(250));
        }
        assert!(ensure_libvirtd(), "libvirtd did not restart");
        wait_until_or(
            &format!("{name} Ready"),
            || ready(&s, &name),
            || {
                s.corral(&["describe", "instance", &name, "-p", "faults"])
                    .stdout
            },
        );
        if let Some((prev, prev_uid)) = previous.take() {
            wait_until_or(
                &format!("{prev} gone"),
                || instance(&s, &prev).is_none(),
                || {
                    s.corral(&["describe", "instance", &prev, "-p", "faults"])
                        .stdout
                },
            );
            let domain = format!("corral-{prev_uid}");
            assert!(
                !virsh(&["list", "--all", "--name"]).contains(&domain),
                "{prev}'s domain left behind"
            );
            assert!(qemu_pid(&domain).is_none(), "{prev}'s QEMU still runs");
            let dir = s.dir.join("agent/instances").join(&prev_uid);
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
        assert_eq!(
            qemu_pid(&steady),
            Some(steady_pid),
            "steady's QEMU was replaced"
        );
        let n = one_running_domain_per_instance(&s);
        wait_until("Node Ready and HypervisorReachable", || {
            let node = node(&s, &node_name);
            condition(&node, "Ready") == "True" && condition(&node, "HypervisorReachable") == "True"
        });
        rounds.push(format!(
            "round {round}: killed {delay:?} after the requests, down {down:?}: {name} Ready, the deleted one left no domain, QEMU or files, steady's QEMU {steady_pid} untouched, one running domain per Instance ({n}), Node Ready"
        ));
        previous = Some((name.clone(), uid(&s, &name)));
    }
    tear_down(&s);
    drop(agent);
    println!(
        "host-faults/libvirtd-seeded: CORRAL_CHAOS_SEED={seed:#x}, {} rounds in {:?}",
        rounds.len(),
        t0.elapsed()
    );
    for r in &rounds {
        println!("  {r}");
    }
}

// ---------------------------------------------------------- cut off agent

/// iptables rules that drop traffic between the agent (which reaches the
/// server as 127.0.0.2) and the server's port, both ways; removed when
/// dropped. Only the agent is cut off: the test talks to 127.0.0.1.
struct Cutoff {
    rules: Vec<Vec<String>>,
}

const CUTOFF_COMMENT: &str = "corral-test-host-faults";

impl Cutoff {
    fn new(port: u16) -> Cutoff {
        let port = port.to_string();
        let rule = |dir: &str, ports: &str| -> Vec<String> {
            [
                "OUTPUT",
                dir,
                "127.0.0.2",
                "-p",
                "tcp",
                ports,
                &port,
                "-m",
                "comment",
                "--comment",
                CUTOFF_COMMENT,
                "-j",
                "DROP",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        let cut = Cutoff {
            rules: vec![rule("-d", "--dport"), rule("-s", "--sport")],
        };
        for r in &cut.rules {
            let out = Command::new("iptables")
                .args(["-w", "-I"])
                .args(r)
                .output()
                .expect("running iptables");
            assert!(
                out.status.success(),
                "iptables -I {r:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cut
    }
}

impl Drop for Cutoff {
    fn drop(&mut self) {
        for r in &self.rules {
            while Command::new("iptables")
                .args(["-w", "-D"])
                .args(r)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {}
        }
    }
}

#[test]
fn agent_cut_off_by_the_network_goes_unknown_and_returns_without_restarting_guests() {
    let t0 = Instant::now();
    let _one = one_at_a_time();
    let (s, _cleanup, _guest) = guest_server_on("0.0.0.0");
    let port: u16 = s.addr.rsplit(':').next().unwrap().parse().unwrap();
    let (node_name, token) = node_user(&s);
    let mut agent = Agent::start_with(
        &s,
        &format!("https://127.0.0.2:{port}"),
        &token,
        &node_name,
        &s.dir,
        Path::new(AGENT_LOG),
    );
    apply(&s, "base.yaml", &base());
    apply(&s, "steady.yaml", &instance_yaml("steady"));
    wait_until("steady Ready", || ready(&s, "steady"));
    let steady_uid = uid(&s, "steady");
    let steady = format!("corral-{steady_uid}");
    let pid = qemu_pid(&steady).expect("steady's QEMU");
    let id = domid(&steady);
    let steady_boots = boots(&s, &steady_uid);
    let mut checked = BTreeMap::<&str, String>::new();

    let cut = Cutoff::new(port);
    let cut_at = Instant::now();
    wait_until_or(
        "Node Ready=Unknown and steady Unknown",
        || {
            condition(&node(&s, &node_name), "Ready") == "Unknown"
                && phase(&s, "steady") == "Unknown"
        },
        || format!("{:#}", node(&s, &node_name)),
    );
    let unknown_after = cut_at.elapsed();
    let i = instance(&s, "steady").unwrap();
    assert_eq!(i["status"]["nodeName"], node_name.as_str(), "{i}");
    assert_eq!(qemu_pid(&steady), Some(pid), "steady's QEMU while cut off");
    assert_eq!(domstate(&steady), "running");
    assert!(agent.running(), "the agent exited while cut off");
    checked.insert(
        "cut off",
        format!("Node Ready=Unknown and steady Unknown after {unknown_after:?}, still bound to {node_name}; its QEMU runs on"),
    );
    // A while longer cut off: the agent's requests time out meanwhile.
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(phase(&s, "steady"), "Unknown");
    assert_eq!(qemu_pid(&steady), Some(pid));

    drop(cut);
    let back_at = Instant::now();
    wait_until_or(
        "Node Ready and steady Running and Ready again",
        || {
            condition(&node(&s, &node_name), "Ready") == "True"
                && phase(&s, "steady") == "Running"
                && ready(&s, "steady")
        },
        || {
            format!(
                "{:#}\n{}",
                node(&s, &node_name),
                s.corral(&["describe", "instance", "steady", "-p", "faults"])
                    .stdout
            )
        },
    );
    let back_after = back_at.elapsed();
    assert_eq!(qemu_pid(&steady), Some(pid), "steady's QEMU was replaced");
    assert_eq!(domid(&steady), id);
    assert_eq!(boots(&s, &steady_uid), steady_boots, "steady rebooted");
    let n = one_running_domain_per_instance(&s);
    assert!(agent.running(), "the agent exited");
    checked.insert(
        "back",
        format!("Node Ready and steady Running/Ready {back_after:?} after the rule went; same QEMU pid {pid}, domain id {id}, no new boot; {n} domain for {n} Instance"),
    );

    tear_down(&s);
    drop(agent);
    println!(
        "host-faults/cut-off: agent at 127.0.0.2:{port} blocked by iptables; {:?} in all",
        t0.elapsed()
    );
    for (what, how) in &checked {
        println!("  checked {what}: {how}");
    }
}
