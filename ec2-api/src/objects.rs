//! Reads and writes of resources on behalf of a caller, through the same
//! write path as the native API (`corral_registry`: defaults, validation,
//! generation bumps, finalizers, quotas), plus what the façade adds: EC2
//! ids, EC2 names and ClientToken idempotency — all kept on the objects
//! themselves.

use std::collections::BTreeMap;

use corral_api_types::ec2::{
    resource_id, CLIENT_TOKEN_ANNOTATION, NAME_ANNOTATION, REQUEST_HASH_ANNOTATION,
};
use corral_api_types::kinds::project::QuotaResource;
use corral_api_types::validate::is_dns_label;
use corral_api_types::{
    Address, Defaults, Image, Instance, KeyPair, Network, ObjectMeta, Resource, SecurityGroup,
    Snapshot, Validate, ValidateUpdate, Volume,
};
use corral_registry::{quota, Registry, RegistryError};
use corral_store::{ListOptions, ResourceStore};
use sha2::{Digest, Sha256};

use crate::error::{Ec2Error, Result};
use crate::query::Params;

/// Kinds with EC2-style `spec.tags`.
pub trait Tagged: Resource + Validate + ValidateUpdate + Defaults {
    fn tags(&self) -> &BTreeMap<String, String>;
    fn tags_mut(&mut self) -> &mut BTreeMap<String, String>;
    /// The EC2 id of this object.
    fn ec2_id(&self) -> String {
        resource_id(Self::KIND, &self.meta().uid).unwrap_or_default()
    }
}

macro_rules! tagged {
    ($($k:ty),*) => {$(
        impl Tagged for $k {
            fn tags(&self) -> &BTreeMap<String, String> { &self.spec.tags }
            fn tags_mut(&mut self) -> &mut BTreeMap<String, String> { &mut self.spec.tags }
        }
    )*};
}
tagged!(
    Instance,
    Volume,
    Snapshot,
    SecurityGroup,
    KeyPair,
    Address,
    Network
);

impl Tagged for Image {
    fn tags(&self) -> &BTreeMap<String, String> {
        &self.spec.tags
    }
    fn tags_mut(&mut self) -> &mut BTreeMap<String, String> {
        &mut self.spec.tags
    }
    fn ec2_id(&self) -> String {
        corral_api_types::ec2::image_id(self.spec.image_type, &self.metadata.uid)
    }
}

/// The EC2 name of an object: its annotation, else its resource name.
pub fn ec2_name(meta: &ObjectMeta) -> &str {
    meta.annotations
        .get(NAME_ANNOTATION)
        .map(String::as_str)
        .unwrap_or(&meta.name)
}

/// Names a new object after its EC2 name when that is a DNS label, else
/// after its id (keeping the EC2 name in an annotation).
pub fn place_name(meta: &mut ObjectMeta, ec2_name: &str, id: &str) {
    if is_dns_label(ec2_name) {
        meta.name = ec2_name.to_string();
    } else {
        meta.name = id.to_string();
        meta.annotations
            .insert(NAME_ANNOTATION.to_string(), ec2_name.to_string());
    }
}

/// A fresh uid, or (with a ClientToken) one derived from the token, so a
/// concurrent retry of the same request collides on the object's name.
pub fn new_uid(project: &str, kind: &str, token: Option<&str>, index: usize) -> String {
    match token {
        None => uuid::Uuid::new_v4().to_string(),
        Some(t) => {
            let h = Sha256::digest(format!("{project}/{kind}/{t}/{index}").as_bytes());
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&h[..16]);
            uuid::Builder::from_random_bytes(bytes)
                .into_uuid()
                .to_string()
        }
    }
}

/// Every object of a kind in a project (a store scan: the known cost of
/// lookups by EC2 id until an index exists).
pub async fn list_all<K: Resource>(store: &ResourceStore, project: &str) -> Result<Vec<K>> {
    let project = match K::SCOPE {
        corral_api_types::Scope::Project => Some(project),
        corral_api_types::Scope::Cluster => None,
    };
    Ok(store
        .list::<K>(project, ListOptions::default())
        .await?
        .items)
}

fn invalid(kind: &str, errors: &corral_api_types::FieldErrors) -> Ec2Error {
    Ec2Error::invalid_value(format!("invalid {kind}: {errors}"))
}

impl From<RegistryError> for Ec2Error {
    /// A registry refusal in EC2's words. Writes here are read-modify-
    /// writes of what the action just looked at, so an object gone or
    /// changed meanwhile is a state to retry from.
    fn from(e: RegistryError) -> Ec2Error {
        match e {
            RegistryError::Invalid { kind, errors, .. } => invalid(kind, &errors),
            RegistryError::NotFound { name, .. } => {
                Ec2Error::client("IncorrectState", format!("{name} is gone"))
            }
            RegistryError::Stale { .. } => Ec2Error::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "RequestLimitExceeded",
                "The resource was modified concurrently; retry the request.",
            ),
            RegistryError::Contended { .. } => Ec2Error::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "RequestLimitExceeded",
                "Too many concurrent changes to the resource; retry the request.",
            ),
            RegistryError::BadResourceVersion(e) => Ec2Error::invalid_value(e.to_string()),
            RegistryError::Quota(e) => quota_error(e),
            RegistryError::Store(e) => e.into(),
        }
    }
}

/// Defaults, validates, charges the project's quota and creates.
pub async fn create<K: Resource + Validate + ValidateUpdate + Defaults>(
    store: &ResourceStore,
    obj: K,
) -> Result<K> {
    Registry::new(store.clone())
        .create(obj, false, |_| Ok::<(), Ec2Error>(()))
        .await
}

/// A quota refusal in EC2's words: the codes AWS uses for its limits
/// (memory has no AWS quota of its own; it counts as the instance limit).
pub fn quota_error(e: quota::QuotaError) -> Ec2Error {
    match e {
        quota::QuotaError::Exceeded {
            ref project,
            ref exceeded,
            ..
        } => {
            let code = match exceeded.resource {
                QuotaResource::Instances | QuotaResource::MemoryMiB => "InstanceLimitExceeded",
                QuotaResource::Vcpus => "VcpuLimitExceeded",
                QuotaResource::Volumes | QuotaResource::VolumeGiB => "VolumeLimitExceeded",
                QuotaResource::Addresses => "AddressLimitExceeded",
                QuotaResource::SecurityGroups => "SecurityGroupLimitExceeded",
                QuotaResource::Networks => "VpcLimitExceeded",
                QuotaResource::Snapshots => "SnapshotLimitExceeded",
                QuotaResource::KeyPairs | QuotaResource::Images => "ResourceLimitExceeded",
            };
            Ec2Error::client(
                code,
                format!(
                    "You have exceeded the {} quota of project {project}: requested {}, used {}, limit {}.",
                    exceeded.resource, exceeded.requested, exceeded.used, exceeded.limit
                ),
            )
        }
        quota::QuotaError::Store(e) => e.into(),
    }
}

/// Read-modify-write with the API server's rules; retried on conflicts.
/// `f` may refuse the change (its error is returned as is).
pub async fn update<K, F>(store: &ResourceStore, project: &str, name: &str, mut f: F) -> Result<K>
where
    K: Resource + Validate + ValidateUpdate + Defaults,
    F: FnMut(&mut K) -> Result<()>,
{
    Registry::new(store.clone())
        .update(project, name, None, false, |current: &K| {
            let mut new = current.clone();
            f(&mut new)?;
            Ok(new)
        })
        .await
}

/// Deletes like the native API: objects with finalizers are only marked.
/// Pinned to the revision the caller looked at (a changed object is
/// retried by the client); an object already gone is deleted.
pub async fn delete<K>(store: &ResourceStore, obj: &K) -> Result<()>
where
    K: Resource + Validate + ValidateUpdate + Defaults,
{
    let meta = obj.meta();
    match Registry::<K>::new(store.clone())
        .delete(
            &meta.project,
            &meta.name,
            Some(&meta.resource_version),
            false,
        )
        .await
    {
        Ok(_) | Err(RegistryError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The ClientToken of a request, checked (at most 64 ASCII characters).
pub fn client_token(params: &Params) -> Result<Option<String>> {
    match params.get_nonempty("ClientToken") {
        None => Ok(None),
        Some(t) if t.len() <= 64 && t.bytes().all(|b| b.is_ascii_graphic() || b == b' ') => {
            Ok(Some(t.to_string()))
        }
        Some(_) => Err(Ec2Error::invalid_value(
            "ClientToken must be at most 64 printable ASCII characters",
        )),
    }
}

fn request_hash(params: &Params) -> String {
    hex::encode(Sha256::digest(
        params.canonical_for_idempotency().as_bytes(),
    ))
}

/// Records the token and the request's hash on a new object.
pub fn stamp_token(meta: &mut ObjectMeta, token: Option<&str>, params: &Params) {
    if let Some(t) = token {
        meta.annotations
            .insert(CLIENT_TOKEN_ANNOTATION.into(), t.to_string());
        meta.annotations
            .insert(REQUEST_HASH_ANNOTATION.into(), request_hash(params));
    }
}

/// Objects an earlier request with this token created: `Ok(None)` when
/// there are none, IdempotentParameterMismatch when the parameters differ.
pub fn earlier<K: Resource>(
    objects: &[K],
    token: Option<&str>,
    params: &Params,
) -> Result<Option<Vec<K>>> {
    let Some(token) = token else { return Ok(None) };
    let found: Vec<K> = objects
        .iter()
        .filter(|o| {
            o.meta()
                .annotations
                .get(CLIENT_TOKEN_ANNOTATION)
                .map(String::as_str)
                == Some(token)
        })
        .cloned()
        .collect();
    if found.is_empty() {
        return Ok(None);
    }
    let hash = request_hash(params);
    if found
        .iter()
        .any(|o| o.meta().annotations.get(REQUEST_HASH_ANNOTATION) != Some(&hash))
    {
        return Err(Ec2Error::idempotent_mismatch());
    }
    Ok(Some(found))
}

/// Tags from `TagSpecification.N` for one resource type.
pub fn tag_specs(params: &Params, resource_type: &str) -> Result<BTreeMap<String, String>> {
    let mut tags = BTreeMap::new();
    for spec in params.structs("TagSpecification")? {
        let rt = spec.get("ResourceType").unwrap_or_default();
        if rt != resource_type {
            continue;
        }
        for t in spec.structs("Tag")? {
            let key = t.required("Key")?.to_string();
            tags.insert(key, t.get("Value").unwrap_or_default().to_string());
        }
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tokens() {
        let mut m = ObjectMeta::default();
        place_name(&mut m, "web", "sg-0123456789abcdef0");
        assert_eq!(m.name, "web");
        assert_eq!(ec2_name(&m), "web");
        let mut m = ObjectMeta::default();
        place_name(&mut m, "Web Servers", "sg-0123456789abcdef0");
        assert_eq!(m.name, "sg-0123456789abcdef0");
        assert_eq!(ec2_name(&m), "Web Servers");
        assert_eq!(
            new_uid("p", "Instance", Some("t"), 0),
            new_uid("p", "Instance", Some("t"), 0)
        );
        assert_ne!(
            new_uid("p", "Instance", Some("t"), 0),
            new_uid("q", "Instance", Some("t"), 0)
        );
        assert_ne!(
            new_uid("p", "Instance", None, 0),
            new_uid("p", "Instance", None, 0)
        );
        assert!(client_token(&Params::parse(b"ClientToken=x")).is_ok());
        let long = format!("ClientToken={}", "x".repeat(65));
        assert!(client_token(&Params::parse(long.as_bytes())).is_err());
        let specs = Params::parse(b"TagSpecification.1.ResourceType=instance&TagSpecification.1.Tag.1.Key=Name&TagSpecification.1.Tag.1.Value=web&TagSpecification.2.ResourceType=volume&TagSpecification.2.Tag.1.Key=x");
        assert_eq!(
            tag_specs(&specs, "instance").unwrap().get("Name").unwrap(),
            "web"
        );
        assert_eq!(tag_specs(&specs, "volume").unwrap().len(), 1);
    }
}
