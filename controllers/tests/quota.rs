//! The quota controller with the whole controller set on a real store:
//! usage follows what exists — creations charged at admission are kept,
//! deletions are released — without anyone calling it by hand.

use std::sync::Arc;
use std::time::Duration;

use corral_api_types::{
    seeded_instance_types, Instance, InstanceSpec, Project, ProjectResources, ProjectSpec,
    Resource, Volume, VolumeSpec,
};
use corral_controllers::{ControllerManager, ControllerOptions};
use corral_registry::quota;
use corral_store::{EmbeddedStore, ResourceStore};
use tokio::sync::watch;

async fn usage(store: &ResourceStore) -> ProjectResources {
    let p: Project = store.get("", "q").await.unwrap().unwrap();
    p.status.unwrap_or_default().usage
}

async fn eventually(store: &ResourceStore, what: &str, f: impl Fn(&ProjectResources) -> bool) {
    for _ in 0..200 {
        if f(&usage(store).await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: usage is {:?}", usage(store).await);
}

/// Admission's write path, as the API server and the EC2 façade run it.
async fn admit<K: Resource>(store: &ResourceStore, obj: K) -> Result<K, quota::QuotaError> {
    let charge = quota::charge(store, &obj, None, false).await?;
    let created = store.create(&obj).await?;
    if let Some(c) = charge {
        quota::confirm(store, &c).await;
    }
    Ok(created)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_follows_creations_and_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let store = ResourceStore::new(Arc::new(
        EmbeddedStore::open(&dir.path().join("s.redb")).unwrap(),
    ));
    for t in seeded_instance_types() {
        store.create(&t).await.unwrap();
    }
    let spec = ProjectSpec {
        quotas: ProjectResources {
            instances: Some(2),
            volume_gib: Some(10),
            ..Default::default()
        },
        ..Default::default()
    };
    store.create(&Project::new("", "q", spec)).await.unwrap();
    let manager = Arc::new(ControllerManager::new(
        store.clone(),
        ControllerOptions::default(),
    ));
    let (stop, rx) = watch::channel(false);
    tokio::spawn(manager.run(rx));

    let inst = |name: &str| {
        Instance::new(
            "q",
            name,
            InstanceSpec {
                instance_type: Some("m1.small".into()),
                image: Some("tiny".into()),
                ..Default::default()
            },
        )
    };
    admit(&store, inst("a")).await.unwrap();
    admit(&store, inst("b")).await.unwrap();
    let refused = admit(&store, inst("c")).await.unwrap_err();
    assert!(
        refused.to_string().contains("exceeded quota instances"),
        "{refused}"
    );
    let vol = Volume::new(
        "q",
        "v",
        VolumeSpec {
            size_gib: Some(10),
            ..Default::default()
        },
    );
    admit(&store, vol).await.unwrap();
    eventually(&store, "two instances and a volume counted", |u| {
        u.instances == Some(2) && u.memory_mib == Some(4096) && u.volume_gib == Some(10)
    })
    .await;

    // Deleting releases (Instances have no finalizer without a node here).
    store.delete::<Instance>("q", "a", None).await.unwrap();
    store.delete::<Volume>("q", "v", None).await.unwrap();
    eventually(&store, "deletions released", |u| {
        u.instances == Some(1) && u.volume_gib.is_none()
    })
    .await;
    admit(&store, inst("c")).await.unwrap();
    let p: Project = store.get("", "q").await.unwrap().unwrap();
    assert!(p.status.unwrap().pending_charges.is_empty());
    let _ = stop.send(true);
}
