//! Admission of the fields that name something on a host
//! ([`HostRef`]): a tenant's image path must lie beneath an import
//! directory, its image URL must not point inside the host or its private
//! networks, and only an admin attaches guests to a host interface.
//!
//! Only what a write adds is judged: a field that keeps the value already
//! stored (a member relabelling the bridged Network an admin made in its
//! project) is not new input. The image controller checks paths and URLs
//! again when it reads them ([`corral_store::import`]); this check is
//! there so that the refusal is immediate and names the field.

use corral_api_types::auth::Role;
use corral_api_types::{HostRef, HostRefs, Resource};
use corral_store::import::ImportPolicy;

use crate::error::ApiError;

/// Prefixes of the host interfaces Corral itself makes (tenant bridges,
/// guest taps): no Network may be bridged onto them.
const CORRAL_INTERFACE_PREFIXES: [&str; 2] = ["crb", "crt"];

/// Refuses the host references `new` adds over `old` that `role` may not
/// make under `policy`.
pub fn check<K: Resource + HostRefs>(
    policy: &ImportPolicy,
    role: Role,
    new: &K,
    old: Option<&K>,
) -> Result<(), ApiError> {
    let kept = old.map(|o| o.host_refs()).unwrap_or_default();
    for r in new.host_refs() {
        if kept.contains(&r) {
            continue;
        }
        let refused = |field: &str, why: String| {
            Err(ApiError::forbidden_field(
                K::KIND,
                &new.meta().name,
                field,
                &why,
            ))
        };
        match r {
            HostRef::File { field, path } => {
                if let Err(e) = policy.check_path(path) {
                    return refused(field, e.to_string());
                }
            }
            HostRef::Url { field, url } => {
                if let Err(e) = policy.check_url(url) {
                    return refused(field, e.to_string());
                }
            }
            HostRef::HostInterface { field, name } => {
                if role != Role::Admin {
                    return refused(
                        field,
                        "attaching guests to a host interface is the operator's choice: \
                         only an admin may create or change a bridged Network"
                            .into(),
                    );
                }
                if CORRAL_INTERFACE_PREFIXES
                    .iter()
                    .any(|p| name.starts_with(p))
                {
                    return refused(
                        field,
                        format!(
                            "{name:?} is an interface Corral manages for another Network or guest"
                        ),
                    );
                }
            }
        }
    }
    Ok(())
}
