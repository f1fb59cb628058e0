//! The image controller: brings an Image's bytes into the server's blob
//! store and records their sha256, size and progress in its status. A
//! `path` source is imported from the server host, only from beneath the
//! operator's import directories; a `url` source is downloaded over
//! `http://` or `https://`, never from the host itself or a private
//! address ([`fetch`]); an `upload` source waits for the bytes to be PUT
//! to `.../images/NAME/content` (the API server records those). Both
//! rules are [`ImportPolicy`]'s, checked here at the read whatever
//! admission let through.
//!
//! Node agents then pull the bytes by digest, verify and cache them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use corral_api_types::{ec2, Image, ImagePhase, ImageStatus};
use corral_runtime::status::update_with_retry;
use corral_runtime::{Action, ObjectRef, ReconcileError, Reconciler};
use corral_store::blobs::{check_image_format, BlobInfo, BlobStore};
use corral_store::import::ImportPolicy;
use corral_store::ResourceStore;

pub mod fetch;

pub struct ImageController {
    store: ResourceStore,
    blobs: Option<BlobStore>,
    imports: Arc<ImportPolicy>,
}

impl ImageController {
    pub fn new(
        store: ResourceStore,
        blobs: Option<BlobStore>,
        imports: Arc<ImportPolicy>,
    ) -> ImageController {
        ImageController {
            store,
            blobs,
            imports,
        }
    }

    async fn set_status(
        &self,
        key: &ObjectRef,
        edit: impl Fn(&Image, &mut ImageStatus),
    ) -> Result<(), ReconcileError> {
        update_with_retry::<Image, _>(&self.store, &key.project, &key.name, |img| {
            let mut s = img.status.clone().unwrap_or_default();
            edit(img, &mut s);
            s.observed_generation = img.metadata.generation;
            if s.ec2_id.is_none() {
                s.ec2_id = Some(ec2_id(img));
            }
            if img.status.as_ref() == Some(&s) {
                return false;
            }
            img.status = Some(s);
            true
        })
        .await?;
        Ok(())
    }

    async fn fail(&self, key: &ObjectRef, message: String) -> Result<Action, ReconcileError> {
        tracing::warn!(image = %key, %message, "image import failed");
        self.set_status(key, |_, s| {
            s.phase = ImagePhase::Failed;
            s.progress = 0;
            s.message = Some(message.clone());
        })
        .await?;
        // The file may appear, the server may come back: try again later.
        Ok(Action::Requeue(Duration::from_secs(60)))
    }

    /// Copies the bytes in, reporting progress every second.
    async fn import(
        &self,
        key: &ObjectRef,
        blobs: BlobStore,
        work: impl FnOnce(BlobStore, Arc<(AtomicU64, AtomicU64)>) -> Result<BlobInfo, String>
            + Send
            + 'static,
    ) -> Result<BlobInfo, String> {
        let progress = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let p = progress.clone();
        let mut task = tokio::task::spawn_blocking(move || work(blobs, p));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                r = &mut task => return r.map_err(|e| e.to_string())?,
                _ = tick.tick() => {
                    let (done, total) = (progress.0.load(Ordering::Relaxed), progress.1.load(Ordering::Relaxed));
                    if let Some(pct) = (done * 100).checked_div(total) {
                        let pct = pct.min(99) as u8;
                        let _ = self.set_status(key, |_, s| s.progress = pct).await;
                    }
                }
            }
        }
    }
}

fn ec2_id(img: &Image) -> String {
    ec2::image_id(img.spec.image_type, &img.metadata.uid)
}

/// Downloads `url` into a blob under `policy` (blocking: the import runs
/// on a blocking thread with its own small runtime).
fn download(
    policy: &Arc<ImportPolicy>,
    url: &str,
    blobs: &BlobStore,
    progress: &(AtomicU64, AtomicU64),
) -> Result<BlobInfo, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(fetch::download(policy, url, blobs, progress))
}

#[async_trait]
impl Reconciler<Image> for ImageController {
    async fn reconcile(
        &self,
        key: &ObjectRef,
        object: Option<Arc<Image>>,
    ) -> Result<Action, ReconcileError> {
        let Some(img) = object else {
            return Ok(Action::AwaitChange);
        };
        if img.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let have = |sha: &str| self.blobs.as_ref().is_some_and(|b| b.contains(sha));
        let done = |img: &Image| {
            img.status.as_ref().is_some_and(|s| {
                s.phase == ImagePhase::Available
                    && s.observed_generation == img.metadata.generation
                    && s.sha256.as_deref().is_some_and(have)
            })
        };
        if done(&img) {
            return Ok(Action::AwaitChange);
        }
        // The cached copy can be one status write behind (this
        // controller's own "Importing" of an import that has finished
        // since): ask the store before importing again, which would put an
        // available image back to Importing.
        let img = match self.store.get::<Image>(&key.project, &key.name).await {
            Ok(Some(fresh)) if done(&fresh) => return Ok(Action::AwaitChange),
            Ok(Some(fresh)) => Arc::new(fresh),
            Ok(None) => return Ok(Action::AwaitChange),
            Err(e) => return Err(Box::new(e)),
        };
        if img.metadata.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let status = img.status.clone().unwrap_or_default();
        let Some(blobs) = self.blobs.clone() else {
            self.set_status(key, |_, s| {
                s.phase = ImagePhase::Pending;
                s.message = Some("no server keeps image bytes (no blob directory)".into());
            })
            .await?;
            return Ok(Action::AwaitChange);
        };
        let source = &img.spec.source;
        let format = img.spec.format;
        if source.upload {
            if status.sha256.as_deref().is_some_and(have) {
                // The upload landed; only the generation moved.
                self.set_status(key, |_, s| {
                    s.phase = ImagePhase::Available;
                    s.progress = 100;
                    s.message = None;
                })
                .await?;
            } else {
                let msg = format!(
                    "waiting for the image's bytes: corral image upload {} FILE -p {}",
                    key.name, key.project
                );
                self.set_status(key, |_, s| {
                    s.phase = ImagePhase::Pending;
                    s.sha256 = None;
                    s.message = Some(msg.clone());
                })
                .await?;
            }
            return Ok(Action::AwaitChange);
        }
        self.set_status(key, |_, s| {
            s.phase = ImagePhase::Importing;
            s.progress = 0;
            s.message = None;
        })
        .await?;
        let result = if let Some(path) = source.path.clone() {
            let policy = self.imports.clone();
            self.import(key, blobs.clone(), move |b, p| {
                let (file, total) = policy
                    .open(&path)
                    .map_err(|e| format!("spec.source.path: {e}"))?;
                b.import_file(file, total, std::path::Path::new(&path), |done, total| {
                    p.0.store(done, Ordering::Relaxed);
                    p.1.store(total, Ordering::Relaxed);
                })
                .map_err(|e| format!("importing spec.source.path: {e}"))
            })
            .await
        } else if let Some(url) = source.url.clone() {
            let policy = self.imports.clone();
            self.import(key, blobs.clone(), move |b, p| {
                download(&policy, &url, &b, &p)
            })
            .await
        } else {
            Err("spec.source names no url, path or upload".into())
        };
        let blob = match result {
            Ok(b) => b,
            Err(e) => return self.fail(key, e).await,
        };
        let path = blobs
            .path(&blob.sha256)
            .map_err(|e| -> ReconcileError { Box::new(e) })?;
        if let Err(why) = check_image_format(&path, format) {
            return self.fail(key, format!("spec.format {why}")).await;
        }
        tracing::info!(image = %key, sha256 = %blob.sha256, size = blob.size, "image imported");
        self.set_status(key, |_, s| {
            s.phase = ImagePhase::Available;
            s.sha256 = Some(blob.sha256.clone());
            s.size_bytes = Some(blob.size);
            s.progress = 100;
            s.message = None;
        })
        .await?;
        Ok(Action::AwaitChange)
    }
}
