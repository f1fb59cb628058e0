//! Elastic IPs: Allocate, Describe, Associate, Disassociate, Release.
//!
//! An EC2 address is an `Address` object named by its `eipalloc-` id. Its
//! pool is the project's Network labelled `corral.dev/address-pool=true`
//! (the first by name), else the Network named `public`
//! (`corral_api_types::kinds::address::pool_network`); a project with
//! neither takes from the operator's pool, chosen by the same rule among
//! the Networks of project `corral-pools` (`spec.pool`), which every
//! project shares — `corral up` makes one. AllocateAddress
//! takes the IP in the pool's allocation table itself — with
//! compare-and-swap, under the owner `Address/<name>` the address
//! controller uses — so the answer carries the public IP at once; the
//! controller finds it held, reports it in `status.ip`, maps it onto the
//! associated NIC and gives it back when the Address is deleted.
//!
//! Associations are `spec.instance`/`spec.nic`; the association id is
//! derived from the Address and the instance NIC, so it is known as soon
//! as the association is written.

use corral_api_types::ec2::{instance_id, network_interface_id};
use corral_api_types::kinds::address::{
    address_association_id, held_ip, pool_network, take_ip, POOL_PROJECT,
};
use corral_api_types::{Address, AddressSpec, Instance, Network, Resource};
use corral_store::StoreError;

use super::ids::{ALLOCATION, INSTANCE, NETWORK_INTERFACE};
use super::{check_ids, Ctx};
use crate::error::{Ec2Error, Result};
use crate::filter::{one, Filters};
use crate::objects::{self, new_uid, tag_specs, Tagged};
use crate::query::clip;
use crate::xml::Xml;

/// `vpc` or `standard`, as the address was allocated.
pub const DOMAIN_ANNOTATION: &str = "ec2.corral/domain";

const FILTERS: &[&str] = &[
    "allocation-id",
    "association-id",
    "domain",
    "instance-id",
    "network-border-group",
    "network-interface-id",
    "network-interface-owner-id",
    "private-ip-address",
    "public-ip",
];

/// An address with what it resolves to.
struct Row {
    a: Address,
    ip: Option<String>,
    assoc: Option<Assoc>,
}

/// Where an address is associated.
struct Assoc {
    instance_id: String,
    instance_name: String,
    nic: usize,
    eni: String,
    private_ip: Option<String>,
    id: String,
}

impl Row {
    fn domain(&self) -> &str {
        self.a
            .metadata
            .annotations
            .get(DOMAIN_ANNOTATION)
            .map(String::as_str)
            .unwrap_or("vpc")
    }
}

/// The project's live addresses, resolved.
async fn rows(ctx: &Ctx<'_>) -> Result<Vec<Row>> {
    let mut networks = ctx.list::<Network>().await?;
    networks.extend(operator_pools(ctx).await?);
    let instances = ctx.list::<Instance>().await?;
    let mut out = Vec::new();
    for a in ctx.list::<Address>().await? {
        if a.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ip = a.status.as_ref().and_then(|s| s.ip.clone()).or_else(|| {
            let (project, pool) = a.pool_key();
            networks
                .iter()
                .find(|n| n.metadata.project == project && n.metadata.name == pool)
                .and_then(|n| held_ip(n, &a.pool_owner()))
        });
        let assoc = a.spec.instance.as_ref().and_then(|name| {
            let i = instances
                .iter()
                .find(|i| &i.metadata.name == name && i.metadata.deletion_timestamp.is_none())?;
            let nic = a.spec.nic.unwrap_or(0) as usize;
            if nic >= i.spec.nics.len() {
                return None;
            }
            Some(Assoc {
                instance_id: instance_id(&i.metadata.uid),
                instance_name: i.metadata.name.clone(),
                nic,
                eni: network_interface_id(&i.metadata.uid, nic),
                private_ip: i.nic(nic).and_then(|n| n.ip()).map(str::to_string),
                id: address_association_id(&a.metadata.uid, &i.metadata.uid, nic),
            })
        });
        out.push(Row { a, ip, assoc });
    }
    Ok(out)
}

fn ip_not_found(ip: &str) -> Ec2Error {
    Ec2Error::not_found(
        "InvalidAddress.NotFound",
        format!("Address '{}' not found.", clip(ip)),
    )
}

/// The address named by `AllocationId` or `PublicIp` (one is required).
fn named<'r>(ctx: &Ctx<'_>, rows: &'r [Row]) -> Result<&'r Row> {
    if let Some(id) = ctx.params.get_nonempty("AllocationId") {
        ALLOCATION.check_one(id)?;
        return ALLOCATION.find(rows, id, |r| r.a.ec2_id());
    }
    if let Some(ip) = ctx.params.get_nonempty("PublicIp") {
        return rows
            .iter()
            .find(|r| r.ip.as_deref() == Some(ip))
            .ok_or_else(|| ip_not_found(ip));
    }
    Err(Ec2Error::missing("AllocationId"))
}

pub async fn allocate(ctx: &Ctx<'_>) -> Result<Xml> {
    let domain = match ctx.params.get_nonempty("Domain") {
        None => "vpc",
        Some(d @ ("vpc" | "standard")) => d,
        Some(other) => {
            return Err(Ec2Error::invalid_value(format!(
                "Invalid value '{}' for Domain. Valid values: vpc, standard",
                clip(other)
            )))
        }
    };
    if let Some(a) = ctx.params.get_nonempty("Address") {
        return Err(Ec2Error::invalid_value(format!(
            "Address: allocating a specific address ({}) is not supported; omit Address",
            clip(a)
        )));
    }
    if let Some(pool) = ctx.params.get_nonempty("PublicIpv4Pool") {
        if pool != "amazon" {
            return Err(Ec2Error::invalid_value(format!(
                "PublicIpv4Pool: unknown pool '{}'; omit it or use 'amazon'",
                clip(pool)
            )));
        }
    }
    let tags = tag_specs(ctx.params, "elastic-ip")?;
    // The project's own pool when it has one, else the operator's.
    let networks = ctx.list::<Network>().await?;
    let (network, operator) = match pool_network(&networks) {
        Some(n) => (n.metadata.name.clone(), None),
        None => {
            let pools = operator_pools(ctx).await?;
            match pool_network(&pools) {
                Some(n) => (String::new(), Some(n.metadata.name.clone())),
                None => {
                    return Err(Ec2Error::client(
                        "InsufficientAddressCapacity",
                        "There are no elastic IP addresses: the operator has no address pool \
                         (a Network named \"public\", or labelled corral.dev/address-pool=true, \
                         in project corral-pools) and this project has none of its own",
                    ))
                }
            }
        }
    };
    let pool = operator.clone().unwrap_or_else(|| network.clone());
    ctx.gate()?;
    let uid = new_uid(ctx.project(), Address::KIND, None, 0);
    let id = corral_api_types::ec2::resource_id(Address::KIND, &uid).unwrap_or_default();
    let mut a = Address::new(
        ctx.project(),
        &id,
        AddressSpec {
            network,
            pool: operator,
            tags,
            ..Default::default()
        },
    );
    a.metadata.uid = uid;
    a.metadata
        .annotations
        .insert(DOMAIN_ANNOTATION.into(), domain.into());
    let a = objects::create(ctx.store, a).await?;
    let reserved = match reserve(ctx, &a).await {
        Ok(r) => r,
        Err(e) => {
            // Leave no address without an IP behind (a retry makes a new one).
            if let Err(cleanup) = release_object(ctx, &a).await {
                tracing::warn!(address = %id, error = %cleanup, "removing an address that got no IP");
            }
            return Err(e);
        }
    };
    let ip = match reserved {
        Some(ip) => ip,
        None => {
            release_object(ctx, &a).await?;
            return Err(Ec2Error::client(
                "InsufficientAddressCapacity",
                format!(
                    "The address pool (network \"{pool}\") has no free address: release \
                     addresses or widen the pool"
                ),
            ));
        }
    };
    let mut x = Xml::new();
    x.leaf("publicIp", ip)
        .leaf("domain", domain)
        .leaf("allocationId", &id)
        .leaf("publicIpv4Pool", "amazon")
        .leaf("networkBorderGroup", &ctx.config.region);
    Ok(x)
}

/// The operator's address pools (Networks in project `corral-pools`).
async fn operator_pools(ctx: &Ctx<'_>) -> Result<Vec<Network>> {
    crate::objects::list_all::<Network>(ctx.store, POOL_PROJECT).await
}

/// Changes the pool Network of `a` (its allocation table) with
/// compare-and-swap, retried with backoff. `change` answers what to return
/// and whether it changed the Network (only then is it written); `gone` is
/// returned when the pool does not exist.
async fn change_pool<T>(
    ctx: &Ctx<'_>,
    a: &Address,
    gone: T,
    mut change: impl FnMut(&mut Network) -> (T, bool),
) -> Result<T> {
    let (project, pool) = a.pool_key();
    for attempt in 0..16u32 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(2 << attempt.min(6))).await;
        }
        let Some(mut n) = ctx.store.get::<Network>(project, pool).await? else {
            return Ok(gone);
        };
        let (out, changed) = change(&mut n);
        if !changed {
            return Ok(out);
        }
        match ctx.store.update(&n).await {
            Ok(_) => return Ok(out),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict {
        key: format!("networks/{project}/{pool}"),
        expected: 0,
        current: 0,
    }
    .into())
}

/// Takes an IP in its pool for the Address `a`.
async fn reserve(ctx: &Ctx<'_>, a: &Address) -> Result<Option<String>> {
    let owner = a.pool_owner();
    change_pool(ctx, a, None, |n| match take_ip(n, &owner) {
        Some((ip, changed)) => (Some(ip), changed),
        None => (None, false),
    })
    .await
}

/// Removes the Address `a`'s entry from its pool.
async fn unreserve(ctx: &Ctx<'_>, a: &Address) -> Result<()> {
    let owner = a.pool_owner();
    change_pool(ctx, a, (), |n| {
        let Some(s) = n.status.as_mut() else {
            return ((), false);
        };
        let before = s.allocations.len();
        s.allocations.retain(|_, who| *who != owner);
        ((), s.allocations.len() != before)
    })
    .await
}

/// Deletes an Address. Once the controller holds it (finalizer) it gives
/// the IP back; before that the façade does.
async fn release_object(ctx: &Ctx<'_>, a: &Address) -> Result<()> {
    let (p, name) = (ctx.project(), a.metadata.name.clone());
    for _ in 0..16 {
        let Some(current) = ctx.store.get::<Address>(p, &name).await? else {
            return Ok(());
        };
        if !current.metadata.finalizers.is_empty() {
            // Marked for deletion; the controller gives the IP back. A
            // conflict (the controller wrote meanwhile) is retried here:
            // an error would make SDKs retry the whole call.
            if current.metadata.deletion_timestamp.is_some() {
                return Ok(());
            }
            let mut marked = current.clone();
            marked.metadata.deletion_timestamp = Some(chrono::Utc::now());
            match ctx.store.update(&marked).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => return Ok(()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        unreserve(ctx, &current).await?;
        let rv = current.metadata.resource_version.clone();
        match ctx.store.delete::<Address>(p, &name, Some(&rv)).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Ec2Error::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "RequestLimitExceeded",
        "Too many concurrent changes to the address; retry the request.",
    ))
}

pub async fn describe(ctx: &Ctx<'_>) -> Result<Xml> {
    let ips = ctx.params.list("PublicIp")?;
    let ids = ALLOCATION.list(ctx.params)?;
    let filters = Filters::parse(ctx.params, FILTERS, true)?;
    ctx.gate()?;
    let mut rows = rows(ctx).await?;
    if let Some(missing) = ids
        .iter()
        .find(|id| !rows.iter().any(|r| r.a.ec2_id() == **id))
    {
        return Err(ALLOCATION.not_found(missing));
    }
    if let Some(missing) = ips
        .iter()
        .find(|ip| !rows.iter().any(|r| r.ip.as_ref() == Some(*ip)))
    {
        return Err(ip_not_found(missing));
    }
    let account = ctx.account();
    let region = ctx.config.region.clone();
    rows.retain(|r| {
        (ids.is_empty() || ids.contains(&r.a.ec2_id()))
            && (ips.is_empty() || r.ip.as_ref().is_some_and(|ip| ips.contains(ip)))
            && filters.matches(
                |f| match f {
                    "allocation-id" => one(r.a.ec2_id()),
                    "association-id" => r.assoc.iter().map(|s| s.id.clone()).collect(),
                    "domain" => one(r.domain()),
                    "instance-id" => r.assoc.iter().map(|s| s.instance_id.clone()).collect(),
                    "network-border-group" => one(region.clone()),
                    "network-interface-id" => r.assoc.iter().map(|s| s.eni.clone()).collect(),
                    "network-interface-owner-id" => {
                        r.assoc.iter().map(|_| account.clone()).collect()
                    }
                    "private-ip-address" => r
                        .assoc
                        .iter()
                        .filter_map(|s| s.private_ip.clone())
                        .collect(),
                    _ => r.ip.iter().cloned().collect(),
                },
                r.a.tags(),
            )
    });
    rows.sort_by_key(|r| r.a.ec2_id());
    let mut x = Xml::new();
    x.set("addressesSet", &rows, |x, r| {
        x.opt("publicIp", r.ip.as_ref())
            .leaf("allocationId", r.a.ec2_id())
            .leaf("domain", r.domain());
        if let Some(s) = &r.assoc {
            x.leaf("instanceId", &s.instance_id)
                .leaf("associationId", &s.id)
                .leaf("networkInterfaceId", &s.eni)
                .leaf("networkInterfaceOwnerId", &account)
                .opt("privateIpAddress", s.private_ip.as_ref());
        }
        x.tags("tagSet", r.a.tags())
            .leaf("publicIpv4Pool", "amazon")
            .leaf("networkBorderGroup", &region);
    });
    Ok(x)
}

/// The instance NIC named by `InstanceId` (its first NIC) or
/// `NetworkInterfaceId`.
async fn target(ctx: &Ctx<'_>) -> Result<(Instance, usize)> {
    let instance = ctx.params.get_nonempty("InstanceId");
    let eni = ctx.params.get_nonempty("NetworkInterfaceId");
    let instances = ctx.list::<Instance>().await?;
    let (i, nic) = match (instance, eni) {
        (None, None) => return Err(Ec2Error::missing("InstanceId")),
        (Some(id), eni) => {
            INSTANCE.check_one(id)?;
            let i = INSTANCE.find(instances, id, |i| instance_id(&i.metadata.uid))?;
            let nic = match eni {
                None => 0,
                Some(e) => (0..i.spec.nics.len())
                    .find(|n| network_interface_id(&i.metadata.uid, *n) == e)
                    .ok_or_else(|| {
                        Ec2Error::invalid_combination(format!(
                            "The network interface '{}' is not attached to instance '{id}'",
                            clip(e)
                        ))
                    })?,
            };
            (i, nic)
        }
        (None, Some(e)) => {
            NETWORK_INTERFACE.check_one(e)?;
            instances
                .into_iter()
                .find_map(|i| {
                    let n = (0..i.spec.nics.len())
                        .find(|n| network_interface_id(&i.metadata.uid, *n) == e)?;
                    Some((i, n))
                })
                .ok_or_else(|| NETWORK_INTERFACE.not_found(e))?
        }
    };
    if i.metadata.deletion_timestamp.is_some() {
        return Err(Ec2Error::incorrect_state(format!(
            "The instance '{}' is not in a valid state for this operation.",
            instance_id(&i.metadata.uid)
        )));
    }
    if nic >= i.spec.nics.len() {
        return Err(Ec2Error::invalid_value(format!(
            "The instance '{}' has no network interface",
            instance_id(&i.metadata.uid)
        )));
    }
    Ok((i, nic))
}

pub async fn associate(ctx: &Ctx<'_>) -> Result<Xml> {
    let reassociate = ctx.params.bool("AllowReassociation")?.unwrap_or(false);
    let rows = rows(ctx).await?;
    let row = named(ctx, &rows)?;
    let (inst, nic) = target(ctx).await?;
    if let Some(want) = ctx.params.get_nonempty("PrivateIpAddress") {
        let have = inst.nic(nic).and_then(|n| n.address).map(|a| a.ip.as_str());
        if have != Some(want) {
            return Err(Ec2Error::invalid_value(format!(
                "PrivateIpAddress: {} is not the address of that network interface",
                clip(want)
            )));
        }
    }
    let id = address_association_id(&row.a.metadata.uid, &inst.metadata.uid, nic);
    if let Some(current) = &row.assoc {
        let same = current.instance_name == inst.metadata.name && current.nic == nic;
        if same {
            ctx.gate()?;
            let mut x = Xml::new();
            x.leaf("return", true).leaf("associationId", id);
            return Ok(x);
        }
        if !reassociate {
            return Err(Ec2Error::client(
                "Resource.AlreadyAssociated",
                format!(
                    "resource {} is already associated with associate-id {}",
                    row.a.ec2_id(),
                    current.id
                ),
            ));
        }
    }
    ctx.gate()?;
    // The NIC's earlier address lets go, as EC2 does.
    for other in rows.iter().filter(|r| {
        r.a.metadata.name != row.a.metadata.name
            && r.assoc
                .as_ref()
                .is_some_and(|s| s.instance_name == inst.metadata.name && s.nic == nic)
    }) {
        set_association(ctx, &other.a.metadata.name, None).await?;
    }
    set_association(ctx, &row.a.metadata.name, Some((&inst.metadata.name, nic))).await?;
    let mut x = Xml::new();
    x.leaf("return", true).leaf("associationId", id);
    Ok(x)
}

async fn set_association(ctx: &Ctx<'_>, name: &str, to: Option<(&str, usize)>) -> Result<()> {
    ctx.update(name, |a: &mut Address| {
        a.spec.instance = to.map(|(i, _)| i.to_string());
        a.spec.nic = to.map(|(_, n)| n as u32);
        Ok(())
    })
    .await?;
    Ok(())
}

pub async fn disassociate(ctx: &Ctx<'_>) -> Result<Xml> {
    let rows = rows(ctx).await?;
    let row = if let Some(id) = ctx.params.get_nonempty("AssociationId") {
        check_ids(
            &[id.to_string()],
            &["eipassoc"],
            "InvalidAssociationID.Malformed",
            "association id",
        )?;
        rows.iter()
            .find(|r| r.assoc.as_ref().is_some_and(|s| s.id == id))
            .ok_or_else(|| {
                Ec2Error::not_found(
                    "InvalidAssociationID.NotFound",
                    format!("The association ID '{id}' does not exist"),
                )
            })?
    } else if let Some(ip) = ctx.params.get_nonempty("PublicIp") {
        rows.iter()
            .find(|r| r.ip.as_deref() == Some(ip))
            .ok_or_else(|| ip_not_found(ip))?
    } else {
        return Err(Ec2Error::missing("AssociationId"));
    };
    ctx.gate()?;
    if row.a.spec.instance.is_some() {
        set_association(ctx, &row.a.metadata.name, None).await?;
    }
    Ok(super::ok_return())
}

pub async fn release(ctx: &Ctx<'_>) -> Result<Xml> {
    let rows = rows(ctx).await?;
    let row = named(ctx, &rows)?;
    if let Some(s) = &row.assoc {
        return Err(Ec2Error::client(
            "InvalidIPAddress.InUse",
            format!(
                "Address {} is in use (association {}); disassociate it first",
                row.ip.as_deref().unwrap_or(&row.a.ec2_id()),
                s.id
            ),
        ));
    }
    ctx.gate()?;
    release_object(ctx, &row.a).await?;
    Ok(super::ok_return())
}
