//! Checks that the tools a boot benchmark needs are here, and small
//! helpers around processes and files.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{anyhow, bail, Context, Result};
use tokio::process::Command;

use super::*;

pub(super) async fn check_tool(tool: &str, arg: &str, package: &str) -> Result<()> {
    let ok = Command::new(tool)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false);
    anyhow::ensure!(ok, "`{tool}` is not usable (apt install {package})");
    Ok(())
}

pub(super) async fn check_libvirt(virt_type: &'static str) -> Result<()> {
    tokio::task::spawn_blocking(move || -> Result<()> {
        use corral_node_agent::Hypervisor;
        let hv = corral_node_agent::Libvirt::open(LIBVIRT, virt_type)?;
        hv.list()?;
        Ok(())
    })
    .await?
    .map_err(|e| {
        anyhow!(
            "libvirtd is not answering on {LIBVIRT} (start it with scripts/start-libvirt, as root): {e:#}"
        )
    })
}

/// Builds the guest (or checks the cached build) and answers its disk.
pub(super) async fn guest_image(dir: &Path) -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/build-guest");
    if script.is_file() {
        let out = Command::new(&script)
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "building the test guest with {} {} failed:\n{}{}",
                script.display(),
                dir.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let disk = dir.join("tiny.qcow2");
    anyhow::ensure!(
        disk.is_file(),
        "no test guest at {}: build it with `tests/images/build-guest {}` (as root)",
        disk.display(),
        dir.display()
    );
    Ok(disk)
}

pub(super) fn chmod(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", p.display()))
}

pub(super) async fn run_tool(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {shown}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{shown} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

pub(super) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(super) fn find(haystack: &[u8], needle: &[u8], from: usize) -> bool {
    haystack.len() >= needle.len()
        && haystack[from.min(haystack.len())..]
            .windows(needle.len())
            .any(|w| w == needle)
}

// ----------------------------------------------------------------
// Machine load: 1-min load average and QEMU processes that are not
// this benchmark's (their command lines do not name its directory).
