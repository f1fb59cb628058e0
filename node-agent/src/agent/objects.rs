//! The objects bound instances name (Networks, SecurityGroups, Images,
//! KeyPairs), read once per host networking pass: a pass reads each one
//! once however many instances name it, and the domain defined right
//! after a pass is built from what it read, so defining an instance costs
//! no read the pass did not already make. A node may read these only for
//! a bound object that uses them (`?for=`), and never lists them.
//!
//! A pass starts from what the one before it read ([`Objects::after`]):
//! an object read less than `AgentOptions::object_refresh` ago is used as
//! read, an older one is read again, one no pass asks for any more is
//! dropped, and "not found" is never kept past its pass. This is
//! kubelet's TTL cache for the secrets its pods name: an idle node costs
//! the API a read per named object per refresh instead of one per pass,
//! and a change to a group's rules or members reaches the host within
//! `object_refresh` plus one pass.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_api_types::{Image, KeyPair, Network, SecurityGroup};
use serde::de::DeserializeOwned;

use super::AgentError;
use crate::api::ApiClient;

type Key = (String, String);

/// One kind's objects, by (project, name); `None`: not found. `earlier`:
/// what the pass before read, still fresh enough to use.
struct Read<T> {
    now: HashMap<Key, (Option<Arc<T>>, Instant)>,
    earlier: HashMap<Key, (Arc<T>, Instant)>,
}

impl<T> Clone for Read<T> {
    fn clone(&self) -> Self {
        Read {
            now: self.now.clone(),
            earlier: self.earlier.clone(),
        }
    }
}

impl<T> Default for Read<T> {
    fn default() -> Self {
        Read {
            now: HashMap::new(),
            earlier: HashMap::new(),
        }
    }
}

impl<T: DeserializeOwned> Read<T> {
    /// What `self` read that is younger than `max_age`, for the next pass.
    fn after(&self, max_age: Duration) -> Read<T> {
        let earlier = self
            .now
            .iter()
            .filter_map(|(k, (v, at))| {
                let v = v.clone()?;
                (at.elapsed() < max_age).then(|| (k.clone(), (v, *at)))
            })
            .collect();
        Read {
            now: HashMap::new(),
            earlier,
        }
    }

    /// `/v1/projects/{p}/{plural}/{n}`, read once, less what `trim`
    /// takes out. `for_`: the bound object that uses it
    /// (`instances/NAME`).
    async fn get(
        &mut self,
        api: &ApiClient,
        plural: &str,
        (p, n): (&str, &str),
        for_: &str,
        trim: fn(&mut T),
    ) -> Result<Option<Arc<T>>, AgentError> {
        let k = (p.to_string(), n.to_string());
        if let Some((v, _)) = self.now.get(&k) {
            return Ok(v.clone());
        }
        if let Some((v, at)) = self.earlier.remove(&k) {
            self.now.insert(k, (Some(v.clone()), at));
            return Ok(Some(v));
        }
        let v = api
            .get::<T>(&format!("/v1/projects/{p}/{plural}/{n}?for={for_}"))
            .await?
            .map(|mut v| {
                trim(&mut v);
                Arc::new(v)
            });
        self.now.insert(k, (v.clone(), Instant::now()));
        Ok(v)
    }
}

/// What one pass read. Cheap to clone (the objects are shared).
#[derive(Clone, Default)]
pub(super) struct Objects {
    networks: Read<Network>,
    groups: Read<SecurityGroup>,
    images: Read<Image>,
    keypairs: Read<KeyPair>,
}

/// A Network as the agent keeps it (the next domain is built from it):
/// without its allocation table, which the agent never reads and which
/// holds an entry per address in use; an overlay's VNI and endpoints
/// stay.
pub(super) fn trim_network(n: &mut Network) {
    if let Some(s) = n.status.as_mut() {
        s.allocations.clear();
        s.bridges.clear();
        s.conditions.clear();
    }
}

impl Objects {
    /// Uses `n` as network `(p, name)`, read now (a watch brought it).
    pub(super) fn put_network(&mut self, p: &str, name: &str, n: Arc<Network>) {
        let k = (p.to_string(), name.to_string());
        self.networks.now.remove(&k);
        self.networks.earlier.insert(k, (n, Instant::now()));
    }

    /// A pass's start: what `self` read less than `max_age` ago.
    pub(super) fn after(&self, max_age: Duration) -> Objects {
        Objects {
            networks: self.networks.after(max_age),
            groups: self.groups.after(max_age),
            images: self.images.after(max_age),
            keypairs: self.keypairs.after(max_age),
        }
    }

    pub(super) async fn network(
        &mut self,
        api: &ApiClient,
        p: &str,
        n: &str,
        for_: &str,
    ) -> Result<Option<Arc<Network>>, AgentError> {
        self.networks
            .get(api, "networks", (p, n), for_, trim_network)
            .await
    }

    pub(super) async fn group(
        &mut self,
        api: &ApiClient,
        p: &str,
        n: &str,
        for_: &str,
    ) -> Result<Option<Arc<SecurityGroup>>, AgentError> {
        self.groups
            .get(api, "securitygroups", (p, n), for_, |_| {})
            .await
    }

    pub(super) async fn image(
        &mut self,
        api: &ApiClient,
        p: &str,
        n: &str,
        for_: &str,
    ) -> Result<Option<Arc<Image>>, AgentError> {
        self.images.get(api, "images", (p, n), for_, |_| {}).await
    }

    pub(super) async fn keypair(
        &mut self,
        api: &ApiClient,
        p: &str,
        n: &str,
        for_: &str,
    ) -> Result<Option<Arc<KeyPair>>, AgentError> {
        self.keypairs
            .get(api, "keypairs", (p, n), for_, |_| {})
            .await
    }
}
