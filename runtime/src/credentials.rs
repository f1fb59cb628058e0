//! The credentials both front doors authenticate against — users, API
//! tokens, EC2 access keys — held current by watches, so that deleting a
//! user, a token or a key (or disabling a user) stops its requests on every
//! server as soon as that server's watch delivers the change, instead of
//! after a cache period.
//!
//! Invariants:
//! 1. An answer from memory comes from the reflectors' copies, which follow
//!    the store in order; anything they do not hold (a credential made a
//!    moment ago, possibly on another server) is read from the store, and
//!    a miss is never remembered.
//! 2. A credential this process deleted is read from the store, not from
//!    memory, until its watch has certainly caught up ([`GONE_FOR`]):
//!    a revocation answered to a client holds for that client's very next
//!    request (read-your-writes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_api_types::auth::{AccessKey, ApiToken, User};
use corral_store::{ResourceStore, StoreError};

use crate::reflector::{Cache, ObjectRef, Reflector};

/// How long a local deletion makes lookups of that name go to the store.
pub const GONE_FOR: Duration = Duration::from_secs(30);

/// Watched copies of every User, ApiToken and AccessKey.
pub struct Credentials {
    store: ResourceStore,
    users: Cache<User>,
    tokens: Cache<ApiToken>,
    keys: Cache<AccessKey>,
    /// Names (of any of the three kinds) deleted here, and when.
    gone: Mutex<HashMap<String, Instant>>,
}

impl Credentials {
    /// Starts the three reflectors (needs a Tokio runtime).
    pub fn spawn(store: ResourceStore) -> Arc<Credentials> {
        Arc::new(Credentials {
            users: Reflector::new(store.clone()).spawn(),
            tokens: Reflector::new(store.clone()).spawn(),
            keys: Reflector::new(store.clone()).spawn(),
            store,
            gone: Mutex::new(HashMap::new()),
        })
    }

    /// Records that this process deleted `name` (a token hash, a key name
    /// or a user name); see invariant 2.
    pub fn forget(&self, name: &str) {
        let mut gone = self.gone.lock().expect("credentials");
        gone.retain(|_, at| at.elapsed() < GONE_FOR);
        gone.insert(name.to_string(), Instant::now());
    }

    fn recently_gone(&self, name: &str) -> bool {
        self.gone
            .lock()
            .expect("credentials")
            .get(name)
            .is_some_and(|at| at.elapsed() < GONE_FOR)
    }

    fn cached<K: corral_api_types::Resource>(
        &self,
        cache: &Cache<K>,
        name: &str,
    ) -> Option<Arc<K>> {
        if self.recently_gone(name) {
            return None;
        }
        cache.get(&ObjectRef::new("", name))
    }

    async fn user(&self, name: &str) -> Result<Option<Arc<User>>, StoreError> {
        let user = match self.cached(&self.users, name) {
            Some(u) => Some(u),
            None => self.store.get::<User>("", name).await?.map(Arc::new),
        };
        Ok(user.filter(|u| !u.spec.disabled))
    }

    /// The enabled user holding the API token whose SHA-256 is `hash`.
    pub async fn token_user(&self, hash: &str) -> Result<Option<Arc<User>>, StoreError> {
        let token = match self.cached(&self.tokens, hash) {
            Some(t) => t,
            None => match self.store.get::<ApiToken>("", hash).await? {
                Some(t) => Arc::new(t),
                None => return Ok(None),
            },
        };
        self.user(&token.spec.user).await
    }

    /// The enabled access key stored as `name` and its enabled user.
    pub async fn access_key(
        &self,
        name: &str,
    ) -> Result<Option<(Arc<AccessKey>, Arc<User>)>, StoreError> {
        let key = match self.cached(&self.keys, name) {
            Some(k) => k,
            None => match self.store.get::<AccessKey>("", name).await? {
                Some(k) => Arc::new(k),
                None => return Ok(None),
            },
        };
        if key.spec.disabled {
            return Ok(None);
        }
        Ok(self.user(&key.spec.user).await?.map(|u| (key, u)))
    }
}
