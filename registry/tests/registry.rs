//! The write path on a real store (the embedded backend): what every
//! façade gets from `Registry` — admission, server-owned metadata,
//! generation, transition rules, pinned and unpinned compare-and-swap,
//! finalizers, server-side apply — and the errors it answers with.

use std::sync::Arc;

use corral_api_types::{Resource, Volume, VolumeSpec};
use corral_registry::{ApplyResult, Registry, RegistryError};
use corral_store::{EmbeddedStore, ResourceStore};

fn volume(name: &str, gib: u32) -> Volume {
    Volume::new(
        "p",
        name,
        VolumeSpec {
            size_gib: Some(gib),
            ..Default::default()
        },
    )
}

async fn registry() -> (tempfile::TempDir, Registry<Volume>) {
    let dir = tempfile::tempdir().unwrap();
    let raw = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    (dir, Registry::new(ResourceStore::new(Arc::new(raw))))
}

fn ok(_: &Volume) -> Result<(), RegistryError> {
    Ok(())
}

#[tokio::test]
async fn create_admits_and_owns_the_server_fields() {
    let (_dir, reg) = registry().await;
    let mut v = volume("data", 1);
    v.metadata.generation = 7;
    v.metadata.resource_version = "99".into();
    v.status = Some(Default::default());
    let made = reg.create(v, false, ok).await.unwrap();
    assert_eq!(made.metadata.generation, 1);
    assert!(made.status.is_none());
    assert!(!made.metadata.uid.is_empty());
    assert!(made.metadata.creation_timestamp.is_some());

    // A uid the caller chose (EC2's ClientToken) is kept.
    let mut v = volume("chosen", 1);
    v.metadata.uid = "2f1f7a7e-0000-4000-8000-000000000001".into();
    let made = reg.create(v, false, ok).await.unwrap();
    assert_eq!(made.metadata.uid, "2f1f7a7e-0000-4000-8000-000000000001");

    // Invalid objects name the field; the caller's own check refuses with
    // its own error; a dry run writes nothing.
    let err = reg.create(volume("big", 0), false, ok).await.unwrap_err();
    match err {
        RegistryError::Invalid { kind, name, errors } => {
            assert_eq!((kind, name.as_str()), ("Volume", "big"));
            assert!(errors.to_string().contains("spec.sizeGiB"), "{errors}");
        }
        other => panic!("{other:?}"),
    }
    #[derive(Debug)]
    struct Mine(&'static str);
    impl From<RegistryError> for Mine {
        fn from(_: RegistryError) -> Mine {
            Mine("registry")
        }
    }
    let err = reg
        .create(volume("refused", 1), false, |_| Err(Mine("mine")))
        .await
        .unwrap_err();
    assert_eq!(err.0, "mine");
    reg.create(volume("dry", 1), true, ok).await.unwrap();
    assert!(matches!(
        reg.get("p", "dry").await,
        Err(RegistryError::NotFound { .. })
    ));
}

#[tokio::test]
async fn updates_follow_the_kind_rules_and_pin_when_asked() {
    let (_dir, reg) = registry().await;
    let made = reg.create(volume("data", 1), false, ok).await.unwrap();
    let rv = made.metadata.resource_version.clone();

    // Growth bumps the generation; labels alone do not.
    let grown: Volume = reg
        .update("p", "data", Some(&rv), false, |cur: &Volume| {
            let mut v = cur.clone();
            v.spec.size_gib = Some(2);
            Ok::<_, RegistryError>(v)
        })
        .await
        .unwrap();
    assert_eq!(grown.metadata.generation, 2);
    assert_eq!(grown.metadata.uid, made.metadata.uid);
    let labelled: Volume = reg
        .update("p", "data", None, false, |cur: &Volume| {
            let mut v = cur.clone();
            v.metadata.labels.insert("tier".into(), "gold".into());
            // Clients cannot move the uid or the creation time.
            v.metadata.uid = "other".into();
            v.metadata.creation_timestamp = None;
            Ok::<_, RegistryError>(v)
        })
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, 2);
    assert_eq!(labelled.metadata.uid, made.metadata.uid);
    assert_eq!(
        labelled.metadata.creation_timestamp,
        made.metadata.creation_timestamp
    );

    // The old revision is stale now; a junk one is refused as such.
    let stale = reg
        .update("p", "data", Some(&rv), false, |c: &Volume| {
            Ok::<_, RegistryError>(c.clone())
        })
        .await
        .unwrap_err();
    assert!(matches!(stale, RegistryError::Stale { .. }), "{stale:?}");
    assert!(stale
        .to_string()
        .contains(&format!("you sent resourceVersion {rv}")));
    let junk = reg
        .update("p", "data", Some("abc"), false, |c: &Volume| {
            Ok::<_, RegistryError>(c.clone())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(junk, RegistryError::BadResourceVersion(_)),
        "{junk:?}"
    );

    // Shrinking breaks the transition rule, naming the field.
    let shrink = reg
        .update("p", "data", None, false, |cur: &Volume| {
            let mut v = cur.clone();
            v.spec.size_gib = Some(1);
            Ok::<_, RegistryError>(v)
        })
        .await
        .unwrap_err();
    assert!(shrink.to_string().contains("may only grow"), "{shrink}");
}

#[tokio::test]
async fn deletes_honour_finalizers() {
    let (_dir, reg) = registry().await;
    let mut v = volume("held", 1);
    v.metadata.finalizers.push("test/hold".into());
    reg.create(v, false, ok).await.unwrap();
    let marked = reg.delete("p", "held", None, false).await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(reg.get("p", "held").await.is_ok(), "only marked");
    // The holder removes its finalizer: the object goes.
    reg.update("p", "held", None, false, |cur: &Volume| {
        let mut v = cur.clone();
        v.metadata.finalizers.clear();
        Ok::<_, RegistryError>(v)
    })
    .await
    .unwrap();
    assert!(matches!(
        reg.get("p", "held").await,
        Err(RegistryError::NotFound { .. })
    ));
    assert!(matches!(
        reg.delete("p", "held", None, false).await,
        Err(RegistryError::NotFound { .. })
    ));
}

#[tokio::test]
async fn apply_creates_configures_and_leaves_alone() {
    let (_dir, reg) = registry().await;
    let (result, made) = reg
        .apply(volume("data", 1), false, |_, _| Ok::<_, RegistryError>(()))
        .await
        .unwrap();
    assert_eq!(result, ApplyResult::Created);
    let (result, same) = reg
        .apply(volume("data", 1), false, |_, _| Ok::<_, RegistryError>(()))
        .await
        .unwrap();
    assert_eq!(result, ApplyResult::Unchanged);
    assert_eq!(
        same.metadata.resource_version,
        made.metadata.resource_version
    );
    let mut seen_old = None;
    let (result, grown) = reg
        .apply(volume("data", 3), false, |_, old: Option<&Volume>| {
            seen_old = old.and_then(|o| o.spec.size_gib);
            Ok::<_, RegistryError>(())
        })
        .await
        .unwrap();
    assert_eq!(result, ApplyResult::Configured);
    assert_eq!(seen_old, Some(1), "the check sees the current object");
    assert_eq!(grown.spec.size_gib, Some(3));
    assert_eq!(grown.metadata.generation, 2);
    assert_eq!(grown.metadata.uid, made.metadata.uid);
    assert_eq!(Volume::KIND, "Volume");
}
