//! The apiserver suites' shared pieces: the server fixture
//! (`corral_test_support::ApiServer`) on either backend, sample objects,
//! and a macro running a case on both backends.

#![allow(dead_code)]

pub use corral_test_support::ApiServer as Api;
use serde_json::{json, Value};

pub async fn etcd() -> Api {
    Api::etcd().await
}

/// An API on a real etcd whose backend quota is `bytes`.
pub async fn etcd_with_quota(bytes: u64) -> Api {
    Api::etcd_with_quota(bytes).await
}

pub async fn embedded() -> Api {
    Api::embedded().await
}

pub fn instance(name: &str, itype: &str) -> Value {
    json!({
        "kind": "Instance",
        "metadata": {"name": name},
        "spec": {"instanceType": itype, "image": "tiny", "nics": [{"network": "lan"}]}
    })
}

pub fn volume(name: &str, size: u32) -> Value {
    json!({"kind": "Volume", "metadata": {"name": name}, "spec": {"sizeGiB": size}})
}

/// Runs `$case(api)` against each backend as its own test.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::etcd().await).await;
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::embedded().await).await;
                }
            )*
        }
    };
}

/// One object of every project kind, as created in `b` by the admin.
pub fn objects() -> Vec<(&'static str, Value)> {
    vec![
        (
            "networks",
            json!({"kind": "Network", "metadata": {"name": "lan"}, "spec": {"cidr": "10.70.0.0/24"}}),
        ),
        (
            "securitygroups",
            json!({"kind": "SecurityGroup", "metadata": {"name": "web"}, "spec": {"description": "b's"}}),
        ),
        (
            "keypairs",
            json!({"kind": "KeyPair", "metadata": {"name": "admin"}, "spec": {"publicKey":
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFJ4uHWXmWgwN6MKFpsgnnGaU1rtTEBKPNu/L09gAucb b@b"}}),
        ),
        (
            "images",
            json!({"kind": "Image", "metadata": {"name": "tiny"}, "spec": {"source": {"upload": true}, "format": "qcow2"}}),
        ),
        ("volumes", volume("data", 1)),
        (
            "snapshots",
            json!({"kind": "Snapshot", "metadata": {"name": "snap"}, "spec": {"volume": "data"}}),
        ),
        ("instances", {
            let mut i = instance("web", "m1.tiny");
            i["spec"]["nics"][0]["securityGroups"] = json!(["web"]);
            i["spec"]["keyName"] = json!("admin");
            i
        }),
        (
            "addresses",
            json!({"kind": "Address", "metadata": {"name": "eip"}, "spec": {"network": "lan"}}),
        ),
        (
            "events",
            json!({"kind": "Event", "metadata": {"name": "ev"}, "spec": {
                "involvedObject": {"kind": "Instance", "name": "web"}, "reason": "Test"}}),
        ),
    ]
}
