//! What a node agent may read beyond what is bound to it: the Networks,
//! SecurityGroups, KeyPairs and Images that an Instance or Volume bound to
//! its node uses, and nothing else, as Kubernetes' node authorizer lets a
//! kubelet read only the secrets and config maps its pods name.
//!
//! The agent says which bound object it reads for (`?for=instances/NAME`
//! or `?for=volumes/NAME`); the server checks that object is bound to the
//! caller's node and names the one asked for, directly or one step away
//! (an image's kernel and ramdisk, a group named as the source of a rule
//! in one of the instance's groups). This module only decides; it must not
//! write anything.

use corral_api_types::auth::Role;
use corral_api_types::{Image, Instance, SecurityGroup, Volume};
use corral_store::ResourceStore;

use crate::auth::Principal;
use crate::error::ApiError;

/// Kinds a node reads only for a bound object that uses them.
pub const REFERENCED_KINDS: &[&str] = &["networks", "images", "keypairs", "securitygroups"];

/// Whether node `p` may read `plural/name` in `project` for the bound
/// object `for_` (`instances/NAME` or `volumes/NAME`). Other callers, and
/// other kinds, are not this module's to decide: `Ok`.
pub async fn check(
    store: &ResourceStore,
    p: &Principal,
    plural: &str,
    project: &str,
    name: &str,
    for_: Option<&str>,
) -> Result<(), ApiError> {
    if p.role != Role::Node || !REFERENCED_KINDS.contains(&plural) {
        return Ok(());
    }
    let Some(for_) = for_ else {
        return Err(ApiError::forbidden(format!(
            "node {:?} reads {plural} only for an instance or volume bound to it: \
             add ?for=instances/NAME or ?for=volumes/NAME",
            p.node
        )));
    };
    let (for_plural, for_name) = for_.split_once('/').unwrap_or(("", for_));
    let unbound = || ApiError::not_found(format!("{for_plural} {for_name:?} not found"));
    let uses = match for_plural {
        "instances" => {
            let Some(i) = store.get::<Instance>(project, for_name).await? else {
                return Err(unbound());
            };
            let node = i.status.as_ref().and_then(|s| s.node_name.as_deref());
            if node != Some(p.node.as_str()) {
                return Err(unbound());
            }
            instance_uses(store, &i, plural, name).await?
        }
        "volumes" => {
            let Some(v) = store.get::<Volume>(project, for_name).await? else {
                return Err(unbound());
            };
            let node = v.status.as_ref().and_then(|s| s.node_name.as_deref());
            if node != Some(p.node.as_str()) {
                return Err(unbound());
            }
            plural == "images" && v.spec.source.image.as_deref() == Some(name)
        }
        _ => {
            return Err(ApiError::bad_request(format!(
                "for: {for_:?} is not instances/NAME or volumes/NAME"
            )))
        }
    };
    if uses {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "{for_} on node {:?} does not use {plural} {name:?}",
            p.node
        )))
    }
}

async fn instance_uses(
    store: &ResourceStore,
    i: &Instance,
    plural: &str,
    name: &str,
) -> Result<bool, ApiError> {
    let project = i.metadata.project.as_str();
    Ok(match plural {
        "networks" => {
            i.spec.nics.iter().any(|n| n.network == name)
                || i.status
                    .as_ref()
                    .is_some_and(|s| s.addresses.iter().any(|a| a.network == name))
        }
        "keypairs" => i.spec.key_name.as_deref() == Some(name),
        "images" => match i.spec.image.as_deref() {
            Some(image) if image == name => true,
            Some(image) => store
                .get::<Image>(project, image)
                .await?
                .is_some_and(|img| {
                    img.spec.kernel.as_deref() == Some(name)
                        || img.spec.ramdisk.as_deref() == Some(name)
                }),
            None => false,
        },
        "securitygroups" => {
            let own: Vec<&String> = i
                .spec
                .nics
                .iter()
                .flat_map(|n| &n.security_groups)
                .collect();
            if own.iter().any(|g| *g == name) {
                true
            } else {
                // A group named as a rule's source in one of its groups:
                // its members are the rule's peers.
                let mut found = false;
                for g in own {
                    if let Some(sg) = store.get::<SecurityGroup>(project, g).await? {
                        if sg
                            .spec
                            .ingress
                            .iter()
                            .chain(&sg.spec.egress)
                            .any(|r| r.source_group.as_deref() == Some(name))
                        {
                            found = true;
                            break;
                        }
                    }
                }
                found
            }
        }
        _ => false,
    })
}
