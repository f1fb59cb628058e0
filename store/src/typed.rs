//! Typed access to resources over any [`Store`]: keys, JSON encoding and
//! `resourceVersion`.
//!
//! Layout: `/corral/<plural>/<project>/<name>`; cluster-scoped kinds use
//! `_` as their project. Objects are stored as JSON without
//! `resourceVersion`, which is filled in from the key's `mod_revision` on
//! every read, so a write that changes nothing else writes nothing.
//!
//! This layer keeps no rules about fields beyond the server-owned ones it
//! must set on create (`uid`, `creationTimestamp`); generation bumps,
//! finalizers and admission belong to the API server.

use std::marker::PhantomData;
use std::sync::Arc;

use corral_api_types::{Resource, Scope, CLUSTER_PROJECT};

use crate::contract::{KeyValue, ListOptions, Result, Store, StoreError, WatchEvent, WatchStream};
use crate::secrets::{SecretKeys, SecretsError};

pub const ROOT: &str = "/corral/";

/// Key of an instance's console text (not a resource: raw bytes, the
/// newest 64 KiB, written by its node's agent through the API).
pub fn console_key(project: &str, name: &str) -> String {
    format!("{ROOT}consoles/{project}/{name}")
}

/// Key of one object.
pub fn object_key<K: Resource>(project: &str, name: &str) -> String {
    format!(
        "{ROOT}{}/{}/{name}",
        K::PLURAL,
        project_segment::<K>(project)
    )
}

/// Prefix of a kind's objects: in one project, or (`None`) in all.
pub fn kind_prefix<K: Resource>(project: Option<&str>) -> String {
    match (K::SCOPE, project) {
        (Scope::Cluster, _) => format!("{ROOT}{}/{CLUSTER_PROJECT}/", K::PLURAL),
        (Scope::Project, Some(p)) => format!("{ROOT}{}/{p}/", K::PLURAL),
        (Scope::Project, None) => format!("{ROOT}{}/", K::PLURAL),
    }
}

fn project_segment<K: Resource>(project: &str) -> &str {
    match K::SCOPE {
        Scope::Cluster => CLUSTER_PROJECT,
        Scope::Project => project,
    }
}

/// Parses a `resourceVersion` as the store revision it stands for.
pub fn parse_resource_version(rv: &str) -> Result<i64> {
    match corral_api_types::ResourceVersion::parse(rv) {
        Ok(Some(v)) => Ok(v.get()),
        Ok(None) => Err(StoreError::InvalidArgument(
            "resourceVersion is empty".into(),
        )),
        Err(e) => Err(StoreError::InvalidArgument(e.to_string())),
    }
}

/// The stored form: the object's JSON in field order (`apiVersion`, `kind`,
/// `metadata`, `spec`, `status`) without `resourceVersion` (which is empty,
/// so not serialized). Deterministic, so unchanged objects encode to
/// unchanged bytes and the store skips the write.
/// Secret fields are sealed (with `secrets`, keyed to `key`).
fn encode<K: Resource>(obj: &K, key: &str, secrets: Option<&SecretKeys>) -> Result<Vec<u8>> {
    let seal = K::HAS_SECRETS && secrets.is_some();
    if obj.meta().resource_version.is_empty() && !seal {
        return serde_json::to_vec(obj).map_err(StoreError::Encode);
    }
    let mut copy = obj.clone();
    copy.meta_mut().resource_version.clear();
    if let (true, Some(keys)) = (seal, secrets) {
        for field in copy.secrets_mut() {
            *field = keys.seal(key, field);
        }
    }
    serde_json::to_vec(&copy).map_err(StoreError::Encode)
}

fn decode<K: Resource>(kv: &KeyValue, secrets: Option<&SecretKeys>) -> Result<K> {
    let mut obj: K = serde_json::from_slice(&kv.value).map_err(|source| StoreError::Corrupt {
        key: kv.key.clone(),
        source,
    })?;
    obj.meta_mut().resource_version = kv.mod_revision.to_string();
    if K::HAS_SECRETS {
        for field in obj.secrets_mut() {
            let opened = match secrets {
                Some(keys) => keys.open(&kv.key, field),
                None if SecretKeys::sealed_with(field).is_some() => Err(SecretsError::NoKeys),
                None => continue,
            };
            *field = opened.map_err(|source| StoreError::Secret {
                key: kv.key.clone(),
                source,
            })?;
        }
    }
    Ok(obj)
}

/// A page of typed objects.
#[derive(Debug, Clone)]
pub struct ObjectList<K> {
    pub items: Vec<K>,
    /// The revision the page was read at: watch from here to follow it.
    pub resource_version: i64,
    pub continue_token: Option<String>,
}

/// A change to one object.
#[derive(Debug, Clone)]
pub enum ObjectEvent<K> {
    Added(K),
    /// The new state, and the state before this write (when the backend
    /// still had it: always, unless decoding the old bytes failed).
    Modified(K, Option<Box<K>>),
    /// The object as it was just before deletion, with the deletion's
    /// revision as its resourceVersion.
    Deleted(K),
}

impl<K: Resource> ObjectEvent<K> {
    pub fn object(&self) -> &K {
        match self {
            ObjectEvent::Added(o) | ObjectEvent::Modified(o, _) | ObjectEvent::Deleted(o) => o,
        }
    }
}

/// Typed watch over one kind.
pub struct ObjectWatch<K> {
    inner: WatchStream,
    secrets: Option<Arc<SecretKeys>>,
    _kind: PhantomData<fn() -> K>,
}

impl<K: Resource> ObjectWatch<K> {
    pub async fn next(&mut self) -> Option<Result<ObjectEvent<K>>> {
        loop {
            let event = match self.inner.next().await? {
                Ok(e) => e,
                Err(e) => return Some(Err(e)),
            };
            let converted = match event {
                WatchEvent::Put { kv, prev } => {
                    let created = kv.create_revision == kv.mod_revision;
                    let secrets = self.secrets.as_deref();
                    decode::<K>(&kv, secrets).map(|o| {
                        if created {
                            ObjectEvent::Added(o)
                        } else {
                            let prev = prev
                                .and_then(|p| decode::<K>(&p, secrets).ok())
                                .map(Box::new);
                            ObjectEvent::Modified(o, prev)
                        }
                    })
                }
                WatchEvent::Delete { revision, prev, .. } => {
                    // etcd always gives prev_kv when asked; without it there
                    // is nothing to tell the caller about.
                    let Some(prev) = prev else { continue };
                    decode::<K>(&prev, self.secrets.as_deref()).map(|mut o| {
                        o.meta_mut().resource_version = revision.to_string();
                        ObjectEvent::Deleted(o)
                    })
                }
            };
            return Some(converted);
        }
    }
}

/// Typed resources over a [`Store`] backend.
#[derive(Clone)]
pub struct ResourceStore {
    kv: Arc<dyn Store>,
    secrets: Option<Arc<SecretKeys>>,
}

impl ResourceStore {
    /// Secret fields are written as they are (tests, tools).
    pub fn new(kv: Arc<dyn Store>) -> ResourceStore {
        ResourceStore { kv, secrets: None }
    }

    /// Secret fields are sealed with `keys` (`crate::secrets`).
    pub fn with_secrets(kv: Arc<dyn Store>, keys: Arc<SecretKeys>) -> ResourceStore {
        ResourceStore {
            kv,
            secrets: Some(keys),
        }
    }

    /// `bytes` if the backend keeps a value that large.
    fn fits(&self, key: &str, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let limit = self.kv.max_value_bytes();
        if bytes.len() > limit {
            return Err(StoreError::TooLarge {
                key: key.to_string(),
                size: bytes.len(),
                limit,
            });
        }
        Ok(bytes)
    }

    /// The keys sealing secret fields, if any.
    pub fn secrets(&self) -> Option<&Arc<SecretKeys>> {
        self.secrets.as_ref()
    }

    /// The raw store underneath.
    pub fn raw(&self) -> &Arc<dyn Store> {
        &self.kv
    }

    /// Creates `obj`, setting `uid` (if empty) and `creationTimestamp`.
    pub async fn create<K: Resource>(&self, obj: &K) -> Result<K> {
        let mut obj = obj.clone();
        let meta = obj.meta_mut();
        if meta.uid.is_empty() {
            meta.uid = uuid::Uuid::new_v4().to_string();
        }
        meta.creation_timestamp = Some(chrono::Utc::now());
        meta.resource_version.clear();
        if meta.generation == 0 {
            meta.generation = 1;
        }
        let key = object_key::<K>(&meta.project, &meta.name);
        let bytes = self.fits(&key, encode(&obj, &key, self.secrets.as_deref())?)?;
        let rev = self.kv.create(&key, bytes).await?;
        obj.meta_mut().resource_version = rev.to_string();
        Ok(obj)
    }

    pub async fn get<K: Resource>(&self, project: &str, name: &str) -> Result<Option<K>> {
        let key = object_key::<K>(project, name);
        self.kv
            .get(&key)
            .await?
            .map(|kv| decode(&kv, self.secrets.as_deref()))
            .transpose()
    }

    /// Replaces the object if its `resourceVersion` is still current.
    /// Returns it with its new `resourceVersion` (unchanged if nothing
    /// differed).
    pub async fn update<K: Resource>(&self, obj: &K) -> Result<K> {
        let meta = obj.meta();
        let expected = parse_resource_version(&meta.resource_version)?;
        let key = object_key::<K>(&meta.project, &meta.name);
        let bytes = self.fits(&key, encode(obj, &key, self.secrets.as_deref())?)?;
        let outcome = self.kv.update(&key, bytes, expected).await?;
        let mut obj = obj.clone();
        obj.meta_mut().resource_version = outcome.revision.to_string();
        Ok(obj)
    }

    /// Deletes the object (only at `resource_version`, if given) and
    /// returns it as it was.
    pub async fn delete<K: Resource>(
        &self,
        project: &str,
        name: &str,
        resource_version: Option<&str>,
    ) -> Result<K> {
        let key = object_key::<K>(project, name);
        let expected = resource_version.map(parse_resource_version).transpose()?;
        let (kv, revision) = self.kv.delete(&key, expected).await?;
        let mut obj: K = decode(&kv, self.secrets.as_deref())?;
        obj.meta_mut().resource_version = revision.to_string();
        Ok(obj)
    }

    pub async fn list<K: Resource>(
        &self,
        project: Option<&str>,
        options: ListOptions,
    ) -> Result<ObjectList<K>> {
        let page = self.kv.list(&kind_prefix::<K>(project), options).await?;
        let secrets = self.secrets.as_deref();
        let items = page
            .items
            .iter()
            .map(|kv| decode(kv, secrets))
            .collect::<Result<Vec<K>>>()?;
        Ok(ObjectList {
            items,
            resource_version: page.revision,
            continue_token: page.continue_token,
        })
    }

    /// Every change after `after_revision` (a list's `resource_version`).
    pub async fn watch<K: Resource>(
        &self,
        project: Option<&str>,
        after_revision: i64,
    ) -> Result<ObjectWatch<K>> {
        let inner = self
            .kv
            .watch(&kind_prefix::<K>(project), after_revision)
            .await?;
        Ok(ObjectWatch {
            inner,
            secrets: self.secrets.clone(),
            _kind: PhantomData,
        })
    }
}
