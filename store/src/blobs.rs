//! Content-addressed files: image bytes on the server, and each node's
//! cache of them. A blob is named by the hex SHA-256 of its bytes and is
//! written to a temporary file first, hashed while it is written, and only
//! renamed into place when complete — a killed import never leaves a blob
//! that looks valid.
//!
//! Blocking file I/O: async callers wrap it in `spawn_blocking`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The I/O error is in the message, not a `source`: printed once
    /// however the chain is walked.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("checksum mismatch: expected sha256 {expected}, got {actual}")]
    Checksum { expected: String, actual: String },
    #[error("{0:?} is not a sha256 (64 lowercase hex digits)")]
    BadName(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |error| BlobError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// What was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub sha256: String,
    pub size: u64,
}

/// Whether `s` is a hex SHA-256 as blobs are named.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A directory of blobs: `DIR/sha256/<hex>`, temporaries in `DIR/tmp`.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

/// Directories QEMU (running as its own user) must be able to traverse.
fn make_dir(path: &Path) -> Result<(), BlobError> {
    std::fs::create_dir_all(path).map_err(io(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io(path))?;
    }
    Ok(())
}

impl BlobStore {
    pub fn open(dir: &Path) -> Result<BlobStore, BlobError> {
        make_dir(&dir.join("sha256"))?;
        make_dir(&dir.join("tmp"))?;
        Ok(BlobStore {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob `sha256` lives (whether or not it is there yet).
    pub fn path(&self, sha256: &str) -> Result<PathBuf, BlobError> {
        if !is_sha256(sha256) {
            return Err(BlobError::BadName(sha256.to_string()));
        }
        Ok(self.dir.join("sha256").join(sha256))
    }

    pub fn contains(&self, sha256: &str) -> bool {
        self.path(sha256).map(|p| p.is_file()).unwrap_or(false)
    }

    /// A writer for a new blob.
    pub fn writer(&self) -> Result<BlobWriter, BlobError> {
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}.part", uuid::Uuid::new_v4()));
        let file = File::create(&tmp).map_err(io(&tmp))?;
        Ok(BlobWriter {
            store: self.clone(),
            file: Some(file),
            tmp,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Copies an opened file in (opened by [`crate::import::ImportPolicy`],
    /// which decides what may be read), calling `progress(done, total)`
    /// now and then; `name` is for errors.
    pub fn import_file(
        &self,
        mut f: File,
        total: u64,
        name: &Path,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<BlobInfo, BlobError> {
        let mut w = self.writer()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut last = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(io(name))?;
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n])?;
            if w.size - last >= 64 << 20 {
                last = w.size;
                progress(w.size, total);
            }
        }
        progress(w.size, total);
        w.finish(None)
    }

    /// Removes the blob (absent is fine).
    pub fn remove(&self, sha256: &str) -> Result<(), BlobError> {
        let p = self.path(sha256)?;
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// The blobs present.
    pub fn list(&self) -> Result<Vec<String>, BlobError> {
        let d = self.dir.join("sha256");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&d).map_err(io(&d))? {
            let e = e.map_err(io(&d))?;
            if let Some(n) = e.file_name().to_str() {
                if is_sha256(n) {
                    out.push(n.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A blob being written. Dropped without [`BlobWriter::finish`], its
/// temporary file is removed.
pub struct BlobWriter {
    store: BlobStore,
    file: Option<File>,
    tmp: PathBuf,
    hasher: Sha256,
    size: u64,
}

impl BlobWriter {
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), BlobError> {
        let f = self.file.as_mut().expect("writer not finished");
        f.write_all(data).map_err(io(&self.tmp))?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Completes the blob; with `expect`, refuses bytes whose hash differs.
    pub fn finish(mut self, expect: Option<&str>) -> Result<BlobInfo, BlobError> {
        let f = self.file.take().expect("writer not finished");
        f.sync_all().map_err(io(&self.tmp))?;
        drop(f);
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if let Some(want) = expect {
            if want != sha256 {
                let _ = std::fs::remove_file(&self.tmp);
                return Err(BlobError::Checksum {
                    expected: want.to_string(),
                    actual: sha256,
                });
            }
        }
        let dest = self.store.path(&sha256)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.tmp, std::fs::Permissions::from_mode(0o644))
                .map_err(io(&self.tmp))?;
        }
        std::fs::rename(&self.tmp, &dest).map_err(io(&dest))?;
        Ok(BlobInfo {
            sha256,
            size: self.size,
        })
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Hex SHA-256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String, BlobError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Checks that a file's bytes look like the declared image format: qcow2
/// has its magic, an ISO its volume descriptor; raw is anything.
pub fn check_image_format(
    path: &Path,
    format: corral_api_types::ImageFormat,
) -> Result<(), String> {
    use corral_api_types::ImageFormat;
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut head = [0u8; 4];
    let n = f.read(&mut head).map_err(|e| e.to_string())?;
    match format {
        ImageFormat::Qcow2 if n < 4 || head != *b"QFI\xfb" => {
            Err("is qcow2 but the bytes are not a qcow2 image (no QFI\\xfb magic)".into())
        }
        ImageFormat::Iso => {
            let mut id = [0u8; 5];
            f.seek(SeekFrom::Start(0x8001)).map_err(|e| e.to_string())?;
            match f.read_exact(&mut id) {
                Ok(()) if &id == b"CD001" => Ok(()),
                _ => Err("is iso but the bytes are not an ISO 9660 image".into()),
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_named_by_content_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut w = store.writer().unwrap();
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let info = w.finish(None).unwrap();
        assert_eq!(
            info.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(info.size, 11);
        assert!(store.contains(&info.sha256));
        assert_eq!(
            std::fs::read(store.path(&info.sha256).unwrap()).unwrap(),
            b"hello world"
        );
        assert_eq!(store.list().unwrap(), vec![info.sha256.clone()]);

        // Wrong expected checksum: refused, nothing left behind.
        let mut w = store.writer().unwrap();
        w.write_all(b"other").unwrap();
        let err = w.finish(Some(&info.sha256)).unwrap_err();
        assert!(matches!(err, BlobError::Checksum { .. }), "{err}");
        assert_eq!(store.list().unwrap().len(), 1);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );

        // A dropped writer leaves no temporary.
        let mut w = store.writer().unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );

        // Names are checked.
        assert!(matches!(
            store.path("../etc/passwd"),
            Err(BlobError::BadName(_))
        ));
        store.remove(&info.sha256).unwrap();
        assert!(!store.contains(&info.sha256));
    }

    #[test]
    fn import_copies_and_reports_progress() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        std::fs::write(&src, vec![7u8; 3 << 20]).unwrap();
        let store = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let mut seen = Vec::new();
        let f = File::open(&src).unwrap();
        let info = store
            .import_file(f, 3 << 20, &src, |done, total| seen.push((done, total)))
            .unwrap();
        assert_eq!(info.size, 3 << 20);
        assert_eq!(info.sha256, sha256_file(&src).unwrap());
        assert_eq!(seen.last(), Some(&(3 << 20, 3 << 20)));
    }
}
