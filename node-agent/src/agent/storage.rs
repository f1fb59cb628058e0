//! Volume and snapshot files: the agent makes the host hold a file for
//! each Volume and Snapshot bound to this node (created empty, from an
//! image, from a snapshot or another volume; a snapshot copies its
//! volume), records where it is in the object's status, and removes it
//! when the object is being deleted. The controllers own the rest of
//! those objects.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use corral_api_types::{ImageFormat, Resource, Snapshot, SnapshotPhase, Volume};
use corral_client::{ClientError, WatcherEvent};
use corral_runtime::{error_chain, ObjectRef, Shutdown};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::objects::Objects;
use super::{stopped, Agent, AgentError};

impl Agent {
    /// Makes the files of the Volumes and Snapshots bound to this node
    /// match them: each copy the watches bring is converged once it
    /// arrives, and every `host_sync` what is still waiting (a source
    /// not ready yet, a failure) is tried again from the copies kept —
    /// an idle node reads nothing. Creates (empty, from an image, a
    /// snapshot or another volume), snapshots, and removes what is being
    /// deleted.
    pub(super) async fn storage_loop(self: Arc<Self>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(self.opts.host_sync);
        let mut volumes = Follow::<Volume>::new(self.api.watcher("/v1/volumes"));
        let mut snapshots = Follow::<Snapshot>::new(self.api.watcher("/v1/snapshots"));
        loop {
            // Which objects to converge now: those a watch just changed,
            // or, on a beat, every one kept.
            let (vs, ss) = tokio::select! {
                _ = tick.tick() => (volumes.all(), snapshots.all()),
                changed = volumes.next() => (changed, Vec::new()),
                changed = snapshots.next() => (Vec::new(), changed),
                _ = stopped(&mut stop) => return,
            };
            for v in vs {
                let rv = v.metadata.resource_version.clone();
                match self.converge_volume(&v).await {
                    Ok(true) => volumes.acted(&v, rv),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(volume = %ObjectRef::of(&*v), error = %error_chain(&e), "volume file")
                    }
                }
            }
            for s in ss {
                let rv = s.metadata.resource_version.clone();
                match self.converge_snapshot(&s).await {
                    Ok(true) => snapshots.acted(&s, rv),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(snapshot = %ObjectRef::of(&*s), error = %error_chain(&e), "snapshot file")
                    }
                }
            }
        }
    }

    /// Whether it changed the host or the status (`false`: nothing to do,
    /// or not yet).
    async fn converge_volume(&self, v: &Volume) -> Result<bool, AgentError> {
        let status = v.status.clone().unwrap_or_default();
        if status.node_name.as_deref() != Some(self.opts.node.as_str()) {
            return Ok(false);
        }
        let path = self.on_host().volume_path(&v.metadata.uid);
        let api_path = format!(
            "/v1/projects/{}/volumes/{}",
            v.metadata.project, v.metadata.name
        );
        if v.metadata.deletion_timestamp.is_some() {
            if status.attached_to.is_some() || status.location.is_none() {
                return Ok(false);
            }
            let p = path.clone();
            self.host_call(move |h| h.remove_file(&p)).await?;
            tracing::info!(volume = %ObjectRef::of(v), "volume file removed");
            return self
                .update_status::<Volume>(&api_path, |o| {
                    let s = o.status.get_or_insert_with(Default::default);
                    s.location = None;
                })
                .await
                .map(|()| true);
        }
        if status.location.is_some() {
            return Ok(false);
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
                Err(_) => return Ok(false), // not yet
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
                return Ok(false);
            };
            let st = s.status.unwrap_or_default();
            match (st.phase, st.location) {
                (SnapshotPhase::Completed, Some(loc)) => Some((loc.into(), "qcow2".into())),
                _ => return Ok(false),
            }
        } else if let Some(src) = &v.spec.source.volume {
            let Some(s) = self
                .api
                .get::<Volume>(&format!("/v1/projects/{project}/volumes/{src}"))
                .await?
            else {
                return Ok(false);
            };
            match s.status.and_then(|st| st.location) {
                Some(loc) => Some((loc.into(), "qcow2".into())),
                None => return Ok(false),
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
        .await?;
        Ok(true)
    }

    async fn converge_snapshot(&self, snap: &Snapshot) -> Result<bool, AgentError> {
        let status = snap.status.clone().unwrap_or_default();
        if status.node_name.as_deref() != Some(self.opts.node.as_str()) {
            return Ok(false);
        }
        let path = self.on_host().snapshot_path(&snap.metadata.uid);
        let project = snap.metadata.project.as_str();
        let api_path = format!("/v1/projects/{project}/snapshots/{}", snap.metadata.name);
        if snap.metadata.deletion_timestamp.is_some() {
            if status.location.is_none() {
                return Ok(false);
            }
            let p = path.clone();
            self.host_call(move |h| h.remove_file(&p)).await?;
            return self
                .update_status::<Snapshot>(&api_path, |o| {
                    let s = o.status.get_or_insert_with(Default::default);
                    s.location = None;
                })
                .await
                .map(|()| true);
        }
        if status.phase != SnapshotPhase::Pending {
            return Ok(false);
        }
        let Some(volume) = self
            .api
            .get::<Volume>(&format!(
                "/v1/projects/{project}/volumes/{}",
                snap.spec.volume
            ))
            .await?
        else {
            return Ok(false);
        };
        let Some(src) = volume.status.as_ref().and_then(|s| s.location.clone()) else {
            return Ok(false);
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
        .await?;
        Ok(true)
    }
}

/// The copies one watch keeps of a kind bound to this node, and which
/// copy of each was last acted on: a beat does not act twice on a copy
/// whose result the watch has not brought back yet. The watcher runs in
/// a task of its own: the loop's `select!` drops a pending `next()` at
/// every beat, and a watcher's `next()` dropped mid-watch would list
/// again.
struct Follow<K> {
    events: mpsc::Receiver<Result<WatcherEvent, ClientError>>,
    kept: HashMap<ObjectRef, Arc<K>>,
    /// The resourceVersion of the copy last acted on, by object.
    acted: HashMap<ObjectRef, String>,
}

impl<K: Resource + DeserializeOwned> Follow<K> {
    fn new(mut watcher: corral_client::Watcher) -> Follow<K> {
        let (tx, events) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    e = watcher.next() => e,
                    _ = tx.closed() => return,
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Follow {
            events,
            kept: HashMap::new(),
            acted: HashMap::new(),
        }
    }

    /// Every kept copy not already acted on.
    fn all(&self) -> Vec<Arc<K>> {
        self.kept
            .iter()
            .filter(|(k, v)| self.acted.get(*k) != Some(&v.meta().resource_version))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn acted(&mut self, v: &K, rv: String) {
        self.acted.insert(ObjectRef::of(v), rv);
    }

    /// The copies the next watch event changed (after a relist: all).
    async fn next(&mut self) -> Vec<Arc<K>> {
        let Some(event) = self.events.recv().await else {
            return std::future::pending().await;
        };
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                let e = crate::api::ApiError::from(e);
                tracing::warn!(error = %error_chain(&e), "listing or watching volumes or snapshots failed");
                return Vec::new();
            }
        };
        let parse = |v: serde_json::Value| serde_json::from_value::<K>(v).ok().map(Arc::new);
        match event {
            WatcherEvent::Restarted(items) => {
                self.kept = items
                    .into_iter()
                    .filter_map(parse)
                    .map(|v| (ObjectRef::of(&*v), v))
                    .collect();
                self.acted.retain(|k, _| self.kept.contains_key(k));
                self.all()
            }
            WatcherEvent::Added(v) | WatcherEvent::Modified(v) => match parse(v) {
                Some(v) => {
                    self.kept.insert(ObjectRef::of(&*v), v.clone());
                    vec![v]
                }
                None => Vec::new(),
            },
            WatcherEvent::Deleted(v) => {
                if let Some(v) = parse(v) {
                    let k = ObjectRef::of(&*v);
                    self.kept.remove(&k);
                    self.acted.remove(&k);
                }
                Vec::new()
            }
        }
    }
}
