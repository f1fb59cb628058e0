//! The domain an instance becomes: its size (from its instance type), its
//! NICs, its disks in boot order (root, volumes, the NoCloud seed) made on
//! the host, or why it cannot be built yet ([`Wait`]); and the volumes
//! hot-plugged into a domain that exists.

use corral_api_types::{ec2, ImageFormat, Instance, InstanceType, Volume, DEFAULT_INSTANCE_TYPE};
use corral_runtime::error_chain;

use super::objects::Objects;
use super::{blocking, Agent, AgentError};
use crate::host::{Seed, ROOT_DEVICE, SEED_DEVICE};
use crate::hypervisor::{DiskSpec, DomainSpec, KernelBoot};

/// How an instance's root disk comes to be.
enum RootDisk {
    /// A disk that exists (a boot volume).
    Ready(DiskSpec),
    /// An overlay the host makes on an image's file.
    Overlay {
        base: std::path::PathBuf,
        format: String,
        min_bytes: u64,
    },
}

/// An instance's root disk from an image, and how it boots.
struct ImageRoot {
    disk: RootDisk,
    kernel: Option<KernelBoot>,
}

impl Agent {
    async fn instance_type(&self, name: &str) -> Result<InstanceType, AgentError> {
        if let Some(t) = self.types.lock().expect("types").get(name) {
            return Ok(t.clone());
        }
        let t: InstanceType = self
            .api
            .get(&format!("/v1/instancetypes/{name}"))
            .await?
            .ok_or_else(|| AgentError::Other(format!("instance type {name:?} not found")))?;
        self.types
            .lock()
            .expect("types")
            .insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// vcpus, memory and root disk size (GiB) of an instance.
    async fn sizes(&self, i: &Instance) -> Result<(u32, u64, u32), AgentError> {
        match (i.spec.cpus, i.spec.memory_mib) {
            (Some(c), Some(m)) => Ok((c, u64::from(m), 0)),
            _ => {
                let t = self
                    .instance_type(
                        i.spec
                            .instance_type
                            .as_deref()
                            .unwrap_or(DEFAULT_INSTANCE_TYPE),
                    )
                    .await?;
                Ok((
                    t.spec.vcpus,
                    u64::from(t.spec.memory_mib),
                    t.spec.root_disk_gib,
                ))
            }
        }
    }

    /// Everything a domain needs, or why it cannot be built yet: its NICs,
    /// its root disk (from an image, or a volume), its volumes and its
    /// seed, made on the host. `objects`: what the host networking pass
    /// just read (anything else is read here).
    pub(super) async fn domain_spec(
        &self,
        i: &Instance,
        mut objects: Objects,
    ) -> Result<Result<DomainSpec, Wait>, AgentError> {
        let (vcpus, memory_mib, root_gib) = self.sizes(i).await?;
        let nics = match self.nic_specs(i, &mut objects).await? {
            Ok(n) => n,
            Err(w) => return Ok(Err(w)),
        };
        let uid = i.metadata.uid.clone();
        let mut spec = DomainSpec {
            node: self.opts.node.clone(),
            uid: uid.clone(),
            project: i.metadata.project.clone(),
            instance: i.metadata.name.clone(),
            vcpus,
            memory_mib,
            nics,
            console_log: self.on_host().console_log(&uid),
            ..Default::default()
        };
        let project = i.metadata.project.as_str();
        let mut volume_disks = Vec::new();
        for (volume, device) in attachments(i) {
            match self.volume_disk(project, &volume, &device).await? {
                Ok(d) => volume_disks.push(d),
                Err(w) => return Ok(Err(w)),
            }
        }
        let root = match i.spec.image.as_deref() {
            Some(image) => {
                let root = match self.root_disk(i, image, root_gib, &mut objects).await? {
                    Ok(r) => r,
                    Err(w) => return Ok(Err(w)),
                };
                spec.kernel = root.kernel;
                root.disk
            }
            // Boot from volume: the volume is the root disk.
            None => {
                let Some(boot) = i.spec.boot_volume.as_deref() else {
                    return Ok(Err(Wait::new(
                        "NoBootDisk",
                        "the instance names neither an image nor a boot volume".into(),
                    )));
                };
                match self.volume_disk(project, boot, ROOT_DEVICE).await? {
                    Ok(d) => RootDisk::Ready(d),
                    Err(w) => return Ok(Err(w)),
                }
            }
        };
        let seed = match self.seed(i, &mut objects).await? {
            Ok(s) => s,
            Err(w) => return Ok(Err(w)),
        };
        let (root, seed_disk) = self
            .host_call(move |h| {
                let root = match root {
                    RootDisk::Ready(d) => d,
                    RootDisk::Overlay {
                        base,
                        format,
                        min_bytes,
                    } => h.ensure_root_disk(&uid, &base, &format, min_bytes)?,
                };
                Ok((root, h.write_seed(&uid, &seed)?))
            })
            .await?;
        spec.disks = std::iter::once(root)
            .chain(volume_disks)
            .chain(std::iter::once(seed_disk))
            .collect();
        Ok(Ok(spec))
    }

    /// The root disk an instance boots from `image`: an overlay on the
    /// image's file (its kernel and ramdisk pulled too, for direct kernel
    /// boot), made on the host once the seed is known.
    async fn root_disk(
        &self,
        i: &Instance,
        image_name: &str,
        root_gib: u32,
        objects: &mut Objects,
    ) -> Result<Result<ImageRoot, Wait>, AgentError> {
        let project = i.metadata.project.as_str();
        let for_ = format!("instances/{}", i.metadata.name);
        let found = match self.find_image(objects, project, image_name, &for_).await? {
            Ok(x) => x,
            Err(w) => return Ok(Err(w)),
        };
        let format = match found.image.as_ref().map(|img| img.spec.format) {
            Some(ImageFormat::Iso) => {
                return Ok(Err(Wait::new(
                    "UnsupportedImage",
                    format!("image {image_name:?} is an ISO; instances boot from disk images"),
                )))
            }
            Some(ImageFormat::Raw) => "raw",
            Some(ImageFormat::Qcow2) | None => "qcow2",
        };
        let base = self.image_file(&found, project, image_name, &for_).await?;
        let mut kernel = None;
        if let Some(img) = &found.image {
            if let Some(k) = img.spec.kernel.as_deref() {
                let kernel_file = match self.find_image(objects, project, k, &for_).await? {
                    Ok(x) => self.image_file(&x, project, k, &for_).await?,
                    Err(w) => return Ok(Err(w)),
                };
                let initrd = match img.spec.ramdisk.as_deref() {
                    Some(r) => match self.find_image(objects, project, r, &for_).await? {
                        Ok(x) => Some(self.image_file(&x, project, r, &for_).await?),
                        Err(w) => return Ok(Err(w)),
                    },
                    None => None,
                };
                kernel = Some(KernelBoot {
                    kernel: kernel_file,
                    initrd,
                    cmdline: img
                        .spec
                        .kernel_args
                        .clone()
                        .unwrap_or_else(|| "console=ttyS0 root=/dev/vda".into()),
                });
            }
        }
        Ok(Ok(ImageRoot {
            disk: RootDisk::Overlay {
                base,
                format: format.to_string(),
                min_bytes: u64::from(root_gib) << 30,
            },
            kernel,
        }))
    }

    /// The NoCloud data of an instance, or why not yet.
    async fn seed(
        &self,
        i: &Instance,
        objects: &mut Objects,
    ) -> Result<Result<Seed, Wait>, AgentError> {
        let project = i.metadata.project.as_str();
        let uid = &i.metadata.uid;
        let for_ = format!("instances/{}", i.metadata.name);
        let mut public_keys = Vec::new();
        if let Some(k) = i.spec.key_name.as_deref() {
            match objects.keypair(&self.api, project, k, &for_).await? {
                Some(kp) => public_keys.push(kp.spec.public_key.clone()),
                None => {
                    return Ok(Err(Wait::new(
                        "WaitingForKeyPair",
                        format!("key pair {k:?} not found"),
                    )))
                }
            }
        }
        Ok(Ok(Seed {
            instance_id: ec2::resource_id("Instance", uid).unwrap_or_else(|| uid.clone()),
            hostname: i.metadata.name.clone(),
            public_keys,
            user_data: i.spec.user_data.clone().unwrap_or_default().into_bytes(),
        }))
    }

    /// The disk of a volume created on this node, or why not yet.
    async fn volume_disk(
        &self,
        project: &str,
        volume: &str,
        device: &str,
    ) -> Result<Result<DiskSpec, Wait>, AgentError> {
        let v = self
            .api
            .get::<Volume>(&format!("/v1/projects/{project}/volumes/{volume}"))
            .await?;
        let status = v
            .as_ref()
            .and_then(|v| v.status.clone())
            .unwrap_or_default();
        let here = status.node_name.as_deref() == Some(self.opts.node.as_str());
        match (&v, here, status.location) {
            (Some(v), true, Some(location)) => Ok(Ok(DiskSpec {
                path: location.into(),
                format: "qcow2".into(),
                target: device.to_string(),
                readonly: false,
                // virtio serials hold 20 bytes: `vol` and the 17 hex
                // digits, as EC2's NVMe volumes show theirs.
                serial: ec2::resource_id("Volume", &v.metadata.uid).map(|id| id.replace('-', "")),
                cdrom: false,
            })),
            (None, ..) => Ok(Err(Wait::new(
                "WaitingForVolume",
                format!("volume {volume:?} not found"),
            ))),
            _ => Ok(Err(Wait::new(
                "WaitingForVolume",
                format!("volume {volume:?} is not created on this node yet"),
            ))),
        }
    }

    /// Hot-plugs and unplugs volumes so the domain has what the instance
    /// lists.
    pub(super) async fn sync_volumes(&self, i: &Instance, name: &str) -> Result<(), AgentError> {
        let hv = self.hv.clone();
        let n = name.to_string();
        let current: Vec<String> = blocking(move || hv.disk_targets(&n))
            .await?
            .into_iter()
            .filter(|t| t != ROOT_DEVICE && t != SEED_DEVICE)
            .collect();
        let desired = attachments(i);
        for (volume, device) in &desired {
            if current.contains(device) {
                continue;
            }
            match self
                .volume_disk(&i.metadata.project, volume, device)
                .await?
            {
                Ok(disk) => {
                    tracing::info!(domain = name, volume = %volume, device = %device, "attaching volume");
                    let hv = self.hv.clone();
                    let n = name.to_string();
                    blocking(move || hv.attach_disk(&n, &disk)).await?;
                }
                Err(wait) => {
                    tracing::debug!(domain = name, reason = wait.reason, "volume not ready")
                }
            }
        }
        for device in current {
            if desired.iter().any(|(_, d)| *d == device) {
                continue;
            }
            tracing::info!(domain = name, device = %device, "detaching volume");
            let hv = self.hv.clone();
            let n = name.to_string();
            if let Err(e) = blocking(move || hv.detach_disk(&n, &device)).await {
                tracing::warn!(domain = name, error = %error_chain(&e), "detaching a volume");
            }
        }
        Ok(())
    }
}

/// (volume, guest device) of each volume attachment; devices not named
/// get the first free of vdb, vdc, ...
fn attachments(i: &Instance) -> Vec<(String, String)> {
    let named: Vec<&str> = i
        .spec
        .volumes
        .iter()
        .filter_map(|a| a.device.as_deref())
        .collect();
    let mut free = (b'b'..=b'y')
        .map(|c| format!("vd{}", c as char))
        .filter(|d| !named.contains(&d.as_str()));
    i.spec
        .volumes
        .iter()
        .filter_map(|a| {
            let device = a.device.clone().or_else(|| free.next())?;
            Some((a.volume.clone(), device))
        })
        .collect()
}

/// Why a domain cannot be built yet.
#[derive(Debug)]
pub(super) struct Wait {
    pub(super) reason: &'static str,
    pub(super) message: String,
}

impl Wait {
    pub(super) fn new(reason: &'static str, message: String) -> Wait {
        Wait { reason, message }
    }
}
