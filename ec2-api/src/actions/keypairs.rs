//! Key pairs: CreateKeyPair (the private key is returned once and never
//! stored), ImportKeyPair, DescribeKeyPairs, DeleteKeyPair.

use base64::Engine;
use corral_api_types::ec2::resource_id;
use corral_api_types::{parse_openssh_public_key, KeyPair, KeyPairSpec, Resource};

use super::ids::KEY_PAIR;
use super::{created, Ctx};
use crate::error::{Ec2Error, Result};
use crate::filter::{one, Filters};
use crate::objects::{self, ec2_name, new_uid, place_name, tag_specs, Tagged};
use crate::xml::Xml;

fn check_key_name(name: &str) -> Result<()> {
    if name.len() > 255 || !name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Ec2Error::invalid_value(
            "KeyName must be at most 255 printable ASCII characters",
        ));
    }
    Ok(())
}

/// The fingerprint of an RSA key CreateKeyPair made, recorded when it was
/// made: EC2's is a digest of the private key, which is not kept.
pub const FINGERPRINT_ANNOTATION: &str = "ec2.corral/key-fingerprint";

/// The fingerprint EC2 shows for `k`: for an RSA key CreateKeyPair made,
/// the one recorded then (see [`created_rsa_fingerprint`]); otherwise
/// OpenSSH's SHA-256 (base64), as EC2 gives for ED25519 keys.
pub fn fingerprint(k: &KeyPair) -> String {
    if let Some(f) = k.metadata.annotations.get(FINGERPRINT_ANNOTATION) {
        return f.clone();
    }
    match parse_openssh_public_key(&k.spec.public_key) {
        Ok(p) if p.key_type == "ssh-rsa" => imported_rsa_fingerprint(&p.blob).unwrap_or_default(),
        Ok(p) => p.sha256_fingerprint(),
        Err(_) => String::new(),
    }
}

/// EC2's fingerprint of an RSA public key it was given (ImportKeyPair, or
/// a key made elsewhere): the MD5 of the key as X.509
/// SubjectPublicKeyInfo DER, in colon-separated hex — what `openssl rsa
/// -in KEY -pubout -outform DER | openssl md5 -c` prints, as AWS's user
/// guide checks it. `blob` is the SSH wire form: "ssh-rsa", e, n.
fn imported_rsa_fingerprint(blob: &[u8]) -> Option<String> {
    use md5::Digest;
    fn string(b: &[u8]) -> Option<(&[u8], &[u8])> {
        let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
        Some((b.get(4..4usize.checked_add(len)?)?, &b[4 + len..]))
    }
    let (_, rest) = string(blob)?;
    let (e, rest) = string(rest)?;
    let (n, rest) = string(rest)?;
    if !rest.is_empty() || e.is_empty() || n.is_empty() {
        return None;
    }
    // SSH mpints are DER INTEGER contents already (two's complement,
    // minimal, a leading zero when the high bit is set).
    let mut ints = Vec::new();
    der_push(&mut ints, 0x02, n);
    der_push(&mut ints, 0x02, e);
    // BIT STRING { 0 unused bits, RSAPublicKey ::= SEQUENCE { n, e } }
    let mut bits = vec![0x00];
    der_push(&mut bits, 0x30, &ints);
    // SubjectPublicKeyInfo ::= SEQUENCE { { rsaEncryption, NULL }, key }
    let mut inner = RSA_ALGORITHM.to_vec();
    der_push(&mut inner, 0x03, &bits);
    let mut info = Vec::new();
    der_push(&mut info, 0x30, &inner);
    Some(colon_hex(&md5::Md5::digest(&info)))
}

/// AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }.
const RSA_ALGORITHM: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// Bytes as lowercase hex pairs joined by colons (`openssl … -c`).
fn colon_hex(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

/// EC2's fingerprint of an RSA key it made: the SHA-1 of the private key
/// as PKCS#8 DER, in colon-separated hex — what `openssl pkcs8 -topk8
/// -nocrypt -outform DER | openssl sha1 -c` gives for the key material.
/// `pem` is the PKCS#1 key ssh-keygen wrote (`BEGIN RSA PRIVATE KEY`).
fn created_rsa_fingerprint(pem: &str) -> Option<String> {
    use sha1::Digest;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let pkcs1 = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()?;
    if pkcs1.first() != Some(&0x30) {
        return None;
    }
    // PrivateKeyInfo ::= SEQUENCE { version 0, AlgorithmIdentifier
    // { rsaEncryption (1.2.840.113549.1.1.1), NULL }, OCTET STRING
    // { RSAPrivateKey } }
    let mut inner = vec![0x02, 0x01, 0x00]; // INTEGER 0
    inner.extend_from_slice(&RSA_ALGORITHM);
    der_push(&mut inner, 0x04, &pkcs1);
    let mut info = Vec::new();
    der_push(&mut info, 0x30, &inner);
    Some(colon_hex(&sha1::Sha1::digest(&info)))
}

/// Appends a DER element: `tag`, the definite length, `content`.
fn der_push(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    match u8::try_from(content.len()) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let len = content.len().to_be_bytes();
            let long = &len[len.iter().take_while(|b| **b == 0).count()..];
            out.push(0x80 | long.len() as u8);
            out.extend_from_slice(long);
        }
    }
    out.extend_from_slice(content);
}

fn key_type(public_key: &str) -> &'static str {
    if public_key.starts_with("ssh-ed25519") {
        "ed25519"
    } else {
        "rsa"
    }
}

async fn find(ctx: &Ctx<'_>, name: &str) -> Result<Option<KeyPair>> {
    Ok(ctx
        .list::<KeyPair>()
        .await?
        .into_iter()
        .find(|k| ec2_name(&k.metadata) == name))
}

/// Runs ssh-keygen in a private temporary directory (removed on return);
/// the private key only ever lives in memory and that directory.
async fn generate(kind: &str) -> Result<(String, String)> {
    let dir = tempfile::tempdir().map_err(|e| Ec2Error::internal(format!("tempdir: {e}")))?;
    let path = dir.path().join("key");
    let mut cmd = tokio::process::Command::new("ssh-keygen");
    cmd.arg("-q")
        .arg("-N")
        .arg("")
        .arg("-C")
        .arg("")
        .arg("-f")
        .arg(&path);
    match kind {
        "ed25519" => cmd.arg("-t").arg("ed25519"),
        _ => cmd.args(["-t", "rsa", "-b", "2048", "-m", "PEM"]),
    };
    let out = cmd.output().await.map_err(|e| {
        tracing::error!(error = %e, "ssh-keygen could not be run (install openssh-client)");
        Ec2Error::unavailable("Key generation is unavailable on this server")
    })?;
    if !out.status.success() {
        tracing::error!(status = %out.status, "ssh-keygen failed");
        return Err(Ec2Error::internal("Key generation failed"));
    }
    let private = tokio::fs::read_to_string(&path)
        .await
        .map_err(|e| Ec2Error::internal(format!("reading the generated key: {e}")))?;
    let public = tokio::fs::read_to_string(path.with_extension("pub"))
        .await
        .map_err(|e| Ec2Error::internal(format!("reading the generated key: {e}")))?;
    Ok((private, public.trim().to_string()))
}

/// Stores a key pair; `fingerprint` is EC2's when it cannot be derived
/// from the public key (an RSA key CreateKeyPair made).
async fn store_key(
    ctx: &Ctx<'_>,
    name: &str,
    public_key: String,
    fingerprint: Option<String>,
) -> Result<KeyPair> {
    let tags = tag_specs(ctx.params, "key-pair")?;
    let uid = new_uid(ctx.project(), KeyPair::KIND, None, 0);
    let id = resource_id(KeyPair::KIND, &uid).unwrap_or_default();
    let mut k = KeyPair::new(ctx.project(), "", KeyPairSpec { public_key, tags });
    k.metadata.uid = uid;
    place_name(&mut k.metadata, name, &id);
    if let Some(f) = fingerprint {
        k.metadata
            .annotations
            .insert(FINGERPRINT_ANNOTATION.to_string(), f);
    }
    match objects::create(ctx.store, k).await {
        Err(e) if e.code == "IncorrectState" => Err(duplicate(name)),
        other => other,
    }
}

fn duplicate(name: &str) -> Ec2Error {
    Ec2Error::client(
        "InvalidKeyPair.Duplicate",
        format!("The keypair '{}' already exists.", crate::query::clip(name)),
    )
}

fn summary(x: &mut Xml, k: &KeyPair) {
    x.leaf("keyPairId", k.ec2_id())
        .leaf("keyName", ec2_name(&k.metadata))
        .leaf("keyFingerprint", fingerprint(k));
}

pub async fn create(ctx: &Ctx<'_>) -> Result<Xml> {
    let name = ctx.params.required("KeyName")?.to_string();
    check_key_name(&name)?;
    let kind = match ctx.params.get("KeyType").unwrap_or("rsa") {
        t @ ("rsa" | "ed25519") => t,
        other => {
            return Err(Ec2Error::invalid_value(format!(
                "Invalid KeyType: {}",
                crate::query::clip(other)
            )))
        }
    };
    if !matches!(ctx.params.get("KeyFormat"), None | Some("pem")) {
        return Err(Ec2Error::invalid_value("Only KeyFormat pem is supported"));
    }
    tag_specs(ctx.params, "key-pair")?;
    if find(ctx, &name).await?.is_some() {
        return Err(duplicate(&name));
    }
    ctx.gate()?;
    let (private, public) = generate(kind).await?;
    let fingerprint = match kind {
        "rsa" => Some(
            created_rsa_fingerprint(&private)
                .ok_or_else(|| Ec2Error::internal("ssh-keygen wrote no PKCS#1 RSA key"))?,
        ),
        _ => None,
    };
    let k = store_key(ctx, &name, public, fingerprint).await?;
    let mut x = Xml::new();
    summary(&mut x, &k);
    x.leaf("keyMaterial", private.trim_end());
    x.tags("tagSet", k.tags());
    Ok(x)
}

pub async fn import(ctx: &Ctx<'_>) -> Result<Xml> {
    let name = ctx.params.required("KeyName")?.to_string();
    check_key_name(&name)?;
    let material = ctx.params.required("PublicKeyMaterial")?;
    // The SDKs base64-encode the blob; accept the plain text too.
    let text = base64::engine::general_purpose::STANDARD
        .decode(material.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| material.to_string());
    let public = text.trim().to_string();
    if parse_openssh_public_key(&public).is_err() {
        return Err(Ec2Error::client(
            "InvalidKey.Format",
            "Key is not in valid OpenSSH public key format",
        ));
    }
    tag_specs(ctx.params, "key-pair")?;
    if find(ctx, &name).await?.is_some() {
        return Err(duplicate(&name));
    }
    ctx.gate()?;
    let k = store_key(ctx, &name, public, None).await?;
    let mut x = Xml::new();
    summary(&mut x, &k);
    x.tags("tagSet", k.tags());
    Ok(x)
}

pub async fn describe(ctx: &Ctx<'_>) -> Result<Xml> {
    let names = ctx.params.list("KeyName")?;
    let ids = KEY_PAIR.list(ctx.params)?;
    let include_public = ctx.params.bool("IncludePublicKey")?.unwrap_or(false);
    let filters = Filters::parse(
        ctx.params,
        &["key-pair-id", "fingerprint", "key-name", "key-type"],
        true,
    )?;
    ctx.gate()?;
    let mut keys = ctx.list::<KeyPair>().await?;
    keys.sort_by(|a, b| ec2_name(&a.metadata).cmp(ec2_name(&b.metadata)));
    for n in &names {
        if !keys.iter().any(|k| ec2_name(&k.metadata) == n) {
            return Err(KEY_PAIR.not_found(n));
        }
    }
    for id in &ids {
        if !keys.iter().any(|k| k.ec2_id() == *id) {
            return Err(KEY_PAIR.not_found(id));
        }
    }
    let items: Vec<KeyPair> = keys
        .into_iter()
        .filter(|k| names.is_empty() || names.iter().any(|n| n == ec2_name(&k.metadata)))
        .filter(|k| ids.is_empty() || ids.contains(&k.ec2_id()))
        .filter(|k| {
            filters.matches(
                |f| match f {
                    "key-pair-id" => one(k.ec2_id()),
                    "key-name" => one(ec2_name(&k.metadata)),
                    "fingerprint" => one(fingerprint(k)),
                    _ => one(key_type(&k.spec.public_key)),
                },
                k.tags(),
            )
        })
        .collect();
    let mut x = Xml::new();
    x.set("keySet", &items, |x, k| {
        summary(x, k);
        x.leaf("keyType", key_type(&k.spec.public_key));
        x.tags("tagSet", k.tags());
        if include_public {
            x.leaf("publicKey", &k.spec.public_key);
        }
        x.opt("createTime", created(&k.metadata));
    });
    Ok(x)
}

pub async fn delete(ctx: &Ctx<'_>) -> Result<Xml> {
    let name = ctx.params.get_nonempty("KeyName");
    let id = ctx.params.get_nonempty("KeyPairId");
    if name.is_none() && id.is_none() {
        return Err(Ec2Error::missing("KeyName"));
    }
    if let Some(id) = id {
        KEY_PAIR.check_one(id)?;
    }
    let keys = ctx.list::<KeyPair>().await?;
    let found = keys.into_iter().find(|k| {
        name.is_some_and(|n| ec2_name(&k.metadata) == n) || id.is_some_and(|i| k.ec2_id() == i)
    });
    ctx.gate()?;
    let mut x = Xml::new();
    x.leaf("return", true);
    // Deleting a key pair that does not exist succeeds, as in EC2.
    if let Some(k) = found {
        objects::delete(ctx.store, &k).await?;
        x.leaf("keyPairId", k.ec2_id());
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway 512-bit key (`openssl genrsa -traditional 512`); its
    /// fingerprint as AWS documents computing it: `openssl pkcs8 -in KEY
    /// -inform PEM -outform DER -topk8 -nocrypt | openssl sha1 -c`.
    const KEY: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIBOwIBAAJBALZ6UEHrbAtB65SyIR1HFDFDyHw67Ta29Sfi6WhV0+GbCUNdKg44
Y1vBoX19D6jrQm1ffh479+Sr3ThGR53dPd0CAwEAAQJBAITvlohveca5v2YUXwt1
PMCnIOdgBnBV2UO1i1T3MeSoUqtmZA8cMCoPdV4BAwehpgwimsK7KMdiOz11cthg
sAECIQDZd0J8zGEoLkNDsKZshTLoTiVEt3hwFM6emxMLan3YhQIhANbP6o0OXWl4
pgE+0f+/UdgpIf6FMBR+0ZAd9/O4Ent5AiEAgxHKVQWqGVmo2QeDhyzQ/gr7k2sx
f/xKfHXjCKJqrzECIFk/x2bVyg/RNb+ctyl39uxFor8Z3TEWw8EKAoP7PYqZAiAk
aDTDtU8ebJNx2e/gX+f2kHhpwSaz4hoEZ54D3kM9ng==
-----END RSA PRIVATE KEY-----
";

    #[test]
    fn a_created_rsa_key_has_openssls_pkcs8_sha1_fingerprint() {
        assert_eq!(
            created_rsa_fingerprint(KEY).as_deref(),
            Some("4d:fc:d3:fd:6c:61:b9:d0:4d:86:75:40:fa:4b:56:49:20:0d:87:f1")
        );
        assert_eq!(created_rsa_fingerprint("-----BEGIN X-----\n!!\n"), None);
        assert_eq!(created_rsa_fingerprint("AAAA"), None);
    }

    /// KEY's public half as OpenSSH writes it, and its fingerprint as AWS
    /// documents computing it for imported keys: `openssl rsa -in KEY
    /// -pubout -outform DER | openssl md5 -c`.
    const KEY_PUB: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAQQC2elBB62wLQeuUsiEdRxQxQ8h8Ou02tvUn4uloVdPhmwlDXSoOOGNbwaF9fQ+o60JtX34eO/fkq904Rked3T3d";

    fn imported(public: &str) -> String {
        let k = KeyPair::new(
            "demo",
            "k",
            KeyPairSpec {
                public_key: public.into(),
                ..Default::default()
            },
        );
        fingerprint(&k)
    }

    #[test]
    fn an_imported_rsa_key_has_openssls_public_md5_fingerprint() {
        assert_eq!(
            imported(KEY_PUB),
            "80:6c:a3:bf:7e:d5:c8:4b:e6:c2:a4:fd:3e:9c:d1:99"
        );
        // A truncated blob has none rather than a wrong one.
        assert_eq!(imported_rsa_fingerprint(&[0, 0, 0, 7]), None);
    }

    /// A fresh 2048-bit key (long DER lengths) checked against the real
    /// tools: ssh-keygen writes it, openssl computes AWS's fingerprint.
    #[test]
    fn a_fresh_rsa_key_matches_openssl() {
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        let made = Command::new("ssh-keygen")
            .args(["-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen (scripts/install-deps installs it)");
        assert!(made.success());
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg("openssl rsa -in \"$1\" -pubout -outform DER 2>/dev/null | openssl md5 -c")
            .arg("sh")
            .arg(&key)
            .output()
            .expect("openssl (scripts/install-deps installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        let want = text.rsplit("= ").next().unwrap().trim();
        assert_eq!(want.len(), 47, "{text}");
        assert_eq!(imported(public.trim()), want);
    }

    #[test]
    fn der_lengths_take_the_short_and_long_forms() {
        let der = |n: usize| {
            let mut out = Vec::new();
            der_push(&mut out, 0x04, &vec![0; n]);
            out[..out.len() - n].to_vec()
        };
        assert_eq!(der(0), [0x04, 0x00]);
        assert_eq!(der(0x7f), [0x04, 0x7f]);
        assert_eq!(der(0x80), [0x04, 0x81, 0x80]);
        assert_eq!(der(0x1234), [0x04, 0x82, 0x12, 0x34]);
    }

    #[test]
    fn the_recorded_fingerprint_wins_over_the_public_keys() {
        let public =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFJ4uHWXmWgwN6MKFpsgnnGaU1rtTEBKPNu/L09gAucb";
        let mut k = KeyPair::new(
            "demo",
            "k",
            KeyPairSpec {
                public_key: public.into(),
                ..Default::default()
            },
        );
        let sha256 = parse_openssh_public_key(public)
            .unwrap()
            .sha256_fingerprint();
        assert_eq!(fingerprint(&k), sha256);
        k.metadata
            .annotations
            .insert(FINGERPRINT_ANNOTATION.into(), "4d:fc".into());
        assert_eq!(fingerprint(&k), "4d:fc");
    }
}
