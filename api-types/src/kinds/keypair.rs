//! KeyPair: an SSH public key injected into instances that name it.

use std::collections::BTreeMap;

use base64::Engine;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{check_meta_update, check_tags, header, NameRule, IMMUTABLE_MSG};
use crate::{Defaults, FieldErrors, Validate, ValidateUpdate};

crate::resource!(
    /// An SSH public key.
    KeyPair,
    KeyPairSpec,
    KeyPairStatus,
    "keypairs",
    Project
);

/// Key types accepted in `publicKey`.
pub const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Desired state of a key pair.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyPairSpec {
    /// One line in OpenSSH format: `ssh-ed25519 AAAA... comment`.
    pub public_key: String,
    /// EC2-style tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Observed state of a key pair.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyPairStatus {
    /// Key fingerprint as EC2 shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// EC2 id, `key-` and 17 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2_id: Option<String>,
}

/// A parsed OpenSSH public key line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSshPublicKey {
    /// `ssh-ed25519`, `ssh-rsa`, ...
    pub key_type: String,
    /// The decoded key blob (the SSH wire encoding).
    pub blob: Vec<u8>,
    /// Whatever follows the key data (often `user@host`); may be empty.
    pub comment: String,
}

impl OpenSshPublicKey {
    /// OpenSSH's SHA-256 fingerprint, base64 without the `SHA256:` prefix
    /// (what EC2 shows for ED25519 keys).
    pub fn sha256_fingerprint(&self) -> String {
        use sha2::Digest;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&self.blob))
    }
}

/// Why a public key line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    #[error("required")]
    Empty,
    #[error("must be a single line")]
    MultiLine,
    #[error("must be an OpenSSH public key: \"<type> <base64 data> [comment]\"")]
    Syntax,
    #[error(
        "unsupported key type {0:?} (use ssh-ed25519, ssh-rsa or ecdsa-sha2-nistp256/384/521)"
    )]
    UnsupportedType(String),
    #[error("key data is not valid base64")]
    Base64,
    #[error("key data does not match key type {0:?}")]
    Mismatch(String),
}

fn read_string(blob: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    let s = blob.get(4..4usize.checked_add(len)?)?;
    Some((s, &blob[4 + len..]))
}

/// Parses and checks an OpenSSH public key line (surrounding whitespace is
/// ignored). The blob must decode and its embedded type must match.
pub fn parse_openssh_public_key(line: &str) -> Result<OpenSshPublicKey, PublicKeyError> {
    let line = line.trim();
    if line.is_empty() {
        return Err(PublicKeyError::Empty);
    }
    if line.contains(['\n', '\r']) {
        return Err(PublicKeyError::MultiLine);
    }
    let mut parts = line.splitn(3, [' ', '\t']);
    let key_type = parts.next().unwrap_or_default();
    let data = parts.next().ok_or(PublicKeyError::Syntax)?;
    let comment = parts.next().unwrap_or_default().trim().to_string();
    if !SSH_KEY_TYPES.contains(&key_type) {
        if key_type.starts_with("AAAA") {
            return Err(PublicKeyError::Syntax);
        }
        return Err(PublicKeyError::UnsupportedType(key_type.to_string()));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| PublicKeyError::Base64)?;
    let mismatch = || PublicKeyError::Mismatch(key_type.to_string());
    let (embedded, rest) = read_string(&blob).ok_or_else(mismatch)?;
    if embedded != key_type.as_bytes() || rest.is_empty() {
        return Err(mismatch());
    }
    if key_type == "ssh-ed25519" {
        match read_string(rest) {
            Some((key, tail)) if key.len() == 32 && tail.is_empty() => {}
            _ => return Err(mismatch()),
        }
    }
    Ok(OpenSshPublicKey {
        key_type: key_type.to_string(),
        blob,
        comment,
    })
}

impl Validate for KeyPair {
    fn validate(&self) -> FieldErrors {
        let mut errs = header(self, NameRule::DnsLabel);
        if let Err(e) = parse_openssh_public_key(&self.spec.public_key) {
            errs.push("spec.publicKey", e.to_string());
        }
        check_tags(&mut errs, "spec.tags", &self.spec.tags);
        errs
    }
}

impl crate::HostRefs for KeyPair {}

impl Defaults for KeyPair {
    /// Trims surrounding whitespace (YAML block scalars add a newline).
    fn apply_defaults(&mut self) {
        let trimmed = self.spec.public_key.trim();
        if trimmed.len() != self.spec.public_key.len() {
            self.spec.public_key = trimmed.to_string();
        }
    }
}

impl ValidateUpdate for KeyPair {
    /// The key is fixed (as in EC2): create a new KeyPair instead.
    fn validate_update(&self, old: &Self) -> FieldErrors {
        let mut errs = check_meta_update(&old.metadata, &self.metadata);
        if old.spec.public_key.trim() != self.spec.public_key.trim() {
            errs.push("spec.publicKey", IMMUTABLE_MSG);
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::testing::round_trip;
    use crate::validate::testing::{assert_errors, assert_valid};
    use crate::Resource;

    /// A real key made with `ssh-keygen -t ed25519`.
    pub(crate) const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFJ4uHWXmWgwN6MKFpsgnnGaU1rtTEBKPNu/L09gAucb admin@demo";

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn wire(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(&(p.len() as u32).to_be_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    #[test]
    fn round_trip_and_parse() {
        let k: KeyPair = round_trip(&format!(
            "apiVersion: corral/v1\nkind: KeyPair\nmetadata: {{name: admin, project: demo}}\nspec:\n  publicKey: {ED25519}\nstatus: {{fingerprint: \"SHA256:abc\", ec2Id: key-0123456789abcdef0}}\n"
        ));
        assert_valid(&k);
        let parsed = parse_openssh_public_key(ED25519).unwrap();
        assert_eq!(parsed.key_type, "ssh-ed25519");
        assert_eq!(parsed.comment, "admin@demo");
        assert_eq!(parsed.blob.len(), 51);

        let rsa = format!(
            "ssh-rsa {}",
            b64(&wire(&[b"ssh-rsa", &[1, 0, 1], &[0xc5; 257]]))
        );
        assert!(parse_openssh_public_key(&rsa).is_ok());
    }

    #[test]
    fn rejects_bad_keys() {
        let cases: Vec<(String, PublicKeyError)> = vec![
            ("  ".into(), PublicKeyError::Empty),
            (format!("{ED25519}\n{ED25519}"), PublicKeyError::MultiLine),
            ("ssh-ed25519".into(), PublicKeyError::Syntax),
            ("AAAAC3NzaC1lZDI1NTE5".into(), PublicKeyError::Syntax),
            (
                "ssh-dss AAAAB3NzaC1kc3M=".into(),
                PublicKeyError::UnsupportedType("ssh-dss".into()),
            ),
            ("ssh-ed25519 not*base64".into(), PublicKeyError::Base64),
            (
                format!("ssh-ed25519 {}", b64(&wire(&[b"ssh-rsa", &[0; 32]]))),
                PublicKeyError::Mismatch("ssh-ed25519".into()),
            ),
            (
                format!("ssh-ed25519 {}", b64(&wire(&[b"ssh-ed25519", &[0; 31]]))),
                PublicKeyError::Mismatch("ssh-ed25519".into()),
            ),
            (
                format!("ssh-rsa {}", b64(&[0, 0, 0, 99, 1])),
                PublicKeyError::Mismatch("ssh-rsa".into()),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse_openssh_public_key(&line), Err(want), "{line:?}");
        }
    }

    #[test]
    fn validation_paths_and_defaults() {
        let mut k = KeyPair::new(
            "demo",
            "admin",
            KeyPairSpec {
                public_key: "ssh-dss AAAA".into(),
                ..Default::default()
            },
        );
        assert_errors(
            &k.validate(),
            &["spec.publicKey: unsupported key type \"ssh-dss\" (use ssh-ed25519, ssh-rsa or ecdsa-sha2-nistp256/384/521)"],
        );
        k.spec.public_key = String::new();
        assert_errors(&k.validate(), &["spec.publicKey: required"]);
        k.spec.public_key = format!("{ED25519}\n");
        k.apply_defaults();
        assert_eq!(k.spec.public_key, ED25519);
        assert_valid(&k);
    }
}
