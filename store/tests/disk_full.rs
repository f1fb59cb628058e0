//! The embedded store on a full disk (a 4 MiB tmpfs; needs root, as CI
//! is): writes fail as Unavailable naming the disk, the store's health
//! says why, no acknowledged write is lost, and once space is freed the
//! store reopens its file and writes again without a restart.

use std::process::Command;

use corral_store::{error_text, EmbeddedStore, Store, StoreError};

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount");
    assert!(
        ok.success(),
        "mounting a tmpfs needs root (CI runs as root)"
    );
    let _mount = Mount(mnt.clone());
    // Ballast that can be freed later.
    std::fs::write(mnt.join("ballast"), vec![0u8; 1 << 20]).unwrap();

    let store = EmbeddedStore::open(&mnt.join("store.redb")).unwrap();
    store.health().await.unwrap();
    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..10_000 {
        let key = format!("/full/{i:05}");
        match store.create(&key, vec![b'x'; 16 << 10]).await {
            Ok(_) => acked.push(key),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("the disk never filled");
    assert!(matches!(failure, StoreError::Unavailable(_)), "{failure:?}");
    let health = store.health().await.unwrap_err();
    let text = error_text(&health);
    assert!(text.contains("last commit failed"), "{text}");
    assert!(text.to_lowercase().contains("space"), "{text}");
    // Everything acknowledged reads back.
    for key in &acked {
        assert!(store.get(key).await.unwrap().is_some(), "{key} lost");
    }
    // Still full: writes keep failing with the disk named, not redb's
    // "previous I/O error".
    let again = store
        .create("/full/still", b"v".to_vec())
        .await
        .unwrap_err();
    assert!(
        error_text(&again).to_lowercase().contains("space"),
        "{again:?}"
    );
    // Space freed: the writer reopens its file by itself (no restart),
    // writes go through and health clears, and nothing acknowledged is
    // lost across the reopen.
    std::fs::remove_file(mnt.join("ballast")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if store.health().await.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still unhealthy 30 s after space was freed: {:?}",
            store.health().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let rev = store.create("/full/after", b"v".to_vec()).await.unwrap();
    assert!(rev > 0);
    for key in &acked {
        assert!(store.get(key).await.unwrap().is_some(), "{key} lost");
    }
    assert!(store.get("/full/still").await.unwrap().is_none());
    // And a store reopened from the file later sees it all.
    drop(store);
    let reopened = EmbeddedStore::open(&mnt.join("store.redb")).unwrap();
    assert!(reopened.get("/full/after").await.unwrap().is_some());
    assert_eq!(
        reopened
            .list("/full/", Default::default())
            .await
            .unwrap()
            .items
            .len(),
        acked.len() + 1
    );
}
