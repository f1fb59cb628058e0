//! What an Instance asks of a node, resolved from its instance type or its
//! explicit cpus/memory.

use corral_api_types::{Instance, InstanceType, DEFAULT_INSTANCE_TYPE};
use corral_runtime::{Cache, ObjectRef};

/// Resources one instance occupies on its node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request {
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

impl Request {
    pub fn add(&mut self, other: Request) {
        self.vcpus += other.vcpus;
        self.memory_mib += other.memory_mib;
        self.disk_gib += other.disk_gib;
    }

    pub fn sub(&mut self, other: Request) {
        self.vcpus = self.vcpus.saturating_sub(other.vcpus);
        self.memory_mib = self.memory_mib.saturating_sub(other.memory_mib);
        self.disk_gib = self.disk_gib.saturating_sub(other.disk_gib);
    }
}

/// Why an instance's request cannot be known yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("instance type {0:?} not found")]
pub struct UnknownInstanceType(pub String);

/// The instance's request: explicit cpus+memory win; else its type's.
pub fn request_of(
    instance: &Instance,
    types: &Cache<InstanceType>,
) -> Result<Request, UnknownInstanceType> {
    let spec = &instance.spec;
    if let (Some(cpus), Some(mem)) = (spec.cpus, spec.memory_mib) {
        let disk = spec
            .instance_type
            .as_deref()
            .and_then(|t| types.get(&ObjectRef::new("", t)))
            .map(|t| u64::from(t.spec.root_disk_gib + t.spec.ephemeral_gib))
            .unwrap_or(0);
        return Ok(Request {
            vcpus: u64::from(cpus),
            memory_mib: u64::from(mem),
            disk_gib: disk,
        });
    }
    let name = spec
        .instance_type
        .as_deref()
        .unwrap_or(DEFAULT_INSTANCE_TYPE);
    let t = types
        .get(&ObjectRef::new("", name))
        .ok_or_else(|| UnknownInstanceType(name.to_string()))?;
    Ok(Request {
        vcpus: u64::from(t.spec.vcpus),
        memory_mib: u64::from(t.spec.memory_mib),
        disk_gib: u64::from(t.spec.root_disk_gib + t.spec.ephemeral_gib),
    })
}
