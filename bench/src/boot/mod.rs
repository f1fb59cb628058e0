//! `corral bench boot`: apply → guest-ready through Corral on real QEMU
//! (libvirt, `qemu:///system`) next to a bare QEMU boot of the same guest
//! (B0), measured in the same run.

mod api;
mod bare;
mod clock;
mod corral;
mod load;
mod tools;

use api::*;
use bare::*;
use clock::*;
use corral::*;
use load::*;
use tools::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;

use crate::figures::percentile;

pub struct BootBenchOptions {
    /// Rounds of each kind.
    pub runs: usize,
    /// Instances (and bare QEMUs) booted at once in the concurrent rounds.
    pub concurrent: usize,
    /// Where `tests/images/build-guest` puts (or has put) the guest.
    pub guest_dir: PathBuf,
    /// Give up on a round after this long.
    pub timeout: Duration,
    /// Also boot `concurrent` bare QEMUs at once (the hardware's floor
    /// for the concurrent case).
    pub bare_concurrent: bool,
    /// Keep the temporary directory (logs, store) afterwards.
    pub keep: bool,
}

const PROJECT: &str = "bench";
const LIBVIRT: &str = "qemu:///system";
const READY_LINE: &[u8] = b"corral-guest: ready";
/// Other processes using this many CPUs on average make a run "busy".
const BUSY_CPUS: f64 = 0.1;
/// How often bare QEMU's serial log and the clock are looked at.
const POLL: Duration = Duration::from_millis(20);

/// The instance type the Corral instances use, mirrored by bare QEMU.
#[derive(Clone, Copy)]
struct Size {
    vcpus: u64,
    memory_mib: u64,
    root_disk_gib: u64,
}

// ----------------------------------------------------------------
// Preflight

/// One kind of boot's results.
#[derive(Default)]
struct Series {
    ready: Vec<Duration>,
    scheduled: Vec<Duration>,
    /// POST -> the domain's QEMU process started.
    qemu: Vec<Duration>,
    /// QEMU process started -> Ready (comparable with B0).
    qemu_to_ready: Vec<Duration>,
    running: Vec<Duration>,
}

impl Series {
    fn add_bare(&mut self, v: Vec<Duration>) {
        self.ready.extend(v);
    }

    fn add(&mut self, v: Vec<Sample>) {
        for s in v {
            self.ready.push(s.ready);
            self.scheduled.push(s.scheduled);
            self.running.push(s.running);
            if let Some(q) = s.qemu {
                self.qemu.push(q);
                self.qemu_to_ready.push(s.ready.saturating_sub(q));
            }
        }
    }

    fn sorted(v: &[Duration]) -> Vec<Duration> {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    }

    fn p(&self, which: &[Duration], p: f64) -> f64 {
        percentile(&Self::sorted(which), p).as_secs_f64() * 1e3
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn fmt_ms(v: &[Duration]) -> String {
    let mut v = v.to_vec();
    v.sort_unstable();
    match v.len() {
        0 => "-".into(),
        1 => format!("{:.0} ms", ms(v[0])),
        _ => format!(
            "p50 {:.0} ms, max {:.0} ms",
            ms(percentile(&v, 0.5)),
            ms(v[v.len() - 1])
        ),
    }
}

pub async fn boot(options: BootBenchOptions) -> Result<()> {
    anyhow::ensure!(options.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!(options.concurrent >= 1, "--concurrent must be at least 1");
    let virt_type = corral_node_agent::host::detect_virt_type();
    check_tool("qemu-system-x86_64", "--version", "qemu-system-x86").await?;
    check_tool("qemu-img", "--version", "qemu-utils").await?;
    check_tool("genisoimage", "--version", "genisoimage").await?;
    check_libvirt(virt_type).await?;
    let base = guest_image(&options.guest_dir).await?;

    let tmp = tempfile::Builder::new()
        .prefix("corral-bench-boot-")
        .tempdir()
        .context("creating a temporary directory")?;
    // QEMU under libvirt runs as its own user: the agent's directory
    // must be reachable.
    chmod(tmp.path(), 0o755)?;
    let mut env = Env {
        dir: tmp.path().to_path_buf(),
        node: format!("bench-boot-{}", std::process::id()),
        virt_type,
        up: None,
        agent: None,
        api: None,
        watcher: None,
        tasks: Vec::new(),
    };
    let load = LoadLog::default();
    env.tasks.push(load.spawn(tmp.path().display().to_string()));
    let result = tokio::select! {
        r = run(&mut env, &options, &base, &load) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    if result.is_err() {
        for (what, file) in [("corral up", "up.log"), ("corral agent", "agent.log")] {
            let t = tail(&tmp.path().join(file), 15);
            if !t.is_empty() {
                eprintln!("--- last lines of the {what} log ---\n{t}");
            }
        }
    }
    eprintln!("cleaning up (instances, server, agent, temporary files)...");
    env.cleanup().await;
    if options.keep {
        eprintln!("kept {}", tmp.keep().display());
    }
    result
}

async fn run(env: &mut Env, options: &BootBenchOptions, base: &Path, load: &LoadLog) -> Result<()> {
    let timeout = options.timeout;
    let n = options.concurrent;
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "corral bench boot: {} run(s) of 1 and of {n} concurrent; {} on {ncpu} host cpus; guest {}",
        options.runs,
        if virt_type_is_kvm(env.virt_type) {
            "KVM"
        } else {
            "TCG (no KVM)"
        },
        base.display()
    );

    // Corral: server, agent, project, network, image.
    let api = env.start_server().await?;
    env.api = Some(api.clone());
    let it = api
        .ok(reqwest::Method::GET, "/v1/instancetypes/m1.tiny", None)
        .await?;
    let size = Size {
        vcpus: it["spec"]["vcpus"].as_u64().unwrap_or(1),
        memory_mib: it["spec"]["memoryMiB"].as_u64().unwrap_or(512),
        root_disk_gib: it["spec"]["rootDiskGiB"].as_u64().unwrap_or(1),
    };
    // The node offers what the agent decides (with its default vCPU
    // overcommit); the concurrent round must fit on it.
    let vcpus = env.start_agent(&api).await?;
    anyhow::ensure!(
        vcpus >= size.vcpus * n as u64,
        "node {} offers {vcpus} vCPUs; {n} m1.tiny instances need {}: lower --concurrent",
        env.node,
        size.vcpus * n as u64
    );
    let watcher = Watcher {
        seen: Arc::default(),
        uids: Arc::default(),
        changed: tokio::sync::watch::channel(0).0,
    };
    env.watcher = Some(watcher.clone());
    env.tasks
        .push(tokio::spawn(watcher.clone().run(api.clone())));

    let import = env.dir.join("import");
    std::fs::create_dir_all(&import)?;
    chmod(&import, 0o755)?;
    let image = import.join("tiny.qcow2");
    std::fs::copy(base, &image).context("copying the guest image")?;
    chmod(&image, 0o644)?;
    for (path, body) in [
        (
            "/v1/projects".to_string(),
            json!({"metadata": {"name": PROJECT}}),
        ),
        (
            format!("/v1/projects/{PROJECT}/networks"),
            json!({"metadata": {"name": "lan"}, "spec": {"cidr": "10.77.0.0/24", "mode": "isolated"}}),
        ),
        (
            format!("/v1/projects/{PROJECT}/images"),
            json!({"metadata": {"name": "tiny"}, "spec": {"source": {"path": image}, "format": "qcow2"}}),
        ),
    ] {
        api.ok(reqwest::Method::POST, &path, Some(&body)).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let img = api
            .ok(
                reqwest::Method::GET,
                &format!("/v1/projects/{PROJECT}/images/tiny"),
                None,
            )
            .await?;
        match img["status"]["phase"].as_str().unwrap_or("") {
            "available" => break,
            "failed" => bail!("the image import failed: {}", img["status"]),
            _ => {}
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "image not available within 120 s: {}",
            img["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "corral up (embedded store) and a node agent ({}, offering {vcpus} vCPUs) on {LIBVIRT}; instances m1.tiny ({} vcpu, {} MiB, {} GiB root)",
        env.node, size.vcpus, size.memory_mib, size.root_disk_gib
    );

    let clock = BootClock::calibrate().await;
    if clock.is_none() {
        eprintln!("/proc/uptime did not move: the QEMU-start milestone is left out");
    }
    let bare = Bare {
        kvm: virt_type_is_kvm(env.virt_type),
        // The very bytes the Image was imported from: a rebuild of the
        // guest directory meanwhile changes neither side.
        base: image.clone(),
        dir: env.dir.join("bare"),
        size,
    };

    // Untimed warm-up: the agent pulls the image into its cache on the
    // first boot; both paths get the page cache warm.
    print!("warm-up (untimed): bare ");
    let w = bare.round("warm", 1, SeedOn::Virtio, timeout).await?;
    print!("{:.0} ms, corral ", ms(w[0]));
    let w = corral_round(&api, &watcher, clock, &["warm-0".to_string()], timeout).await?;
    println!("{:.0} ms", ms(w[0].ready));

    let mut res = Results::default();
    let started = Instant::now();
    for run in 1..=options.runs {
        let t_run = Instant::now();
        let r = bare
            .round(&format!("b0-{run}"), 1, SeedOn::Virtio, timeout)
            .await?;
        let line_b0 = fmt_ms(&r);
        res.b0.add_bare(r);
        let r = bare
            .round(&format!("cd-{run}"), 1, SeedOn::Cdrom, timeout)
            .await?;
        let line_cd = fmt_ms(&r);
        res.b0_cdrom.add_bare(r);

        let names = vec![format!("one-{run}")];
        let r = corral_round(&api, &watcher, clock, &names, timeout).await?;
        let line_one = format!(
            "{:.0} ms (scheduled {:.0}, QEMU {}, running {:.0})",
            ms(r[0].ready),
            ms(r[0].scheduled),
            r[0].qemu
                .map(|q| format!("{:.0}", ms(q)))
                .unwrap_or("?".into()),
            ms(r[0].running)
        );
        res.one.add(r);

        let line_bare_n = if options.bare_concurrent && n > 1 {
            let r = bare
                .round(&format!("bn-{run}"), n, SeedOn::Cdrom, timeout)
                .await?;
            let l = fmt_ms(&r);
            res.bare_n.add_bare(r);
            format!(", bare x{n} {l}")
        } else {
            String::new()
        };

        let line_many = if n > 1 {
            let names: Vec<String> = (0..n).map(|i| format!("many-{run}-{i}")).collect();
            let r = corral_round(&api, &watcher, clock, &names, timeout).await?;
            let l = fmt_ms(&r.iter().map(|s| s.ready).collect::<Vec<_>>());
            res.many.add(r);
            format!(", corral x{n} {l}")
        } else {
            String::new()
        };
        let l = load.window(t_run, Instant::now());
        res.busy.push(l.foreign_cpus);
        println!(
            "run {run}/{}: bare {line_b0}, bare (seed on CD-ROM) {line_cd}, corral x1 {line_one}{line_bare_n}{line_many}  [load avg {:.1} (max {:.1}); others used {:.2} CPUs; other QEMUs: up to {}]",
            options.runs, l.mean, l.max, l.foreign_cpus, l.foreign_qemu
        );
    }
    let elapsed = started.elapsed();
    report(options, &res, elapsed, load, started);
    Ok(())
}

fn virt_type_is_kvm(v: &str) -> bool {
    v == "kvm"
}

/// Everything measured, by kind.
#[derive(Default)]
struct Results {
    /// Bare QEMU, seed on a virtio disk.
    b0: Series,
    /// Bare QEMU, seed on an IDE CD-ROM.
    b0_cdrom: Series,
    one: Series,
    bare_n: Series,
    many: Series,
    /// CPUs used by other processes during each run.
    busy: Vec<f64>,
}

fn report(
    options: &BootBenchOptions,
    res: &Results,
    elapsed: Duration,
    load: &LoadLog,
    started: Instant,
) {
    let Results {
        b0,
        b0_cdrom,
        one,
        bare_n,
        many,
        busy,
    } = res;
    let n = options.concurrent;
    println!();
    println!(
        "{:<34} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "case (launch or POST -> ready)", "boots", "p50 ms", "p95 ms", "min ms", "max ms"
    );
    let row = |name: String, s: &Series| {
        if s.ready.is_empty() {
            return;
        }
        let v = Series::sorted(&s.ready);
        println!(
            "{:<34} {:>6} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
            name,
            v.len(),
            ms(percentile(&v, 0.50)),
            ms(percentile(&v, 0.95)),
            ms(v[0]),
            ms(v[v.len() - 1])
        );
    };
    row("bare QEMU, seed on virtio".into(), b0);
    row("bare QEMU, seed on CD-ROM (B0)".into(), b0_cdrom);
    row("corral, 1 instance".into(), one);
    row(format!("bare QEMU, {n} at once"), bare_n);
    row(format!("corral, {n} concurrent"), many);
    println!();
    println!("corral milestones from the POST, p50 ms: scheduled = status.nodeName set, QEMU = the domain's");
    println!("QEMU process started (/proc, +-10 ms), running = phase Running, ready = Ready True;");
    println!("QEMU->ready is the part comparable with a bare boot:");
    let concurrent = format!("{n} concurrent");
    let opt = |v: &[Duration]| {
        if v.is_empty() {
            "      -".to_string()
        } else {
            format!("{:>7.0}", ms(percentile(&Series::sorted(v), 0.5)))
        }
    };
    for (name, s) in [("1 instance", one), (concurrent.as_str(), many)] {
        if s.ready.is_empty() {
            continue;
        }
        println!(
            "  {name:<14} scheduled {:>7.0}  QEMU {}  running {:>7.0}  ready {:>7.0}  QEMU->ready {}",
            s.p(&s.scheduled, 0.5),
            opt(&s.qemu),
            s.p(&s.running, 0.5),
            s.p(&s.ready, 0.5),
            opt(&s.qemu_to_ready)
        );
    }
    println!();
    // B0 is the bare boot with the agent's devices, the seed on an IDE
    // CD-ROM where the agent attaches it (a Nova-style config drive):
    // what the guest does with its devices is the same on both sides.
    // The seed-on-virtio boot is shown too (the earlier B0).
    let (b0, virtio) = if b0_cdrom.ready.is_empty() {
        (b0, None)
    } else {
        (b0_cdrom, Some(b0))
    };
    let b0_p50 = b0.p(&b0.ready, 0.5);
    let overhead = one.p(&one.ready, 0.5) - b0_p50;
    println!(
        "goal p50(1) - p50(B0) <= 300 ms: {overhead:.0} ms: {}",
        if overhead <= 300.0 { "met" } else { "NOT met" }
    );
    if !one.qemu.is_empty() {
        println!(
            "  of which POST -> QEMU started {:.0} ms, and QEMU started -> Ready {:.0} ms against B0's {b0_p50:.0} ms",
            one.p(&one.qemu, 0.5),
            one.p(&one.qemu_to_ready, 0.5) - b0_p50
        );
    }
    if let Some(v) = virtio.filter(|v| !v.ready.is_empty()) {
        let vp = v.p(&v.ready, 0.5);
        println!(
            "  against a bare boot with the seed on virtio instead (p50 {vp:.0} ms): p50(1) - p50 = {:.0} ms",
            one.p(&one.ready, 0.5) - vp
        );
    }
    if !many.ready.is_empty() {
        let ratio = many.p(&many.ready, 0.95) / b0_p50;
        println!(
            "goal p95({n}) / p50(B0) <= 3.0: {ratio:.2}: {}",
            if ratio <= 3.0 { "met" } else { "NOT met" }
        );
        if !bare_n.ready.is_empty() {
            println!(
                "  for scale: bare QEMU {n} at once p95 / p50(B0) = {:.2}; corral p95({n}) / bare p95({n}) = {:.2}",
                bare_n.p(&bare_n.ready, 0.95) / b0_p50,
                many.p(&many.ready, 0.95) / bare_n.p(&bare_n.ready, 0.95)
            );
        }
    }
    let l = load.window(started, Instant::now());
    let runs_busy = busy.iter().filter(|f| **f >= BUSY_CPUS).count();
    println!(
        "machine: load avg {:.1} on average (max {:.1}) over {:.0} s; processes not this run's used {:.2} CPUs on average; other QEMUs: up to {} at once{}",
        l.mean,
        l.max,
        elapsed.as_secs_f64(),
        l.foreign_cpus,
        l.foreign_qemu,
        if runs_busy > 0 {
            format!(
                " (>= {BUSY_CPUS} CPUs in {runs_busy} of {} runs: figures are pessimistic)",
                busy.len()
            )
        } else {
            String::new()
        }
    );
}
