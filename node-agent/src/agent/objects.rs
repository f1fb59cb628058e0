//! The objects bound instances name (Networks, SecurityGroups, Images,
//! KeyPairs), read once per host networking pass: a pass reads each one
//! once however many instances name it, and the domain defined right
//! after a pass is built from what it read, so defining an instance costs
//! no read the pass did not already make. A node may read these only for
//! a bound object that uses them (`?for=`), and never lists them.

use std::collections::HashMap;
use std::sync::Arc;

use corral_api_types::{Image, KeyPair, Network, SecurityGroup};
use serde::de::DeserializeOwned;

use super::AgentError;
use crate::api::ApiClient;

/// One kind's objects, by (project, name); `None`: not found.
#[derive(Clone)]
struct Read<T>(HashMap<(String, String), Option<Arc<T>>>);

impl<T> Default for Read<T> {
    fn default() -> Self {
        Read(HashMap::new())
    }
}

impl<T: DeserializeOwned> Read<T> {
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
        if let Some(v) = self.0.get(&k) {
            return Ok(v.clone());
        }
        let v = api
            .get::<T>(&format!("/v1/projects/{p}/{plural}/{n}?for={for_}"))
            .await?
            .map(|mut v| {
                trim(&mut v);
                Arc::new(v)
            });
        self.0.insert(k, v.clone());
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

impl Objects {
    pub(super) async fn network(
        &mut self,
        api: &ApiClient,
        p: &str,
        n: &str,
        for_: &str,
    ) -> Result<Option<Arc<Network>>, AgentError> {
        // Kept after the pass (the next domain is built from it): without
        // its allocation table, which the agent never reads and which
        // holds an entry per address in use.
        let trim = |n: &mut Network| n.status = None;
        self.networks.get(api, "networks", (p, n), for_, trim).await
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
