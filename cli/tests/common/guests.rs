//! Helpers for tests with real guests on `qemu:///system`: virsh, the test
//! guest image, a `corral up --no-agent` that QEMU can reach, a separate
//! `corral agent` process, and clean-up that runs even when a test fails.
//! They need root, libvirtd (scripts/start-libvirt) and the guest image
//! (tests/images/build-guest), and fail, never skip, without them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Server, BIN};

/// How long a guests test waits for one thing (TCG boots are slow).
pub const TIMEOUT: Duration = Duration::from_secs(240);

/// Where the guests tests' agents log (appended).
pub const AGENT_LOG: &str = "/tmp/corral-guests-agent.log";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `virsh -c qemu:///system ARGS`, which must succeed; answers stdout.
pub fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh")
        .arg("-c")
        .arg("qemu:///system")
        .args(args)
        .output()
        .expect("running virsh (apt install libvirt-clients)");
    assert!(
        out.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn virsh_ok(args: &[&str]) -> bool {
    Command::new("virsh")
        .arg("-c")
        .arg("qemu:///system")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn domstate(domain: &str) -> String {
    virsh(&["domstate", domain]).trim().to_string()
}

pub fn domid(domain: &str) -> String {
    virsh(&["domid", domain]).trim().to_string()
}

/// Builds (or finds cached) the test guest; answers its directory.
pub fn guest_image() -> PathBuf {
    let dir = PathBuf::from("/var/cache/corral/guest");
    let out = Command::new(repo().join("tests/images/build-guest"))
        .arg(&dir)
        .output()
        .expect("running tests/images/build-guest");
    assert!(
        out.status.success(),
        "building the guest image failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

pub fn wait_until(what: &str, f: impl FnMut() -> bool) {
    wait_until_or(what, f, String::new)
}

/// Waits up to [`TIMEOUT`]; on time-out, fails with what `diagnose` says.
pub fn wait_until_or(what: &str, mut f: impl FnMut() -> bool, diagnose: impl Fn() -> String) {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out waiting for {what}\n{}", diagnose());
}

pub fn chmod_755(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Removes, even when the test fails, every domain whose disks live under
/// the test's directory.
pub struct Cleanup(pub PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let dir = self.0.display().to_string();
        let Ok(out) = Command::new("virsh")
            .args(["-c", "qemu:///system", "list", "--all", "--name"])
            .output()
        else {
            return;
        };
        for name in String::from_utf8_lossy(&out.stdout).lines() {
            let name = name.trim();
            if !name.starts_with("corral-") {
                continue;
            }
            let disks = Command::new("virsh")
                .args(["-c", "qemu:///system", "domblklist", name])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            if disks.contains(&dir) {
                virsh_ok(&["destroy", name]);
                virsh_ok(&["undefine", name, "--managed-save"]);
            }
        }
    }
}

/// A `corral agent` process on `qemu:///system`, killed when dropped.
pub struct Agent {
    child: Child,
}

impl Agent {
    /// An agent for `s`, its files under `dir/agent`, logging to
    /// [`AGENT_LOG`].
    pub fn start(s: &Server, token: &str, node: &str, dir: &Path) -> Agent {
        Agent::start_with(s, &s.url, token, node, dir, Path::new(AGENT_LOG))
    }

    /// An agent talking to the API of `s` at `url`, trusting the server's
    /// CA file, logging to `log` (appended).
    pub fn start_with(
        s: &Server,
        url: &str,
        token: &str,
        node: &str,
        dir: &Path,
        log: &Path,
    ) -> Agent {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(BIN)
            .args([
                "agent",
                "--server",
                url,
                "--token",
                token,
                "--node",
                node,
                "--libvirt",
                "qemu:///system",
                "--agent-dir",
            ])
            .arg(dir.join("agent"))
            .args(s.ca.iter().flat_map(|ca| [Path::new("--server-ca"), ca]))
            .env("RUST_LOG", "corral_node_agent=info,warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting corral agent");
        Agent { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tests of one binary that boot TCG guests run one at a time.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything a guests test needs: libvirtd answering, the test guest
/// where the Images import it from, and a `corral up --no-agent` whose
/// directory QEMU (its own user) can reach, cleaned up even on failure.
pub fn guest_server() -> (Server, Cleanup, PathBuf) {
    guest_server_on("127.0.0.1")
}

/// [`guest_server`] with the API listening on `ip` (e.g. `0.0.0.0`, so an
/// agent can reach it on another loopback address).
pub fn guest_server_on(ip: &str) -> (Server, Cleanup, PathBuf) {
    assert!(
        virsh_ok(&["version"]),
        "libvirtd is not answering on qemu:///system: run scripts/start-libvirt (as root)"
    );
    let guest = guest_image();
    std::fs::create_dir_all("/var/lib/corral/import").unwrap();
    // Images are imported only from beneath the server's import directory.
    for file in ["tiny.qcow2", "initrd.img"] {
        std::fs::copy(guest.join(file), format!("/var/lib/corral/import/{file}")).unwrap();
    }
    let s = Server::start_on(ip, &["--no-agent"]);
    chmod_755(&s.dir);
    let cleanup = Cleanup(s.dir.clone());
    (s, cleanup, guest)
}

/// A node named after this process and server, and its node user's token.
pub fn node_user(s: &Server) -> (String, String) {
    let node = format!(
        "guests{}x{}",
        std::process::id(),
        s.addr.rsplit(':').next().unwrap()
    );
    let token = node_token(s, &node);
    (node, token)
}

/// Creates the node user of Node `node`; answers its token.
pub fn node_token(s: &Server, node: &str) -> String {
    let created = s.corral(&[
        "user",
        "create",
        &format!("node-{node}"),
        "--role",
        "node",
        "--node",
        node,
    ]);
    created
        .ok()
        .lines()
        .find_map(|l| l.trim().strip_prefix("API token:"))
        .map(|t| t.trim().to_string())
        .expect("a token for the node user")
}

/// A node user's token, and an agent for it.
pub fn node_agent(s: &Server) -> (String, String, Agent) {
    let (node, token) = node_user(s);
    let agent = Agent::start(s, &token, &node, &s.dir);
    (node, token, agent)
}

/// The pid of a running domain's QEMU process: libvirt's pid file, checked
/// against the process's command line (`-name guest=DOMAIN,...`).
pub fn qemu_pid(domain: &str) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/run/libvirt/qemu/{domain}.pid")).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline
        .split('\0')
        .any(|arg| arg.split(',').any(|p| p == format!("guest={domain}")))
        .then_some(pid)
}

/// The start of every real-guest suite's manifest: Project `project`, its
/// Network `lan` (`cidr`, `mode`) and the test guest as Image `tiny`
/// (imported from where [`guest_server`] puts it).
pub fn guest_project(project: &str, cidr: &str, mode: &str) -> String {
    format!(
        "apiVersion: corral/v1
kind: Project
metadata: {{name: {project}}}
---
apiVersion: corral/v1
kind: Network
metadata: {{name: lan, project: {project}}}
spec: {{cidr: {cidr}, mode: {mode}}}
---
apiVersion: corral/v1
kind: Image
metadata: {{name: tiny, project: {project}}}
spec:
  source: {{path: /var/lib/corral/import/tiny.qcow2}}
  format: qcow2
"
    )
}

/// Boots of an instance's guest (by uid), counted in the whole console
/// log on the test's local node (the API keeps only the newest 64 KiB,
/// about two boots' worth).
pub fn boots(s: &Server, uid: &str) -> usize {
    let log = s.dir.join("agent/instances").join(uid).join("console.log");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.trim_end_matches('\r') == "corral-guest: boot")
        .count()
}
