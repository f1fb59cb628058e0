//! The key pair controller: records each KeyPair's fingerprint and EC2 id
//! in its status, so `corral get` and the EC2 façade show the same thing.

use std::sync::Arc;

use async_trait::async_trait;
use corral_api_types::kinds::keypair::parse_openssh_public_key;
use corral_api_types::{ec2, KeyPair, KeyPairStatus};
use corral_runtime::status::update_with_retry;
use corral_runtime::{Action, ObjectRef, ReconcileError, Reconciler};
use corral_store::ResourceStore;

pub struct KeyPairController {
    store: ResourceStore,
}

impl KeyPairController {
    pub fn new(store: ResourceStore) -> KeyPairController {
        KeyPairController { store }
    }
}

/// The status a key pair should have.
pub fn desired_status(k: &KeyPair) -> KeyPairStatus {
    KeyPairStatus {
        fingerprint: parse_openssh_public_key(&k.spec.public_key)
            .ok()
            .map(|p| p.sha256_fingerprint()),
        ec2_id: ec2::resource_id("KeyPair", &k.metadata.uid),
    }
}

#[async_trait]
impl Reconciler<KeyPair> for KeyPairController {
    async fn reconcile(
        &self,
        key: &ObjectRef,
        object: Option<Arc<KeyPair>>,
    ) -> Result<Action, ReconcileError> {
        let Some(k) = object else {
            return Ok(Action::AwaitChange);
        };
        let want = desired_status(&k);
        if k.status.as_ref() == Some(&want) {
            return Ok(Action::AwaitChange);
        }
        update_with_retry::<KeyPair, _>(&self.store, &key.project, &key.name, |k| {
            let want = desired_status(k);
            if k.status.as_ref() == Some(&want) {
                return false;
            }
            k.status = Some(want);
            true
        })
        .await?;
        Ok(Action::AwaitChange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_api_types::{KeyPairSpec, Resource};

    #[test]
    fn fingerprint_is_openssh_sha256_of_the_blob() {
        // `ssh-keygen -lf` on this key prints
        // SHA256:tOCELBY1lqU41OSQOFH7G3jrNMS6g/usnVMuGYhGNv4; EC2 shows
        // the same digest with base64 padding.
        let mut k = KeyPair::new(
            "p",
            "k",
            KeyPairSpec {
                public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFJ4uHWXmWgwN6MKFpsgnnGaU1rtTEBKPNu/L09gAucb admin@demo".into(),
                ..Default::default()
            },
        );
        k.metadata.uid = "u-1".into();
        let s = desired_status(&k);
        assert_eq!(s.fingerprint.as_deref(), Some(EXPECTED));
        assert!(s.ec2_id.unwrap().starts_with("key-"));
    }

    const EXPECTED: &str = "tOCELBY1lqU41OSQOFH7G3jrNMS6g/usnVMuGYhGNv4=";
}
