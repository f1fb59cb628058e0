//! A memo of decoded Instances, keyed by store key and revision, with what
//! DescribeInstances derives from each: its EC2 id, its reservation and
//! its rendered `<item>` XML.
//!
//! Every DescribeInstances reads the project's Instances from the store
//! (the store stays the only state: the list is always fresh), but
//! decoding a thousand JSON objects, hashing their ids and writing their
//! XML per request was nearly all its cost. The bytes under a
//! (key, modRevision) never change, so the decoded object and its ids are
//! reused while the revision is the same; anything written since is
//! decoded again. Entries not in a project's latest list are dropped.
//!
//! The XML of an instance also depends on other objects (the EC2 ids of
//! its security groups, network, image, key and volumes, the zone): the
//! caller passes everything it renders with as a *context*, compared
//! whole with the project's previous one; any difference starts a new
//! generation, and a fragment is only reused within its generation.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use corral_api_types::ec2::{instance_id, reservation_id, RESERVATION_ANNOTATION};
use corral_api_types::{Instance, Resource};
use corral_store::{kind_prefix, ListOptions, ResourceStore, StoreError};

use crate::error::Result;

/// One stored Instance, decoded, with what is derived from it.
pub struct DecodedInstance {
    pub instance: Arc<Instance>,
    /// The store revision it was decoded from.
    pub revision: i64,
    /// Its EC2 id (`i-…`).
    pub id: String,
    /// Its reservation id (`r-…`).
    pub reservation: String,
    /// (generation, XML) of the last rendering.
    rendered: Mutex<Option<(u64, Arc<str>)>>,
}

impl DecodedInstance {
    pub fn new(instance: Arc<Instance>, revision: i64) -> DecodedInstance {
        let id = instance_id(&instance.metadata.uid);
        let reservation = instance
            .metadata
            .annotations
            .get(RESERVATION_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| reservation_id(&instance.metadata.uid));
        DecodedInstance {
            instance,
            revision,
            id,
            reservation,
            rendered: Mutex::new(None),
        }
    }

    /// The instance's XML for context `generation` (see
    /// [`DecodedInstances::generation`]): the one rendered earlier in the
    /// same generation, else `render`'s.
    pub fn rendered(&self, generation: u64, render: impl FnOnce(&Instance) -> String) -> Arc<str> {
        if let Some((g, xml)) = &*self.rendered.lock().expect("render lock") {
            if *g == generation {
                return xml.clone();
            }
        }
        let xml: Arc<str> = render(&self.instance).into();
        *self.rendered.lock().expect("render lock") = Some((generation, xml.clone()));
        xml
    }
}

type ProjectMemo = HashMap<String, Arc<DecodedInstance>>;

/// A project's last rendering context and its generation.
type Context = (Arc<dyn Any + Send + Sync>, u64);

#[derive(Default)]
pub struct DecodedInstances {
    projects: Mutex<HashMap<String, Arc<ProjectMemo>>>,
    contexts: Mutex<HashMap<String, Context>>,
}

/// Generations are unique across projects and contexts.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

impl DecodedInstances {
    /// The project's Instances as stored now, in store key order.
    pub async fn list(
        &self,
        store: &ResourceStore,
        project: &str,
    ) -> Result<Vec<Arc<DecodedInstance>>> {
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
        let mut out = Vec::with_capacity(page.items.len());
        let mut unchanged = known.len() == page.items.len();
        for kv in &page.items {
            let entry = match known.get(&kv.key) {
                Some(e) if e.revision == kv.mod_revision => e.clone(),
                _ => {
                    unchanged = false;
                    let mut obj: Instance =
                        serde_json::from_slice(&kv.value).map_err(|source| {
                            StoreError::Corrupt {
                                key: kv.key.clone(),
                                source,
                            }
                        })?;
                    obj.meta_mut().resource_version = kv.mod_revision.to_string();
                    Arc::new(DecodedInstance::new(Arc::new(obj), kv.mod_revision))
                }
            };
            out.push(entry);
        }
        if !unchanged {
            let fresh: ProjectMemo = page
                .items
                .iter()
                .zip(&out)
                .map(|(kv, e)| (kv.key.clone(), e.clone()))
                .collect();
            self.projects
                .lock()
                .expect("memo lock")
                .insert(project.to_string(), Arc::new(fresh));
        }
        Ok(out)
    }

    /// The generation of a project's rendering context: the previous one
    /// while `context` equals the previous context, else a new one.
    pub fn generation<C: PartialEq + Clone + Send + Sync + 'static>(
        &self,
        project: &str,
        context: &C,
    ) -> u64 {
        let mut contexts = self.contexts.lock().expect("context lock");
        if let Some((last, generation)) = contexts.get(project) {
            if last.downcast_ref::<C>() == Some(context) {
                return *generation;
            }
        }
        let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
        contexts.insert(project.to_string(), (Arc::new(context.clone()), generation));
        generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_follow_the_context() {
        let d = DecodedInstances::default();
        let a = d.generation("p", &("zone-a".to_string(), 1u32));
        assert_eq!(d.generation("p", &("zone-a".to_string(), 1u32)), a);
        let b = d.generation("p", &("zone-a".to_string(), 2u32));
        assert_ne!(a, b);
        assert_ne!(d.generation("q", &("zone-a".to_string(), 2u32)), b);
        // Another type of context is another context.
        assert_ne!(d.generation("p", &7u8), b);
    }

    #[test]
    fn fragments_are_reused_within_a_generation_only() {
        let i = Instance::new("p", "vm", Default::default());
        let d = DecodedInstance::new(Arc::new(i), 5);
        assert!(d.id.starts_with("i-") && d.reservation.starts_with("r-"));
        let mut renders = 0;
        let mut render = |_: &Instance| {
            renders += 1;
            format!("<x>{renders}</x>")
        };
        assert_eq!(&*d.rendered(1, &mut render), "<x>1</x>");
        assert_eq!(&*d.rendered(1, &mut render), "<x>1</x>");
        assert_eq!(&*d.rendered(2, &mut render), "<x>2</x>");
        assert_eq!(&*d.rendered(1, &mut render), "<x>3</x>");
    }
}
