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

/// OpenSSH's SHA-256 fingerprint (base64), as EC2 gives for ED25519 keys.
pub fn fingerprint(public_key: &str) -> String {
    match parse_openssh_public_key(public_key) {
        Ok(k) => k.sha256_fingerprint(),
        Err(_) => String::new(),
    }
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

async fn store_key(ctx: &Ctx<'_>, name: &str, public_key: String) -> Result<KeyPair> {
    let tags = tag_specs(ctx.params, "key-pair")?;
    let uid = new_uid(ctx.project(), KeyPair::KIND, None, 0);
    let id = resource_id(KeyPair::KIND, &uid).unwrap_or_default();
    let mut k = KeyPair::new(ctx.project(), "", KeyPairSpec { public_key, tags });
    k.metadata.uid = uid;
    place_name(&mut k.metadata, name, &id);
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
        .leaf("keyFingerprint", fingerprint(&k.spec.public_key));
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
    let k = store_key(ctx, &name, public).await?;
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
    let k = store_key(ctx, &name, public).await?;
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
                    "fingerprint" => one(fingerprint(&k.spec.public_key)),
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
