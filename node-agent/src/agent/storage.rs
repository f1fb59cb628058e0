//! Volume and snapshot files: the agent makes the host hold a file for
//! each Volume and Snapshot bound to this node (created empty, from an
//! image, from a snapshot or another volume; a snapshot copies its
//! volume), records where it is in the object's status, and removes it
//! when the object is being deleted. The controllers own the rest of
//! those objects.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use corral_api_types::{ImageFormat, Snapshot, SnapshotPhase, Volume};
use corral_runtime::{error_chain, ObjectRef, Shutdown};

use super::objects::Objects;
use super::{stopped, Agent, AgentError};

impl Agent {
    /// Makes the files of the Volumes and Snapshots bound to this node
    /// match them, every `host_sync`: creates (empty, from an image, a
    /// snapshot or another volume), snapshots, and removes what is being
    /// deleted.
    pub(super) async fn storage_loop(self: Arc<Self>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(self.opts.host_sync);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped(&mut stop) => return,
            }
            if let Err(e) = self.converge_storage().await {
                tracing::warn!(error = %error_chain(&e), "volume and snapshot files");
            }
        }
    }

    pub async fn converge_storage(&self) -> Result<(), AgentError> {
        let (volumes, _) = self.api.list("/v1/volumes").await?;
        for v in volumes {
            let Ok(v) = serde_json::from_value::<Volume>(v) else {
                continue;
            };
            let key = ObjectRef::of(&v);
            if let Err(e) = self.converge_volume(&v).await {
                tracing::warn!(volume = %key, error = %error_chain(&e), "volume file");
            }
        }
        let (snapshots, _) = self.api.list("/v1/snapshots").await?;
        for s in snapshots {
            let Ok(s) = serde_json::from_value::<Snapshot>(s) else {
                continue;
            };
            let key = ObjectRef::of(&s);
            if let Err(e) = self.converge_snapshot(&s).await {
                tracing::warn!(snapshot = %key, error = %error_chain(&e), "snapshot file");
            }
        }
        Ok(())
    }

    async fn converge_volume(&self, v: &Volume) -> Result<(), AgentError> {
        let status = v.status.clone().unwrap_or_default();
        if status.node_name.as_deref() != Some(self.opts.node.as_str()) {
            return Ok(());
        }
        let path = self.on_host().volume_path(&v.metadata.uid);
        let api_path = format!(
            "/v1/projects/{}/volumes/{}",
            v.metadata.project, v.metadata.name
        );
        if v.metadata.deletion_timestamp.is_some() {
            if status.attached_to.is_some() || status.location.is_none() {
                return Ok(());
            }
            let p = path.clone();
            self.host_call(move |h| h.remove_file(&p)).await?;
            tracing::info!(volume = %ObjectRef::of(v), "volume file removed");
            return self
                .update_status::<Volume>(&api_path, |o| {
                    let s = o.status.get_or_insert_with(Default::default);
                    s.location = None;
                })
                .await;
        }
        if status.location.is_some() {
            return Ok(());
        }
        let project = v.metadata.project.as_str();
        let min = u64::from(v.spec.size_gib.unwrap_or(0)) << 30;
        // The source, as (file, format), when the volume copies one.
        let source: Option<(PathBuf, String)> = if let Some(img) = &v.spec.source.image {
            let for_ = format!("volumes/{}", v.metadata.name);
            let found = match self
                .find_image(&mut Objects::default(), project, img, &for_)
                .await?
            {
                Ok(f) => f,
                Err(_) => return Ok(()), // not yet
            };
            let fmt = match found.image.as_ref().map(|i| i.spec.format) {
                Some(ImageFormat::Raw) => "raw",
                _ => "qcow2",
            };
            Some((
                self.image_file(&found, project, img, &for_).await?,
                fmt.into(),
            ))
        } else if let Some(snap) = &v.spec.source.snapshot {
            let Some(s) = self
                .api
                .get::<Snapshot>(&format!("/v1/projects/{project}/snapshots/{snap}"))
                .await?
            else {
                return Ok(());
            };
            let st = s.status.unwrap_or_default();
            match (st.phase, st.location) {
                (SnapshotPhase::Completed, Some(loc)) => Some((loc.into(), "qcow2".into())),
                _ => return Ok(()),
            }
        } else if let Some(src) = &v.spec.source.volume {
            let Some(s) = self
                .api
                .get::<Volume>(&format!("/v1/projects/{project}/volumes/{src}"))
                .await?
            else {
                return Ok(());
            };
            match s.status.and_then(|st| st.location) {
                Some(loc) => Some((loc.into(), "qcow2".into())),
                None => return Ok(()),
            }
        } else {
            None
        };
        let p = path.clone();
        match source {
            Some((src, fmt)) => {
                self.host_call(move |h| h.copy_image(&src, &fmt, &p, min))
                    .await?
            }
            None => {
                self.host_call(move |h| h.create_empty(&p, min.max(1 << 30)))
                    .await?
            }
        }
        let size = self.on_host().virtual_size_gib(&path).await;
        tracing::info!(volume = %ObjectRef::of(v), path = %path.display(), "volume file created");
        let location = path.display().to_string();
        self.update_status::<Volume>(&api_path, |o| {
            let s = o.status.get_or_insert_with(Default::default);
            s.location = Some(location.clone());
            s.size_gib = size;
        })
        .await
    }

    async fn converge_snapshot(&self, snap: &Snapshot) -> Result<(), AgentError> {
        let status = snap.status.clone().unwrap_or_default();
        if status.node_name.as_deref() != Some(self.opts.node.as_str()) {
            return Ok(());
        }
        let path = self.on_host().snapshot_path(&snap.metadata.uid);
        let project = snap.metadata.project.as_str();
        let api_path = format!("/v1/projects/{project}/snapshots/{}", snap.metadata.name);
        if snap.metadata.deletion_timestamp.is_some() {
            if status.location.is_none() {
                return Ok(());
            }
            let p = path.clone();
            self.host_call(move |h| h.remove_file(&p)).await?;
            return self
                .update_status::<Snapshot>(&api_path, |o| {
                    let s = o.status.get_or_insert_with(Default::default);
                    s.location = None;
                })
                .await;
        }
        if status.phase != SnapshotPhase::Pending {
            return Ok(());
        }
        let Some(volume) = self
            .api
            .get::<Volume>(&format!(
                "/v1/projects/{project}/volumes/{}",
                snap.spec.volume
            ))
            .await?
        else {
            return Ok(());
        };
        let Some(src) = volume.status.as_ref().and_then(|s| s.location.clone()) else {
            return Ok(());
        };
        // A guest may be writing: qemu-img reads the image as it stands
        // (crash-consistent; what the guest flushed is in it).
        let p = path.clone();
        self.host_call(move |h| h.copy_image(Path::new(&src), "qcow2", &p, 0))
            .await?;
        let size = self.on_host().virtual_size_gib(&path).await;
        tracing::info!(snapshot = %ObjectRef::of(snap), "snapshot taken");
        let location = path.display().to_string();
        self.update_status::<Snapshot>(&api_path, |o| {
            let s = o.status.get_or_insert_with(Default::default);
            s.location = Some(location.clone());
            s.phase = SnapshotPhase::Completed;
            s.progress = 100;
            s.size_gib = size;
        })
        .await
    }
}
