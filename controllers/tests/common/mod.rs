//! The harness the controller suites share: a real store (embedded redb
//! or a private etcd) with the whole controller set running on it.
#![allow(dead_code)] // each suite uses its own subset

use std::sync::Arc;
use std::time::Duration;

use corral_api_types::seeded_instance_types;
use corral_controllers::{ControllerManager, ControllerOptions};
use corral_store::{EmbeddedStore, EtcdStore, ResourceStore, Store};
use corral_test_support::EtcdServer;
use tokio::sync::watch;

pub struct Env {
    pub store: ResourceStore,
    stop: watch::Sender<bool>,
    _etcd: Option<EtcdServer>,
    _dir: Option<tempfile::TempDir>,
}

async fn env_on(
    raw: Arc<dyn Store>,
    etcd: Option<EtcdServer>,
    dir: Option<tempfile::TempDir>,
) -> Env {
    let store = ResourceStore::new(raw);
    for t in seeded_instance_types() {
        store.create(&t).await.unwrap();
    }
    let manager = Arc::new(ControllerManager::new(
        store.clone(),
        ControllerOptions {
            node_grace: Duration::from_secs(2),
            ..Default::default()
        },
    ));
    let (stop, rx) = watch::channel(false);
    tokio::spawn(manager.run(rx));
    Env {
        store,
        stop,
        _etcd: etcd,
        _dir: dir,
    }
}

pub async fn embedded() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let raw = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
    env_on(Arc::new(raw), None, Some(dir)).await
}

pub async fn etcd() -> Env {
    let server = EtcdServer::start().await.expect("start a real etcd");
    let raw = EtcdStore::connect(&[server.endpoint()]).await.unwrap();
    env_on(Arc::new(raw), Some(server), None).await
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub async fn until<F, Fut>(what: &str, secs: u64, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {secs}s waiting for {what}");
}

/// Read-modify-write of `project/name`, retried when a controller wrote it
/// first.
pub async fn mutate<K: corral_api_types::Resource>(
    store: &ResourceStore,
    project: &str,
    name: &str,
    f: impl Fn(&mut K),
) {
    loop {
        let mut obj: K = store.get(project, name).await.unwrap().unwrap();
        f(&mut obj);
        match store.update(&obj).await {
            Ok(_) => return,
            Err(corral_store::StoreError::Conflict { .. }) => continue,
            Err(e) => panic!("updating {project}/{name}: {e}"),
        }
    }
}
