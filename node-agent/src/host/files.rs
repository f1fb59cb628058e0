//! A real host's files, as [`super::RealHost`] keeps them: the image
//! cache (blobs by sha256, pulled once and verified), one directory per
//! instance holding its root disk (a qcow2 overlay on the cached image),
//! its NoCloud seed and its console log, and the volume and snapshot
//! files.
//!
//! ```text
//! ROOT/images/sha256/<hex>          cached image bytes (read-only, shared)
//! ROOT/instances/<uid>/disk.qcow2   root disk overlay
//! ROOT/instances/<uid>/seed.iso     NoCloud seed (label cidata)
//! ROOT/instances/<uid>/console.log  serial console (written by virtlogd)
//! ROOT/volumes/<uid>.qcow2          a Volume
//! ROOT/snapshots/<uid>.qcow2        a Snapshot
//! ```
//!
//! QEMU runs as its own user: every directory here is 0755 and every file
//! QEMU reads is 0644. Blocking I/O and child processes (`qemu-img`,
//! `genisoimage`): async callers use `spawn_blocking`. Nothing here knows
//! a Corral object: only uids and paths.

use std::path::{Path, PathBuf};
use std::process::Command;

use corral_store::blobs::BlobStore;

use super::{io, HostError, Result, Seed};

fn make_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(io(path))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io(path))
}

fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| HostError::Command {
        command: shown.clone(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(HostError::Command {
            command: shown,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One host's files.
#[derive(Debug, Clone)]
pub struct HostFiles {
    root: PathBuf,
    images: BlobStore,
}

impl HostFiles {
    pub fn open(root: &Path) -> Result<HostFiles> {
        make_dir(root)?;
        make_dir(&root.join("instances"))?;
        make_dir(&root.join("volumes"))?;
        make_dir(&root.join("snapshots"))?;
        let images = BlobStore::open(&root.join("images"))?;
        // Downloads an agent was killed in the middle of: only this agent
        // writes here, and nothing ever reads a partial file, so they only
        // take space (cli/tests/agent_kills.rs).
        if let Ok(entries) = std::fs::read_dir(images.dir().join("tmp")) {
            for e in entries.flatten() {
                if let Err(err) = std::fs::remove_file(e.path()) {
                    tracing::warn!(path = %e.path().display(), error = %err, "removing a partial download");
                }
            }
        }
        Ok(HostFiles {
            images,
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn images(&self) -> &BlobStore {
        &self.images
    }

    pub fn instance_dir(&self, uid: &str) -> PathBuf {
        self.root.join("instances").join(uid)
    }

    pub fn root_disk(&self, uid: &str) -> PathBuf {
        self.instance_dir(uid).join("disk.qcow2")
    }

    pub fn seed_path(&self, uid: &str) -> PathBuf {
        self.instance_dir(uid).join("seed.iso")
    }

    pub fn console_log(&self, uid: &str) -> PathBuf {
        self.instance_dir(uid).join("console.log")
    }

    pub fn volume_path(&self, uid: &str) -> PathBuf {
        self.root.join("volumes").join(format!("{uid}.qcow2"))
    }

    pub fn snapshot_path(&self, uid: &str) -> PathBuf {
        self.root.join("snapshots").join(format!("{uid}.qcow2"))
    }

    /// Creates an empty qcow2 file of `size_bytes` at `dest` (whole or not
    /// at all).
    pub fn create_empty(&self, dest: &Path, size_bytes: u64) -> Result<()> {
        let tmp = dest.with_extension("qcow2.part");
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&tmp)
            .arg(size_bytes.to_string()))?;
        set_mode(&tmp, 0o644)?;
        std::fs::rename(&tmp, dest).map_err(io(dest))
    }

    /// Copies `src` (any format qemu-img reads, even while a guest has it
    /// open) into a standalone qcow2 at `dest`, grown to `min_bytes`.
    pub fn copy_image(
        &self,
        src: &Path,
        src_format: &str,
        dest: &Path,
        min_bytes: u64,
    ) -> Result<()> {
        let tmp = dest.with_extension("qcow2.part");
        run(Command::new("qemu-img")
            .args(["convert", "-U", "-q", "-f", src_format, "-O", "qcow2"])
            .arg(src)
            .arg(&tmp))?;
        let info = run(Command::new("qemu-img")
            .args(["info", "--output=json", "-U"])
            .arg(&tmp))?;
        let size = serde_json::from_str::<serde_json::Value>(&info)
            .ok()
            .and_then(|v| v["virtual-size"].as_u64())
            .unwrap_or(0);
        if min_bytes > size {
            run(Command::new("qemu-img")
                .args(["resize", "-q", "-f", "qcow2"])
                .arg(&tmp)
                .arg(min_bytes.to_string()))?;
        }
        set_mode(&tmp, 0o644)?;
        std::fs::rename(&tmp, dest).map_err(io(dest))
    }

    /// Removes a file (absent is fine).
    pub fn remove_file(&self, path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(path)(e)),
        }
    }

    /// Creates the root disk as a qcow2 overlay on `base` unless it exists
    /// (an existing disk holds the guest's data: it is never recreated).
    /// Grows it to `min_bytes` when the image is smaller. Returns whether
    /// it was created.
    pub fn ensure_root_disk(
        &self,
        uid: &str,
        base: &Path,
        base_format: &str,
        min_bytes: u64,
    ) -> Result<bool> {
        let disk = self.root_disk(uid);
        if disk.exists() {
            return Ok(false);
        }
        make_dir(&self.instance_dir(uid))?;
        let info = run(Command::new("qemu-img")
            .args(["info", "--output=json", "-f", base_format])
            .arg(base))?;
        let virtual_size = serde_json::from_str::<serde_json::Value>(&info)
            .ok()
            .and_then(|v| v["virtual-size"].as_u64())
            .unwrap_or(0);
        let tmp = disk.with_extension("qcow2.part");
        let mut cmd = Command::new("qemu-img");
        cmd.args(["create", "-q", "-f", "qcow2", "-F", base_format, "-b"])
            .arg(base)
            .arg(&tmp);
        if min_bytes > virtual_size {
            cmd.arg(min_bytes.to_string());
        }
        run(&mut cmd)?;
        set_mode(&tmp, 0o644)?;
        std::fs::rename(&tmp, &disk).map_err(io(&disk))?;
        Ok(true)
    }

    /// Writes the NoCloud seed ISO (volume label `cidata`), replacing any
    /// earlier one.
    pub fn write_seed(&self, uid: &str, seed: &Seed) -> Result<()> {
        let dir = self.instance_dir(uid);
        make_dir(&dir)?;
        let staging = dir.join("seed.d");
        let _ = std::fs::remove_dir_all(&staging);
        make_dir(&staging)?;
        let write = |name: &str, bytes: &[u8]| {
            let p = staging.join(name);
            std::fs::write(&p, bytes).map_err(io(&p))
        };
        write("meta-data", seed.meta_data().as_bytes())?;
        write("user-data", &seed.user_data)?;
        let tmp = dir.join("seed.iso.part");
        run(Command::new("genisoimage")
            .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
            .arg(&tmp)
            .arg(staging.join("user-data"))
            .arg(staging.join("meta-data")))?;
        let _ = std::fs::remove_dir_all(&staging);
        set_mode(&tmp, 0o644)?;
        let dest = self.seed_path(uid);
        std::fs::rename(&tmp, &dest).map_err(io(&dest))
    }

    /// Removes everything the instance owned on this host.
    pub fn remove_instance(&self, uid: &str) -> Result<()> {
        let dir = self.instance_dir(uid);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&dir)(e)),
        }
    }

    /// The uids that have a directory here.
    pub fn instance_uids(&self) -> Result<Vec<String>> {
        let d = self.root.join("instances");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&d).map_err(io(&d))? {
            let e = e.map_err(io(&d))?;
            if let Some(n) = e.file_name().to_str() {
                out.push(n.to_string());
            }
        }
        Ok(out)
    }

    /// The newest `max` bytes of the console log (empty if none yet) and
    /// their offset in the log.
    pub fn console_tail(&self, uid: &str, max: u64) -> Result<(Vec<u8>, u64)> {
        use std::io::{Read, Seek, SeekFrom};
        let p = self.console_log(uid);
        let mut f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(io(&p)(e)),
        };
        let len = f.metadata().map_err(io(&p))?.len();
        let start = len.saturating_sub(max);
        f.seek(SeekFrom::Start(start)).map_err(io(&p))?;
        let mut out = Vec::new();
        // The guest may be writing meanwhile: read no more than `max`.
        f.take(max).read_to_end(&mut out).map_err(io(&p))?;
        Ok((out, start))
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_iso_and_overlay_are_real_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = HostFiles::open(dir.path()).unwrap();
        let seed = Seed {
            instance_id: "i-1".into(),
            hostname: "h".into(),
            public_keys: vec!["ssh-ed25519 AAAA k".into()],
            user_data: b"#!/bin/sh\necho hi\n".to_vec(),
        };
        files.write_seed("u1", &seed).unwrap();
        let iso = std::fs::read(files.seed_path("u1")).unwrap();
        assert_eq!(&iso[0x8001..0x8006], b"CD001");
        assert_eq!(&iso[0x8028..0x802e], b"cidata");

        let base = dir.path().join("base.qcow2");
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("16M"))
        .unwrap();
        assert!(files
            .ensure_root_disk("u1", &base, "qcow2", 64 << 20)
            .unwrap());
        // Never recreated.
        assert!(!files
            .ensure_root_disk("u1", &base, "qcow2", 64 << 20)
            .unwrap());
        let info = run(Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(files.root_disk("u1")))
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(v["virtual-size"], 64 << 20);
        assert_eq!(v["backing-filename"], base.display().to_string());
        assert_eq!(files.instance_uids().unwrap(), vec!["u1".to_string()]);
        files.remove_instance("u1").unwrap();
        assert!(files.instance_uids().unwrap().is_empty());
    }
}
