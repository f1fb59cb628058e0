//! A memo of decoded Instances, keyed by store key and revision.
//!
//! Every DescribeInstances reads the project's Instances from the store
//! (the store stays the only state: the list is always fresh), but
//! decoding a thousand JSON objects per request was half its cost. The
//! bytes under a (key, modRevision) never change, so the decoded object is
//! reused while the revision is the same; anything written since is
//! decoded again. Entries not in a project's latest list are dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use corral_api_types::{Instance, Resource};
use corral_store::{kind_prefix, ListOptions, ResourceStore, StoreError};

use crate::error::Result;

type ProjectMemo = HashMap<String, (i64, Arc<Instance>)>;

#[derive(Default)]
pub struct DecodedInstances {
    projects: Mutex<HashMap<String, Arc<ProjectMemo>>>,
}

impl DecodedInstances {
    /// The project's Instances as stored now.
    pub async fn list(&self, store: &ResourceStore, project: &str) -> Result<Vec<Arc<Instance>>> {
        let page = store
            .raw()
            .list(
                &kind_prefix::<Instance>(Some(project)),
                ListOptions::default(),
            )
            .await?;
        let known = self
            .projects
            .lock()
            .expect("memo lock")
            .get(project)
            .cloned()
            .unwrap_or_default();
        let mut fresh: ProjectMemo = HashMap::with_capacity(page.items.len());
        let mut out = Vec::with_capacity(page.items.len());
        for kv in &page.items {
            let obj = match known.get(&kv.key) {
                Some((rev, obj)) if *rev == kv.mod_revision => obj.clone(),
                _ => {
                    let mut obj: Instance =
                        serde_json::from_slice(&kv.value).map_err(|source| {
                            StoreError::Corrupt {
                                key: kv.key.clone(),
                                source,
                            }
                        })?;
                    obj.meta_mut().resource_version = kv.mod_revision.to_string();
                    Arc::new(obj)
                }
            };
            fresh.insert(kv.key.clone(), (kv.mod_revision, obj.clone()));
            out.push(obj);
        }
        self.projects
            .lock()
            .expect("memo lock")
            .insert(project.to_string(), Arc::new(fresh));
        Ok(out)
    }
}
