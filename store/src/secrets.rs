//! Secrets at rest: fields a kind declares `secret` (an EC2 secret access
//! key) are sealed with AES-256-GCM under a key kept in a file outside the
//! store, as Kubernetes' encryption at rest does for Secrets. The store's
//! bytes alone (a copy of the redb file, an etcd snapshot) reveal nothing.
//!
//! The key file holds one key per line, `<id> <base64 of 32 bytes>`; the
//! first line's key seals, every line's key opens, so keys rotate: a new
//! key is put first, every sealed field is rewritten with it, and the old
//! line can go once nothing names it. A sealed value reads
//! `enc:v1:<id>:<base64 of nonce | ciphertext | tag>`, with the object's
//! store key as associated data, so a sealed value copied into another
//! object does not open. The nonce is an HMAC of the key, the object's key
//! and the plaintext: sealing the same value again gives the same bytes,
//! so an unchanged object still writes nothing.
//!
//! Values without the `enc:` prefix are read as they are (data written
//! before sealing existed) and sealed at their next write.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;

const PREFIX: &str = "enc:v1:";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secrets key file {0}: {1}")]
    File(PathBuf, String),
    #[error("a sealed secret names key {0:?}, which the secrets key file does not hold")]
    UnknownKey(String),
    #[error("a sealed secret does not open: wrong key, or the value was altered or moved")]
    Open,
    #[error("a sealed secret is malformed")]
    Malformed,
    #[error("a sealed secret was read, but this server has no secrets key configured")]
    NoKeys,
}

struct Key {
    id: String,
    aead: LessSafeKey,
    nonce_key: hmac::Key,
    raw: [u8; 32],
}

impl Key {
    fn new(id: &str, raw: [u8; 32]) -> Key {
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).expect("32-byte AES key"));
        // The nonce key is derived, so one secret serves both uses apart.
        let derive = hmac::Key::new(hmac::HMAC_SHA256, &raw);
        let nonce_raw = hmac::sign(&derive, b"corral secrets nonce key");
        Key {
            id: id.to_string(),
            aead,
            nonce_key: hmac::Key::new(hmac::HMAC_SHA256, nonce_raw.as_ref()),
            raw,
        }
    }
}

/// The keys of a key file; the first seals.
pub struct SecretKeys {
    path: PathBuf,
    keys: RwLock<Vec<Key>>,
}

impl std::fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKeys")
            .field("path", &self.path)
            .field("primary", &self.primary_id())
            .finish_non_exhaustive()
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse(path: &Path, text: &str) -> Result<Vec<Key>, SecretsError> {
    let bad = |line: usize, why: &str| {
        SecretsError::File(path.to_path_buf(), format!("line {line}: {why}"))
    };
    let mut keys: Vec<Key> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (id, b64) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad(i + 1, "expected `<id> <base64 key>`"))?;
        if !valid_id(id) {
            return Err(bad(i + 1, "a key id is 1-32 letters, digits, '-' or '_'"));
        }
        if keys.iter().any(|k| k.id == id) {
            return Err(bad(i + 1, "the key id is used twice"));
        }
        let raw: [u8; 32] = B64
            .decode(b64.trim())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad(i + 1, "the key must be 32 bytes, base64"))?;
        keys.push(Key::new(id, raw));
    }
    if keys.is_empty() {
        return Err(SecretsError::File(
            path.to_path_buf(),
            "no key in it".to_string(),
        ));
    }
    Ok(keys)
}

fn random_key() -> [u8; 32] {
    let mut raw = [0u8; 32];
    SystemRandom::new()
        .fill(&mut raw)
        .expect("system randomness");
    raw
}

fn render(keys: &[Key]) -> String {
    let mut text = String::from(
        "# Corral secrets keys: the first line seals, every line opens.\n\
         # Keep this file out of backups of the store; losing it loses every EC2 secret.\n",
    );
    for k in keys {
        text.push_str(&format!("{} {}\n", k.id, B64.encode(k.raw)));
    }
    text
}

fn write_file(path: &Path, text: &str) -> Result<(), SecretsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| SecretsError::File(path.to_path_buf(), e.to_string());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

impl SecretKeys {
    /// Reads the key file, making it (one new key, mode 0600) when absent.
    pub fn load_or_create(path: &Path) -> Result<SecretKeys, SecretsError> {
        let keys = match std::fs::read_to_string(path) {
            Ok(text) => parse(path, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keys = vec![Key::new(&new_id(&[]), random_key())];
                write_file(path, &render(&keys))?;
                tracing::info!(path = %path.display(), "made a new secrets key");
                keys
            }
            Err(e) => return Err(SecretsError::File(path.to_path_buf(), e.to_string())),
        };
        Ok(SecretKeys {
            path: path.to_path_buf(),
            keys: RwLock::new(keys),
        })
    }

    /// The id of the key that seals.
    pub fn primary_id(&self) -> String {
        self.keys.read().expect("keys lock")[0].id.clone()
    }

    /// Puts a new key first in the file (the old ones still open) and
    /// answers its id. The caller then rewrites every sealed field.
    pub fn rotate(&self) -> Result<String, SecretsError> {
        let mut keys = self.keys.write().expect("keys lock");
        // Another server may have rotated the shared file already.
        if let Ok(text) = std::fs::read_to_string(&self.path) {
            if let Ok(fresh) = parse(&self.path, &text) {
                *keys = fresh;
            }
        }
        let id = new_id(&keys);
        keys.insert(0, Key::new(&id, random_key()));
        write_file(&self.path, &render(&keys))?;
        Ok(id)
    }

    /// Drops every key but the first from the file (once nothing is sealed
    /// with them).
    pub fn retire_old(&self) -> Result<usize, SecretsError> {
        let mut keys = self.keys.write().expect("keys lock");
        let dropped = keys.len() - 1;
        keys.truncate(1);
        write_file(&self.path, &render(&keys))?;
        Ok(dropped)
    }

    /// Seals `plain` for the object stored at `aad`.
    pub fn seal(&self, aad: &str, plain: &str) -> String {
        let keys = self.keys.read().expect("keys lock");
        let key = &keys[0];
        let mut ctx = hmac::Context::with_key(&key.nonce_key);
        ctx.update(&(aad.len() as u64).to_be_bytes());
        ctx.update(aad.as_bytes());
        ctx.update(plain.as_bytes());
        let tag = ctx.sign();
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&tag.as_ref()[..NONCE_LEN]);
        let mut buf = plain.as_bytes().to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .expect("AES-GCM seals any length the store holds");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        format!("{PREFIX}{}:{}", key.id, B64.encode(out))
    }

    /// The key id a sealed value names (None for a value in clear).
    pub fn sealed_with(stored: &str) -> Option<&str> {
        stored
            .strip_prefix(PREFIX)?
            .split_once(':')
            .map(|(id, _)| id)
    }

    /// Opens a value sealed for the object stored at `aad`; a value in
    /// clear is answered as it is.
    pub fn open(&self, aad: &str, stored: &str) -> Result<String, SecretsError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let (id, b64) = rest.split_once(':').ok_or(SecretsError::Malformed)?;
        if !self.knows(id) {
            // The shared file may have been rotated by another server.
            self.reload();
        }
        let keys = self.keys.read().expect("keys lock");
        let key = keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| SecretsError::UnknownKey(id.to_string()))?;
        let raw = B64.decode(b64).map_err(|_| SecretsError::Malformed)?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SecretsError::Malformed);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SecretsError::Malformed)?;
        let mut buf = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SecretsError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretsError::Malformed)
    }

    fn knows(&self, id: &str) -> bool {
        self.keys
            .read()
            .expect("keys lock")
            .iter()
            .any(|k| k.id == id)
    }

    fn reload(&self) {
        match std::fs::read_to_string(&self.path)
            .map_err(|e| SecretsError::File(self.path.clone(), e.to_string()))
        {
            Ok(text) => match parse(&self.path, &text) {
                Ok(keys) => *self.keys.write().expect("keys lock") = keys,
                Err(e) => tracing::warn!(error = %e, "re-reading the secrets key file"),
            },
            Err(e) => tracing::warn!(error = %e, "re-reading the secrets key file"),
        }
    }
}

/// `k1`, `k2`, ...: one more than the highest numbered id present.
fn new_id(keys: &[Key]) -> String {
    let next = keys
        .iter()
        .filter_map(|k| k.id.strip_prefix('k')?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    format!("k{next}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_binds_to_the_object() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let keys = SecretKeys::load_or_create(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let sealed = keys.seal("/corral/accesskeys/_/akia1", "s3cret/+=");
        assert!(sealed.starts_with("enc:v1:k1:"), "{sealed}");
        assert!(!sealed.contains("s3cret"));
        assert_eq!(
            keys.seal("/corral/accesskeys/_/akia1", "s3cret/+="),
            sealed,
            "deterministic"
        );
        assert_eq!(
            keys.open("/corral/accesskeys/_/akia1", &sealed).unwrap(),
            "s3cret/+="
        );
        // Moved to another object: refused.
        assert!(matches!(
            keys.open("/corral/accesskeys/_/akia2", &sealed),
            Err(SecretsError::Open)
        ));
        // Altered: refused.
        let mut altered = sealed.clone();
        altered.pop();
        altered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(keys.open("/corral/accesskeys/_/akia1", &altered).is_err());
        // Clear values pass (data from before sealing).
        assert_eq!(keys.open("x", "plain").unwrap(), "plain");
        // Another key file cannot open it.
        let other = SecretKeys::load_or_create(&dir.path().join("other")).unwrap();
        assert!(other.open("/corral/accesskeys/_/akia1", &sealed).is_err());
    }

    #[test]
    fn rotation_keeps_old_values_readable_until_retired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let keys = SecretKeys::load_or_create(&path).unwrap();
        let old = keys.seal("a", "v");
        assert_eq!(keys.rotate().unwrap(), "k2");
        let new = keys.seal("a", "v");
        assert!(new.starts_with("enc:v1:k2:"));
        assert_eq!(keys.open("a", &old).unwrap(), "v");
        // A second server reading the same file learns k2 when it meets it.
        let reread = SecretKeys::load_or_create(&path).unwrap();
        assert_eq!(reread.primary_id(), "k2");
        assert_eq!(reread.open("a", &old).unwrap(), "v");
        assert_eq!(keys.retire_old().unwrap(), 1);
        assert!(matches!(keys.open("a", &old), Err(SecretsError::UnknownKey(id)) if id == "k1"));
        assert_eq!(keys.open("a", &new).unwrap(), "v");
    }

    #[test]
    fn bad_key_files_say_which_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# c\nk1 notbase64!\n").unwrap();
        let err = SecretKeys::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("32 bytes"), "{err}");
        std::fs::write(&path, "# only comments\n").unwrap();
        assert!(SecretKeys::load_or_create(&path)
            .unwrap_err()
            .to_string()
            .contains("no key"));
    }
}
