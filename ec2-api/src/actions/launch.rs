//! RunInstances: checks what a launch asks for, then writes its Instances
//! (named by their `i-` id, powerState Running) and the volumes their
//! block device mappings ask for; all or none when fewer than MinCount
//! can be made. Also the checks of instance parameters that
//! ModifyInstanceAttribute shares (instance type, user data, shutdown
//! behavior).

use std::collections::BTreeMap;

use base64::Engine;
use corral_api_types::ec2::{
    instance_id, reservation_id, resource_id, subnet_id, CLIENT_TOKEN_ANNOTATION,
    DISABLE_API_STOP_ANNOTATION, LAUNCH_INDEX_ANNOTATION, RESERVATION_ANNOTATION,
    SHUTDOWN_BEHAVIOR_ANNOTATION,
};
use corral_api_types::{
    Image, ImageType, Instance, InstanceSpec, InstanceType, KeyPair, MetadataOptions, Network, Nic,
    PowerState, Resource, SecurityGroup, Snapshot, Volume, VolumeAttachment, VolumeSource,
    VolumeSpec,
};

use super::disks::{disk_requests, DiskRequest};
use super::ids::{IMAGE, KEY_PAIR, SECURITY_GROUP, SUBNET};
use super::instance_view::{reservation, Lookup};
use super::instance_xml::write_reservation_body;
use super::vpcs::{default_network, has_subnet};
use super::Ctx;
use crate::error::{Ec2Error, Result};
use crate::objects::{
    self, client_token, earlier, ec2_name, new_uid, stamp_token, tag_specs, Tagged,
};
use crate::query::{clip, Params};
use crate::xml::Xml;

/// The AMI an instance booted from a volume was launched with.
pub const IMAGE_ANNOTATION: &str = "ec2.corral/image-id";
/// Most instances one RunInstances call may launch.
pub const MAX_COUNT: i64 = 100;

/// An instance type must exist.
pub async fn check_instance_type(ctx: &Ctx<'_>, name: &str) -> Result<()> {
    if ctx.store.get::<InstanceType>("", name).await?.is_none() {
        return Err(Ec2Error::invalid_value(format!(
            "Invalid value '{}' for InstanceType.",
            clip(name)
        )));
    }
    Ok(())
}

/// User data as sent: base64 of UTF-8 text.
pub fn decode_user_data(b64: &str) -> Result<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| Ec2Error::invalid_value("Invalid BASE64 encoding of user data"))?;
    String::from_utf8(bytes).map_err(|_| Ec2Error::invalid_value("User data must be UTF-8 text"))
}

/// An instance-initiated shutdown behavior: `stop` or `terminate`.
pub fn check_shutdown_behavior(s: &str) -> Result<()> {
    match s {
        "stop" | "terminate" => Ok(()),
        other => Err(Ec2Error::invalid_value(format!(
            "Invalid shutdown behavior: {}",
            clip(other)
        ))),
    }
}

/// What a launch makes of each instance, checked.
struct Launch<'p> {
    params: &'p Params,
    project: String,
    token: Option<String>,
    image: Image,
    image_id: String,
    instance_type: Option<String>,
    key_name: Option<String>,
    security_groups: Vec<String>,
    fixed_ip: Option<String>,
    zone: Option<String>,
    user_data: Option<String>,
    shutdown: Option<String>,
    disks: Vec<DiskRequest>,
    tags: BTreeMap<String, String>,
    volume_tags: BTreeMap<String, String>,
    disable_termination: bool,
    disable_stop: bool,
    metadata_options: MetadataOptions,
}

pub async fn run(ctx: &Ctx<'_>) -> Result<Xml> {
    // terraform names its subnet and groups in NetworkInterface.1; the one
    // form that means SubnetId/SecurityGroupId.N is read as those, and any
    // parameter launch does not honour is refused, never dropped.
    let flat = super::launch_checks::flatten_network_interface(ctx.params)?;
    let p = flat.as_ref().unwrap_or(ctx.params);
    super::launch_checks::refuse_unsupported(p)?;
    let project = ctx.project().to_string();
    let image_id = IMAGE.required(p)?;
    let min = p
        .int("MinCount")?
        .ok_or_else(|| Ec2Error::missing("MinCount"))?;
    let max = p
        .int("MaxCount")?
        .ok_or_else(|| Ec2Error::missing("MaxCount"))?;
    if min < 1 || max < min || max > MAX_COUNT {
        return Err(Ec2Error::invalid_value(format!(
            "MinCount and MaxCount must satisfy 1 <= MinCount <= MaxCount <= {MAX_COUNT}"
        )));
    }
    let token = client_token(p)?;
    // Only instances an earlier call with this token made matter (the
    // decoded memo: no JSON decoding of the whole project per launch).
    let existing: Vec<Instance> = match &token {
        None => Vec::new(),
        Some(t) => ctx
            .decoded
            .list(ctx.store, &project)
            .await?
            .iter()
            .filter(|e| e.instance.metadata.annotations.get(CLIENT_TOKEN_ANNOTATION) == Some(t))
            .map(|e| Instance::clone(&e.instance))
            .collect(),
    };
    if let Some(found) = earlier(&existing, token.as_deref(), p)? {
        return respond_reservation(ctx, found).await;
    }
    let images = ctx.list::<Image>().await?;
    let image = IMAGE.find(images, &image_id, |i| i.ec2_id())?;
    if image.spec.image_type != ImageType::Machine {
        return Err(Ec2Error::invalid_value(format!(
            "The image {image_id} is not a machine image"
        )));
    }
    let instance_type = match p.get_nonempty("InstanceType") {
        Some(t) => {
            check_instance_type(ctx, t).await?;
            Some(t.to_string())
        }
        None => None,
    };
    let key_name = match p.get_nonempty("KeyName") {
        Some(k) => {
            let keys = ctx.list::<KeyPair>().await?;
            let key = keys
                .iter()
                .find(|x| ec2_name(&x.metadata) == k)
                .ok_or_else(|| KEY_PAIR.not_found(k))?;
            Some(key.metadata.name.clone())
        }
        None => None,
    };
    let groups = ctx.list::<SecurityGroup>().await?;
    let mut sgs = Vec::new();
    for n in p.list("SecurityGroup")? {
        let g = groups
            .iter()
            .find(|g| ec2_name(&g.metadata) == n)
            .ok_or_else(|| SECURITY_GROUP.not_found(&n))?;
        sgs.push(g.metadata.name.clone());
    }
    let sg_ids = p.list("SecurityGroupId")?;
    SECURITY_GROUP.check(&sg_ids)?;
    for id in sg_ids {
        let g = SECURITY_GROUP.find(&groups, &id, |g| g.ec2_id())?;
        if !sgs.contains(&g.metadata.name) {
            sgs.push(g.metadata.name.clone());
        }
    }
    let networks = ctx.list::<Network>().await?;
    // The subnet's Network; without a SubnetId the default VPC, made
    // when missing (after the DryRun gate below).
    let subnet = match p.get_nonempty("SubnetId") {
        Some(s) => {
            let with_subnet = networks.iter().filter(|n| has_subnet(n));
            let n = SUBNET.find(with_subnet, s, |n| subnet_id(&n.metadata.uid))?;
            Some(n.metadata.name.clone())
        }
        None => None,
    };
    let fixed_ip = p.get_nonempty("PrivateIpAddress").map(str::to_string);
    if fixed_ip.is_some() && max > 1 {
        return Err(Ec2Error::invalid_combination(
            "PrivateIpAddress can only be used with MaxCount 1",
        ));
    }
    let zone = ctx.zone_param("Placement.AvailabilityZone").await?;
    let user_data = p
        .get_nonempty("UserData")
        .map(decode_user_data)
        .transpose()?;
    let shutdown = match p.get_nonempty("InstanceInitiatedShutdownBehavior") {
        Some(s) => {
            check_shutdown_behavior(s)?;
            Some(s.to_string())
        }
        None => None,
    };
    let snapshots = if p.get("BlockDeviceMapping.1.DeviceName").is_some() {
        ctx.list::<Snapshot>().await?
    } else {
        vec![]
    };
    let mut launch = Launch {
        params: p,
        project: project.clone(),
        token,
        image,
        image_id,
        instance_type,
        key_name,
        security_groups: sgs,
        fixed_ip,
        zone,
        user_data,
        shutdown,
        disks: disk_requests(p, &snapshots)?,
        tags: tag_specs(p, "instance")?,
        volume_tags: tag_specs(p, "volume")?,
        disable_termination: p.bool("DisableApiTermination")?.unwrap_or(false),
        disable_stop: p.bool("DisableApiStop")?.unwrap_or(false),
        metadata_options: super::instance_meta::read_options(
            p,
            "MetadataOptions.",
            MetadataOptions::default(),
            "RunInstances",
        )?,
    };
    ctx.gate()?;
    let network = match subnet.and_then(|s| networks.into_iter().find(|n| n.metadata.name == s)) {
        Some(n) => n,
        None => default_network(ctx).await?,
    };
    if let Some(ip) = &launch.fixed_ip {
        check_private_ip(&network, ip)?;
    }
    // No group named: the VPC's default group, as in EC2.
    if launch.security_groups.is_empty() {
        let g = super::default_groups::default_group(ctx, &network).await?;
        launch.security_groups.push(g.metadata.name);
    }
    let network = network.metadata.name;

    let first_uid = new_uid(&project, Instance::KIND, launch.token.as_deref(), 0);
    let reservation = reservation_id(&first_uid);
    let mut created = Vec::new();
    // The volumes made for each created instance, for a rollback.
    let mut volumes_of: Vec<Vec<String>> = Vec::new();
    for n in 0..max as usize {
        let uid = if n == 0 {
            first_uid.clone()
        } else {
            new_uid(&project, Instance::KIND, launch.token.as_deref(), n)
        };
        match launch.one(ctx, n, uid, &network, &reservation).await {
            Ok((i, volumes)) => {
                created.push(i);
                volumes_of.push(volumes);
            }
            Err(Failed::Instance(e))
                if e.code == "IncorrectState" && launch.token.is_some() && n == 0 =>
            {
                // A concurrent retry with the same token won the race.
                let again = ctx.list::<Instance>().await?;
                let found = earlier(&again, launch.token.as_deref(), p)?.ok_or(e)?;
                return respond_reservation(ctx, found).await;
            }
            Err(Failed::Instance(e) | Failed::Volume(e)) => {
                if n >= min as usize {
                    break;
                }
                // Fewer than MinCount: EC2 launches all or none.
                roll_back(ctx, &created, &volumes_of).await;
                return Err(e);
            }
        }
    }
    tracing::info!(project, count = created.len(), reservation, "RunInstances");
    respond_reservation(ctx, created).await
}

/// `PrivateIpAddress` must be a usable address of the subnet (not its
/// network, broadcast or gateway address), as AWS checks before it
/// launches anything.
fn check_private_ip(network: &Network, ip: &str) -> Result<()> {
    let Some(addr) = corral_api_types::net::parse_ipv4(ip) else {
        return Err(Ec2Error::invalid_value(format!(
            "Invalid value '{}' for PrivateIpAddress: not an IPv4 address",
            clip(ip)
        )));
    };
    let Some((cidr, gateway)) = network.spec.gateway() else {
        return Ok(());
    };
    if !cidr.is_host(addr) {
        return Err(Ec2Error::invalid_value(format!(
            "Address {addr} does not fall within the subnet's address range ({})",
            network.spec.cidr
        )));
    }
    if addr == gateway {
        return Err(Ec2Error::client(
            "InvalidIPAddress.InUse",
            format!("Address {addr} is in use (the subnet's gateway)"),
        ));
    }
    Ok(())
}

/// Why one instance of a launch could not be made (its volumes are
/// removed again).
enum Failed {
    Volume(Ec2Error),
    Instance(Ec2Error),
}

impl Launch<'_> {
    /// Makes instance `n` (uid `uid`) and its volumes: the instance and
    /// the names of the volumes.
    async fn one(
        &self,
        ctx: &Ctx<'_>,
        n: usize,
        uid: String,
        network: &str,
        reservation: &str,
    ) -> Result<(Instance, Vec<String>), Failed> {
        let mut spec = InstanceSpec {
            instance_type: self.instance_type.clone(),
            image: Some(self.image.metadata.name.clone()),
            nics: vec![Nic {
                network: network.to_string(),
                fixed_ip: self.fixed_ip.clone(),
                security_groups: self.security_groups.clone(),
                mac: None,
            }],
            key_name: self.key_name.clone(),
            user_data: self.user_data.clone(),
            availability_zone: self.zone.clone(),
            power_state: PowerState::Running,
            disable_api_termination: self.disable_termination,
            tags: self.tags.clone(),
            metadata_options: self.metadata_options,
            ..Default::default()
        };
        let mut made_volumes = Vec::new();
        let mut names = Vec::new();
        for (d, disk) in self.disks.iter().enumerate() {
            let v = match self.volume(ctx, n, d, disk).await {
                Ok(v) => v,
                Err(e) => {
                    cleanup(ctx, &made_volumes).await;
                    return Err(Failed::Volume(e));
                }
            };
            made_volumes.push(v.metadata.name.clone());
            match &disk.device {
                None => {
                    spec.image = None;
                    spec.boot_volume = Some(v.metadata.name.clone());
                }
                Some(dev) => {
                    // EC2 shows the device name the mapping gave.
                    names.push(super::volumes::attachment_annotation(
                        dev,
                        &v.metadata.name,
                        &disk.name,
                        None,
                    ));
                    spec.volumes.push(VolumeAttachment {
                        volume: v.metadata.name.clone(),
                        device: Some(dev.clone()),
                        delete_on_termination: disk.delete_on_termination,
                    })
                }
            }
        }
        let mut inst = Instance::new(&self.project, &instance_id(&uid), spec);
        inst.metadata.uid = uid;
        let a = &mut inst.metadata.annotations;
        a.extend(names);
        a.insert(RESERVATION_ANNOTATION.into(), reservation.to_string());
        a.insert(LAUNCH_INDEX_ANNOTATION.into(), n.to_string());
        if self.disable_stop {
            a.insert(DISABLE_API_STOP_ANNOTATION.into(), "true".into());
        }
        if let Some(s) = &self.shutdown {
            a.insert(SHUTDOWN_BEHAVIOR_ANNOTATION.into(), s.clone());
        }
        if inst.spec.boot_volume.is_some() {
            a.insert(IMAGE_ANNOTATION.into(), self.image_id.clone());
        }
        stamp_token(&mut inst.metadata, self.token.as_deref(), self.params);
        match objects::create(ctx.store, inst).await {
            Ok(i) => Ok((i, made_volumes)),
            Err(e) => {
                cleanup(ctx, &made_volumes).await;
                Err(Failed::Instance(e))
            }
        }
    }

    /// Creates the volume disk `d` of instance `n` asks for.
    async fn volume(
        &self,
        ctx: &Ctx<'_>,
        n: usize,
        d: usize,
        disk: &DiskRequest,
    ) -> Result<Volume> {
        let token = self.token.as_deref().map(|t| format!("{t}/{n}"));
        let vuid = new_uid(&self.project, Volume::KIND, token.as_deref(), d);
        let vid = resource_id(Volume::KIND, &vuid).unwrap_or_default();
        let source = match (&disk.snapshot, &disk.device) {
            (Some(s), _) => VolumeSource {
                snapshot: Some(s.clone()),
                ..Default::default()
            },
            (None, None) => VolumeSource {
                image: Some(self.image.metadata.name.clone()),
                ..Default::default()
            },
            (None, Some(_)) => VolumeSource::default(),
        };
        let mut v = Volume::new(
            &self.project,
            &vid,
            VolumeSpec {
                size_gib: disk.size,
                source,
                availability_zone: self.zone.clone(),
                tags: self.volume_tags.clone(),
            },
        );
        v.metadata.uid = vuid;
        objects::create(ctx.store, v).await
    }
}

/// Removes what a launch that could not reach MinCount made.
async fn roll_back(ctx: &Ctx<'_>, instances: &[Instance], volumes: &[Vec<String>]) {
    for i in instances {
        let name = &i.metadata.name;
        let current = match ctx.store.get::<Instance>(ctx.project(), name).await {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(instance = %name, error = %e, "rolling back a launch");
                continue;
            }
        };
        if let Err(e) = objects::delete(ctx.store, &current).await {
            tracing::warn!(instance = %name, error = %e.message, "rolling back a launch");
        }
    }
    for v in volumes {
        cleanup(ctx, v).await;
    }
    // Give the quota back now, not at the quota controller's next pass:
    // the caller's retry must see it.
    if let Err(e) = corral_registry::quota::settle(ctx.store, ctx.project()).await {
        tracing::warn!(error = %e, "recounting the quota after a rolled-back launch");
    }
    tracing::info!(
        count = instances.len(),
        "RunInstances below MinCount: rolled back"
    );
}

async fn cleanup(ctx: &Ctx<'_>, volumes: &[String]) {
    for v in volumes {
        if let Err(e) = ctx.store.delete::<Volume>(ctx.project(), v, None).await {
            tracing::warn!(volume = %v, error = %e, "removing a volume of a failed launch");
        }
    }
}

async fn respond_reservation(ctx: &Ctx<'_>, mut instances: Vec<Instance>) -> Result<Xml> {
    instances.sort_by_key(|i| {
        i.metadata
            .annotations
            .get(LAUNCH_INDEX_ANNOTATION)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
    });
    let l = Lookup::load(ctx).await?;
    let r = instances.first().map(reservation).unwrap_or_default();
    let refs: Vec<&Instance> = instances.iter().collect();
    let mut x = Xml::new();
    write_reservation_body(&mut x, &r, &refs, &l, &ctx.account());
    Ok(x)
}
