//! B0: the same guest booted by a bare QEMU (no libvirt, no Corral), the
//! baseline every Corral figure is a ratio of.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

use super::*;

/// Where bare QEMU attaches the NoCloud seed: a virtio disk (as
/// tests/images/smoke does; the guest looks there first) or an IDE
/// CD-ROM on the secondary channel (`hdc`, as Nova attaches config
/// drives).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum SeedOn {
    Virtio,
    Cdrom,
}

pub(super) struct Bare {
    pub(super) kvm: bool,
    pub(super) base: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) size: Size,
}

pub(super) struct BareRun {
    pub(super) dir: PathBuf,
    pub(super) child: Option<Child>,
    pub(super) started: Instant,
    pub(super) ready: Option<Duration>,
    pub(super) scanned: usize,
}

impl Bare {
    pub(super) async fn prepare(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join(name);
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::create_dir_all(dir.join("seed.d")).await?;
        run_tool(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(&self.base)
                .arg(dir.join("disk.qcow2"))
                .arg(format!("{}G", self.size.root_disk_gib.max(1))),
        )
        .await?;
        tokio::fs::write(
            dir.join("seed.d/meta-data"),
            format!("instance-id: i-bare-{name}\nlocal-hostname: {name}\n"),
        )
        .await?;
        tokio::fs::write(dir.join("seed.d/user-data"), b"").await?;
        run_tool(
            Command::new("genisoimage")
                .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
                .arg(dir.join("seed.iso"))
                .arg(dir.join("seed.d/user-data"))
                .arg(dir.join("seed.d/meta-data")),
        )
        .await?;
        Ok(dir)
    }

    pub(super) fn command(&self, dir: &Path, seed: SeedOn) -> Command {
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-machine", "pc,usb=off,acpi=on"]);
        if self.kvm {
            c.args(["-accel", "kvm", "-cpu", "host"]);
        } else {
            c.args(["-accel", "tcg", "-cpu", "qemu64"]);
        }
        c.arg("-m")
            .arg(self.size.memory_mib.to_string())
            .arg("-smp")
            .arg(self.size.vcpus.to_string())
            .args([
                "-display",
                "none",
                "-no-user-config",
                "-nodefaults",
                "-rtc",
                "base=utc",
                "-no-reboot",
                "-boot",
                "strict=on",
            ])
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=d0,format=qcow2,cache=none,discard=unmap",
                dir.join("disk.qcow2").display()
            ))
            .args(["-device", "virtio-blk-pci,drive=d0,bootindex=1"])
            .arg("-drive");
        match seed {
            SeedOn::Virtio => c
                .arg(format!(
                    "file={},if=none,id=d1,format=raw,readonly=on,cache=none",
                    dir.join("seed.iso").display()
                ))
                .args(["-device", "virtio-blk-pci,drive=d1,serial=cidata"]),
            SeedOn::Cdrom => c
                .arg(format!(
                    "file={},if=none,id=d1,format=raw,readonly=on",
                    dir.join("seed.iso").display()
                ))
                .args(["-device", "ide-cd,bus=ide.1,unit=0,drive=d1"]),
        };
        c.args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .stdin(Stdio::null())
        .kill_on_drop(true);
        c
    }

    /// Boots `n` guests at once; answers each one's launch → ready.
    pub(super) async fn round(
        &self,
        label: &str,
        n: usize,
        seed: SeedOn,
        timeout: Duration,
    ) -> Result<Vec<Duration>> {
        let mut runs = Vec::with_capacity(n);
        for i in 0..n {
            runs.push(BareRun {
                dir: self.prepare(&format!("{label}-{i}")).await?,
                child: None,
                started: Instant::now(),
                ready: None,
                scanned: 0,
            });
        }
        let result = self.boot_all(&mut runs, seed, timeout).await;
        for r in &mut runs {
            if let Some(mut c) = r.child.take() {
                let _ = c.kill().await;
            }
            let _ = tokio::fs::remove_dir_all(&r.dir).await;
        }
        result?;
        Ok(runs.iter().filter_map(|r| r.ready).collect())
    }

    pub(super) async fn boot_all(
        &self,
        runs: &mut [BareRun],
        seed: SeedOn,
        timeout: Duration,
    ) -> Result<()> {
        for r in runs.iter_mut() {
            let out = std::fs::File::create(r.dir.join("qemu.out"))?;
            let mut cmd = self.command(&r.dir, seed);
            cmd.stdout(out.try_clone()?).stderr(out);
            r.started = Instant::now();
            r.child = Some(cmd.spawn().context("starting qemu-system-x86_64")?);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let mut waiting = 0;
            for r in runs.iter_mut().filter(|r| r.ready.is_none()) {
                let log = tokio::fs::read(r.dir.join("console.log"))
                    .await
                    .unwrap_or_default();
                if find(&log, READY_LINE, r.scanned.saturating_sub(READY_LINE.len())) {
                    r.ready = Some(r.started.elapsed());
                    continue;
                }
                r.scanned = log.len();
                waiting += 1;
                if let Some(status) = r.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    bail!(
                        "bare QEMU exited ({status}) before `corral-guest: ready`:\n{}\n{}",
                        tail(&r.dir.join("qemu.out"), 20),
                        tail(&r.dir.join("console.log"), 20)
                    );
                }
            }
            if waiting == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{waiting} bare QEMU guest(s) not ready within {} s",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

// ----------------------------------------------------------------
// Corral: `corral up --no-agent` and a `corral agent` on qemu:///system,
// both children of this process (their own process group, so a Ctrl-C
// reaches only the benchmark, which then cleans up).
