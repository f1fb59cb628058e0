//! The node agent SIGKILLed while it brings a guest up on a real host, at
//! three moments, then started again: in the middle of pulling the image
//! (its API link trickled by an in-test proxy until part of the image is
//! on disk), in the middle of defining the domain (the agent single-stepped
//! with SIGSTOP/SIGCONT from the moment the guest's seed is written until
//! libvirt holds the definition), and while the guest boots (QEMU running,
//! no readiness line on its console yet). Each time: the guest ends Running
//! and Ready exactly once (one domain, one QEMU process, one boot on its
//! console), the files it uses are whole (the cached image's checksum is
//! the source's, the root disk passes `qemu-img check` and is backed by the
//! cached image), and no stray domain, process or temporary file remains.
//! Real processes throughout: `corral up`, `corral agent`, libvirtd,
//! virtlogd and QEMU (TCG here).
//!
//! Needs root, libvirtd (scripts/start-libvirt) and the guest image
//! (tests/images/build-guest); fails, never skips, without them. Guests
//! boot on the shared host: run it under the host lock, like host_faults,
//! `flock /tmp/corral-host.lock cargo test -p corral-cli --test agent_kills`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::guests::{
    domstate, guest_project, guest_server, node_user, one_at_a_time, qemu_pid, virsh, virsh_ok,
    wait_until, wait_until_or, Agent, Cleanup,
};
use common::proxy::Proxy;
use common::{write, Server};
use serde_json::Value;

/// The agents here log to this file (appended).
const AGENT_LOG: &str = "/tmp/corral-agent-kills-agent.log";

/// Where the Image imports from (guest_server copies the guest there).
const SOURCE: &str = "/var/lib/corral/import/tiny.qcow2";

fn base() -> String {
    guest_project("kills", "10.48.0.0/24", "isolated")
}

/// A server, its node's credentials and the test's objects. Dropped
/// after the test's agents (declared before them), it removes what a
/// failed test may have left: the test's domains, then its libvirt network.
struct Rig {
    s: Server,
    cleanup: Option<Cleanup>,
    node: String,
    token: String,
    net_uid: String,
    t0: Instant,
}

fn rig() -> Rig {
    let t0 = Instant::now();
    let (s, cleanup, _guest) = guest_server();
    let (node, token) = node_user(&s);
    apply(&s, "base.yaml", &base());
    let net = s.corral(&["get", "network", "lan", "-p", "kills", "-o", "json"]);
    let net_uid = net.json()["metadata"]["uid"].as_str().unwrap().to_string();
    Rig {
        s,
        cleanup: Some(cleanup),
        node,
        token,
        net_uid,
        t0,
    }
}

/// The libvirt networks of the test's Network.
fn networks(net_uid: &str) -> Vec<String> {
    virsh(&["net-list", "--all", "--name"])
        .lines()
        .map(str::trim)
        .filter(|n| n.contains(net_uid))
        .map(str::to_string)
        .collect()
}

impl Drop for Rig {
    fn drop(&mut self) {
        drop(self.cleanup.take());
        for n in networks(&self.net_uid) {
            virsh_ok(&["net-destroy", &n]);
            virsh_ok(&["net-undefine", &n]);
        }
    }
}

impl Rig {
    /// A `corral agent` reaching the API at `url`.
    fn agent(&self, url: &str) -> Agent {
        Agent::start_with(
            &self.s,
            url,
            &self.token,
            &self.node,
            &self.s.dir,
            Path::new(AGENT_LOG),
        )
    }

    fn agent_dir(&self) -> PathBuf {
        self.s.dir.join("agent")
    }

    /// Creates instance `name`; answers its uid.
    fn instance(&self, name: &str) -> String {
        apply(
            &self.s,
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: corral/v1\nkind: Instance\nmetadata: {{name: {name}, project: kills}}\nspec:\n  instanceType: m1.tiny\n  image: tiny\n  nics: [{{network: lan}}]\n"
            ),
        );
        get(&self.s, name).expect("the instance")["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn describe(&self, name: &str) -> String {
        let d = self
            .s
            .corral(&["describe", "instance", name, "-p", "kills"])
            .stdout;
        let log = std::fs::read_to_string(AGENT_LOG).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        format!("{d}\nagent log (newest first):\n{}", tail.join("\n"))
    }
}

fn apply(s: &Server, file: &str, yaml: &str) {
    let p = write(&s.scratch("kills"), file, yaml);
    s.corral(&["apply", "-f", p.to_str().unwrap()]).ok();
}

fn get(s: &Server, name: &str) -> Option<Value> {
    let out = s.corral(&["get", "instance", name, "-p", "kills", "-o", "json"]);
    (out.code == 0).then(|| out.json())
}

fn ready(s: &Server, name: &str) -> bool {
    get(s, name).is_some_and(|i| {
        i["status"]["phase"] == "Running"
            && i["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    })
}

/// Lines of a console log that mark a boot of the test guest.
fn boots(console: &Path) -> usize {
    std::fs::read_to_string(console)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.trim_end_matches('\r') == "corral-guest: boot")
        .count()
}

/// Corral domains whose disks live under `dir`.
fn domains_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    virsh(&["list", "--all", "--name"])
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with("corral-"))
        .filter(|n| virsh(&["domblklist", n]).contains(&dir))
        .map(str::to_string)
        .collect()
}

/// Every process whose command line runs the guest `domain`.
fn qemu_processes(domain: &str) -> Vec<u32> {
    let want = format!("guest={domain}");
    procs()
        .filter(|(_, _, cmdline)| cmdline.split('\0').any(|a| a.split(',').any(|p| p == want)))
        .map(|(pid, ..)| pid)
        .collect()
}

/// (pid, parent pid, command line) of every live process.
fn procs() -> impl Iterator<Item = (u32, u32, String)> {
    std::fs::read_dir("/proc").unwrap().filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = stat.rsplit_once(") ")?.1;
        if rest.starts_with('Z') {
            return None;
        }
        let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        Some((pid, ppid, String::from_utf8_lossy(&cmdline).into_owned()))
    })
}

/// The agent's child processes (its libvirt event listener), which must
/// die with it.
fn children(pid: u32) -> Vec<u32> {
    procs().filter(|p| p.1 == pid).map(|p| p.0).collect()
}

fn alive(pid: u32) -> bool {
    procs().any(|p| p.0 == pid)
}

/// SIGKILLs the agent (reaping it) and waits until its children are gone
/// too; answers how many there were.
fn kill_agent(agent: Agent) -> usize {
    let kids = children(agent.pid());
    agent.kill();
    wait_until("the killed agent's children gone", || {
        kids.iter().all(|k| !alive(*k))
    });
    kids.len()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Files below `dir` that are left-overs of unfinished work: partial
/// downloads and disks (`*.part`), seed staging directories, anything in
/// the image cache's temporary directory.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".part") || name == "seed.d" || d.ends_with("images/tmp") {
                out.push(p.clone());
            }
            if p.is_dir() {
                todo.push(p);
            }
        }
    }
    out
}

/// Sends signals through one long-lived shell (`kill` is its builtin), so
/// each takes a pipe round trip rather than a fork and exec: fine enough
/// to single-step a process.
struct Signals {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Signals {
    fn new() -> Signals {
        let mut child = Command::new("sh")
            .args(["-c", "while read s p; do kill -s $s $p; echo; done"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Signals {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, sig: &str, pid: u32) {
        writeln!(self.stdin, "{sig} {pid}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// After the restart: the instance is Running and Ready with exactly one
/// domain and one QEMU process, booted `want_boots` times, from whole
/// files. Answers what was checked.
fn converged_once(r: &Rig, name: &str, uid: &str, want_boots: usize) -> Vec<String> {
    let s = &r.s;
    let domain = format!("corral-{uid}");
    wait_until_or(
        &format!("{name} Ready"),
        || ready(s, name),
        || r.describe(name),
    );
    let mut checked = Vec::new();
    assert_eq!(
        domains_under(&s.dir),
        vec![domain.clone()],
        "one domain, no other"
    );
    assert_eq!(domstate(&domain), "running");
    let qemus = qemu_processes(&domain);
    assert_eq!(qemus.len(), 1, "QEMU processes of {domain}: {qemus:?}");
    assert_eq!(qemu_pid(&domain), Some(qemus[0]));
    let dir = r.agent_dir().join("instances").join(uid);
    let n = boots(&dir.join("console.log"));
    assert_eq!(n, want_boots, "boots on {name}'s console");
    checked.push(format!(
        "Ready with one domain ({domain}), one QEMU (pid {}), {n} boot(s) on its console",
        qemus[0]
    ));

    // The cache holds the source's bytes under their own checksum.
    let want = sha256(Path::new(SOURCE));
    let cached = r.agent_dir().join("images/sha256").join(&want);
    assert!(cached.is_file(), "{} missing", cached.display());
    for e in std::fs::read_dir(r.agent_dir().join("images/sha256")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            sha256(&p),
            name,
            "{} is not what its name says",
            p.display()
        );
    }
    // The guest's disks are the finished files.
    let disk = dir.join("disk.qcow2");
    let blk = virsh(&["domblklist", &domain]);
    assert!(blk.contains(&disk.display().to_string()), "{blk}");
    assert!(!blk.contains(".part"), "{blk}");
    let out = Command::new("qemu-img")
        .args(["check", "-U"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check {}: {}{}",
        disk.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let info = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&disk)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["full-backing-filename"].as_str().map(PathBuf::from),
        Some(cached.clone()),
        "{info}"
    );
    checked.push(format!(
        "cached image sha256 {} = the source's; disk.qcow2 passes qemu-img check and is backed by it",
        &want[..12]
    ));
    checked
}

/// The left-overs of unfinished work on the node (noted in `checked`
/// when there are none).
fn leftovers_noted(r: &Rig, checked: &mut Vec<String>) -> Vec<PathBuf> {
    let stray = leftovers(&r.agent_dir());
    if stray.is_empty() {
        checked.push("no .part file, seed staging or image temporary left".into());
    }
    stray
}

/// Asserts, last (so the test tears down and reports first), that no
/// left-over of unfinished work stayed on the node.
fn no_leftovers(stray: Vec<PathBuf>) {
    assert!(
        stray.is_empty(),
        "left-overs of the killed agent's unfinished work, never removed: {stray:?}"
    );
}

/// Deletes the instance and waits until the host holds nothing of it.
fn tear_down(r: &Rig, name: &str, uid: &str) {
    r.s.corral(&[
        "delete",
        "instance",
        name,
        "-p",
        "kills",
        "--wait",
        "--timeout",
        "120s",
    ])
    .ok();
    wait_until("the test's domains gone", || {
        domains_under(&r.s.dir).is_empty()
    });
    wait_until("the test's libvirt network gone", || {
        networks(&r.net_uid).is_empty()
    });
    assert!(qemu_processes(&format!("corral-{uid}")).is_empty());
    assert!(!r.agent_dir().join("instances").join(uid).exists());
}

fn report(what: &str, r: &Rig, landing: &str, checked: &[String]) {
    println!("agent-kills/{what}: {landing}; {:?} in all", r.t0.elapsed());
    for c in checked {
        println!("  checked: {c}");
    }
}

#[test]
fn agent_killed_mid_image_pull_converges_once_from_whole_files() {
    let _one = one_at_a_time();
    let r = rig();
    let total = std::fs::metadata(SOURCE).unwrap().len();
    // The agent reaches the API through a proxy that trickles what comes
    // back: the image download takes about a minute at this rate.
    let proxy = Proxy::start(r.s.addr.parse().unwrap());
    proxy.set_rate(192 << 10);
    let agent = r.agent(&format!("https://{}", proxy.addr()));
    let uid = r.instance("pulled");
    let tmp = r.agent_dir().join("images/tmp");
    let partial = |min: u64| -> Option<(PathBuf, u64)> {
        std::fs::read_dir(&tmp)
            .ok()?
            .flatten()
            .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
            .find(|(_, len)| *len >= min)
    };
    wait_until_or(
        "part of the image on the node",
        || partial(1 << 20).is_some(),
        || r.describe("pulled"),
    );
    let kids = kill_agent(agent);
    let (part, len) = partial(0).expect("the partial download");
    assert!(
        len < total,
        "the pull was complete ({len} bytes) when killed"
    );
    let cache = r.agent_dir().join("images/sha256");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0, "cached");
    assert!(!r
        .agent_dir()
        .join("instances")
        .join(&uid)
        .join("disk.qcow2")
        .exists());
    let landing = format!(
        "killed with {len} of {total} image bytes in {} (its {kids} child process(es) died with it)",
        part.display()
    );

    proxy.set_rate(0);
    let agent = r.agent(&format!("https://{}", proxy.addr()));
    let mut checked = converged_once(&r, "pulled", &uid, 1);
    let stray = leftovers_noted(&r, &mut checked);
    tear_down(&r, "pulled", &uid);
    drop(agent);
    report("mid-pull", &r, &landing, &checked);
    no_leftovers(stray);
}

#[test]
fn agent_killed_mid_define_converges_once() {
    let _one = one_at_a_time();
    let r = rig();
    let mut agent = r.agent(&r.s.url);
    let uid = r.instance("defined");
    let domain = format!("corral-{uid}");
    let dir = r.agent_dir().join("instances").join(&uid);
    // The seed is the last file written before the domain is defined:
    // from then on the agent runs in slices of a few hundred microseconds
    // until libvirt has the domain's definition.
    let deadline = Instant::now() + common::guests::TIMEOUT;
    while !dir.join("seed.iso").exists() {
        assert!(
            Instant::now() < deadline,
            "no seed: {}",
            r.describe("defined")
        );
        assert!(agent.running(), "the agent exited");
        std::thread::sleep(Duration::from_micros(500));
    }
    let mut sig = Signals::new();
    let pid = agent.pid();
    sig.send("STOP", pid);
    let config = PathBuf::from(format!("/etc/libvirt/qemu/{domain}.xml"));
    let status = PathBuf::from(format!("/run/libvirt/qemu/{domain}.xml"));
    let mut slices = 0;
    let stepping = Instant::now();
    while !config.exists() {
        assert!(
            stepping.elapsed() < Duration::from_secs(120),
            "no definition after {slices} slices: {}",
            r.describe("defined")
        );
        sig.send("CONT", pid);
        std::thread::sleep(Duration::from_micros(300));
        sig.send("STOP", pid);
        slices += 1;
    }
    let started = status.exists();
    let kids = kill_agent(agent);
    // libvirt finishes what it was asked: wait until nothing changes.
    std::thread::sleep(Duration::from_secs(2));
    let state = domstate(&domain);
    assert!(
        !started,
        "libvirt had started {domain} when the agent was killed"
    );
    assert_eq!(state, "shut off", "{domain} after the kill");
    assert!(qemu_processes(&domain).is_empty());
    let landing = format!(
        "killed after {slices} slices ({:?}) as libvirt took the definition; the domain stayed defined and shut off (its {kids} child process(es) died with it)",
        stepping.elapsed()
    );

    let agent = r.agent(&r.s.url);
    let mut checked = converged_once(&r, "defined", &uid, 1);
    let stray = leftovers_noted(&r, &mut checked);
    tear_down(&r, "defined", &uid);
    drop(agent);
    report("mid-define", &r, &landing, &checked);
    no_leftovers(stray);
}

#[test]
fn agent_killed_mid_boot_keeps_the_booting_guest() {
    let _one = one_at_a_time();
    let r = rig();
    let agent = r.agent(&r.s.url);
    let uid = r.instance("booting");
    let domain = format!("corral-{uid}");
    let console = r
        .agent_dir()
        .join("instances")
        .join(&uid)
        .join("console.log");
    // Killed once the guest prints (its kernel is booting), before it is
    // ready (several seconds later under TCG).
    wait_until_or(
        "the guest booting",
        || qemu_pid(&domain).is_some() && std::fs::metadata(&console).is_ok_and(|m| m.len() > 0),
        || r.describe("booting"),
    );
    let pid = qemu_pid(&domain).unwrap();
    let kids = kill_agent(agent);
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        !text.contains("corral-guest: ready"),
        "the guest had booted when the agent was killed"
    );
    let landing = format!(
        "killed with QEMU {pid} running and {} bytes on the console, no readiness line (its {kids} child process(es) died with it)",
        text.len()
    );
    // The guest boots on without the agent.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(qemu_pid(&domain), Some(pid));

    let agent = r.agent(&r.s.url);
    let mut checked = converged_once(&r, "booting", &uid, 1);
    assert_eq!(qemu_pid(&domain), Some(pid), "the guest was restarted");
    checked.push(format!("the same QEMU process {pid} as before the kill"));
    let stray = leftovers_noted(&r, &mut checked);
    tear_down(&r, "booting", &uid);
    drop(agent);
    report("mid-boot", &r, &landing, &checked);
    no_leftovers(stray);
}
