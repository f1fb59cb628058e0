//! The images root disks and volumes are made from, as this host gets
//! them ([`ImageSupply`]): on a real host an Image must be Available, and
//! its bytes are pulled from the API once into the host's cache and
//! checked against its sha256; a simulated host only names it.

use std::path::PathBuf;

use corral_api_types::{Image, ImagePhase};
use corral_store::blobs::BlobStore;

use super::domain::Wait;
use super::objects::Objects;
use super::{Agent, AgentError};
use crate::host::{named_image, HostError, ImageSupply};

/// An image this host can make disks from, found but perhaps not pulled
/// yet.
pub(super) struct FoundImage {
    /// The Image (`None` where images are only named).
    pub(super) image: Option<Image>,
    source: Source,
}

enum Source {
    /// The stand-in path of a named image.
    Named(PathBuf),
    /// Bytes to pull into the host's cache, if they are not there yet.
    Cache { cache: BlobStore, sha: String },
}

impl Agent {
    /// Image `name`, or why not yet. `for_` names the bound object that
    /// uses it (`instances/NAME` or `volumes/NAME`): a node reads only
    /// images those use.
    pub(super) async fn find_image(
        &self,
        objects: &mut Objects,
        project: &str,
        name: &str,
        for_: &str,
    ) -> Result<Result<FoundImage, Wait>, AgentError> {
        let cache = match self.on_host().images() {
            ImageSupply::Named => {
                return Ok(Ok(FoundImage {
                    image: None,
                    source: Source::Named(named_image(project, name)),
                }))
            }
            ImageSupply::Cache(cache) => cache.clone(),
        };
        Ok(self
            .available_image(objects, project, name, for_)
            .await?
            .map(|(image, sha)| FoundImage {
                image: Some(image),
                source: Source::Cache { cache, sha },
            }))
    }

    /// The file of a found image (pulled first if the host needs its
    /// bytes).
    pub(super) async fn image_file(
        &self,
        found: &FoundImage,
        project: &str,
        name: &str,
        for_: &str,
    ) -> Result<PathBuf, AgentError> {
        match &found.source {
            Source::Named(path) => Ok(path.clone()),
            Source::Cache { cache, sha } => self.pull_image(cache, project, name, sha, for_).await,
        }
    }

    /// An Image that is Available, and its sha256, or why not yet.
    async fn available_image(
        &self,
        objects: &mut Objects,
        project: &str,
        name: &str,
        for_: &str,
    ) -> Result<Result<(Image, String), Wait>, AgentError> {
        let Some(img) = objects.image(&self.api, project, name, for_).await? else {
            return Ok(Err(Wait::new(
                "WaitingForImage",
                format!("image {name:?} not found"),
            )));
        };
        let status = img.status.clone().unwrap_or_default();
        match (status.phase, status.sha256.clone()) {
            (ImagePhase::Available, Some(sha)) => Ok(Ok((img.as_ref().clone(), sha))),
            (phase, _) => Ok(Err(Wait::new(
                "WaitingForImage",
                format!(
                    "image {name:?} is {phase:?}{}",
                    status.message.map(|m| format!(": {m}")).unwrap_or_default()
                ),
            ))),
        }
    }

    /// The cached file of an image's bytes, pulled from the API once and
    /// verified against its sha256.
    async fn pull_image(
        &self,
        cache: &BlobStore,
        project: &str,
        name: &str,
        sha: &str,
        for_: &str,
    ) -> Result<PathBuf, AgentError> {
        let path = cache.path(sha).map_err(HostError::from)?;
        if path.is_file() {
            return Ok(path);
        }
        let _one = self.pulls.lock().await;
        if path.is_file() {
            return Ok(path);
        }
        tracing::info!(image = %name, %sha, "pulling image");
        let mut resp = self
            .api
            .download(&format!(
                "/v1/projects/{project}/images/{name}/content?for={for_}"
            ))
            .await?;
        let mut w = cache.writer().map_err(HostError::from)?;
        loop {
            let chunk = resp
                .chunk()
                .await
                .map_err(|e| AgentError::Other(format!("pulling image {name:?}: {e}")))?;
            let Some(chunk) = chunk else { break };
            w = tokio::task::spawn_blocking(move || w.write_all(&chunk).map(|()| w))
                .await
                .map_err(|e| AgentError::Other(e.to_string()))?
                .map_err(HostError::from)?;
        }
        let want = sha.to_string();
        tokio::task::spawn_blocking(move || w.finish(Some(&want)))
            .await
            .map_err(|e| AgentError::Other(e.to_string()))?
            .map_err(HostError::from)?;
        Ok(path)
    }
}
