//! Actions: each turns parameters into resource reads and writes and
//! writes the response body. Shared helpers live here.

mod addresses;
mod default_groups;
mod describe;
mod disks;
mod ids;
mod image_register;
mod images;
mod instance_attrs;
mod instance_meta;
mod instance_state;
mod instance_types;
mod instance_view;
mod instance_xml;
mod instances;
mod keypairs;
mod launch;
mod launch_checks;
mod network_interfaces;
mod region;
mod security_groups;
mod snapshots;
mod subnets;
mod tags;
mod volumes;
mod vpcs;

use corral_api_types::auth::Role;
use corral_api_types::{Defaults, Node, ObjectMeta, Resource, Validate, ValidateUpdate};
use corral_store::ResourceStore;

use crate::auth::Caller;
use crate::error::{Ec2Error, Result};
use crate::objects::{self, list_all};
use crate::query::Params;
use crate::server::Ec2Config;
use crate::xml::Xml;

/// One request being served.
pub struct Ctx<'a> {
    pub store: &'a ResourceStore,
    pub caller: &'a Caller,
    pub params: &'a Params,
    pub dry_run: bool,
    pub config: &'a Ec2Config,
    /// Decoded Instances reused while unchanged.
    pub decoded: &'a crate::decoded::DecodedInstances,
    /// The Host the client addressed (DescribeRegions' endpoint).
    pub host: String,
    /// The id the response will carry.
    pub request_id: &'a str,
}

impl Ctx<'_> {
    pub fn project(&self) -> &str {
        &self.caller.project
    }

    /// Stops a DryRun request at the point where it would have acted.
    pub fn gate(&self) -> Result<()> {
        if self.dry_run {
            Err(Ec2Error::dry_run())
        } else {
            Ok(())
        }
    }

    /// A body already holding the opening of this request's success
    /// document, with room for `bytes` more (see [`Xml::document`]).
    pub fn document(&self, bytes: usize) -> Xml {
        Xml::document(
            self.params.get("Action").unwrap_or(""),
            crate::xml::namespace_version(self.params.get("Version")),
            self.request_id,
            bytes,
        )
    }

    /// Every object of a kind in the caller's project.
    pub async fn list<K: Resource>(&self) -> Result<Vec<K>> {
        list_all::<K>(self.store, self.project()).await
    }

    /// [`objects::update`] of the object `name` of the caller's project.
    pub async fn update<K, F>(&self, name: &str, f: F) -> Result<K>
    where
        K: Resource + Validate + ValidateUpdate + Defaults,
        F: FnMut(&mut K) -> Result<()>,
    {
        objects::update(self.store, self.project(), name, f).await
    }

    pub fn account(&self) -> String {
        corral_api_types::ec2::account_id(self.project())
    }

    /// The availability zones: exactly the zones the Nodes are in (a node
    /// naming none is in [`Node::DEFAULT_ZONE`], as the scheduler says),
    /// or that default zone alone while there is no node.
    pub async fn zones(&self) -> Result<Vec<String>> {
        let mut zones: Vec<String> = list_all::<Node>(self.store, "")
            .await?
            .iter()
            .map(|n| n.zone().to_string())
            .collect();
        zones.sort();
        zones.dedup();
        if zones.is_empty() {
            zones.push(Node::DEFAULT_ZONE.to_string());
        }
        Ok(zones)
    }

    /// The availability zone the parameter `param` names, if given: one
    /// of [`Ctx::zones`].
    pub async fn zone_param(&self, param: &str) -> Result<Option<String>> {
        let zones = self.zones().await?;
        match self.params.get_nonempty(param) {
            Some(z) if zones.iter().any(|x| x == z) => Ok(Some(z.to_string())),
            Some(z) => Err(Ec2Error::invalid_value(format!(
                "Invalid availability zone: [{}]",
                crate::query::clip(z)
            ))),
            None => Ok(None),
        }
    }
}

/// The time format of EC2's timestamps.
pub fn ts(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// An object's creation time, in EC2's format.
pub fn created(meta: &ObjectMeta) -> Option<String> {
    meta.creation_timestamp.as_ref().map(ts)
}

/// `<groupSet>` of (group id, group name) items.
pub fn write_group_set(x: &mut Xml, groups: &[(String, String)]) {
    x.set("groupSet", groups, |x, (id, name)| {
        x.leaf("groupId", id).leaf("groupName", name);
    });
}

/// `<return>true</return>`.
pub fn ok_return() -> Xml {
    let mut x = Xml::new();
    x.leaf("return", true);
    x
}

/// Id lists must hold ids of the right shape: `<Kind>.Malformed` otherwise.
pub fn check_ids(ids: &[String], prefixes: &[&str], malformed: &str, what: &str) -> Result<()> {
    for id in ids {
        if !prefixes
            .iter()
            .any(|p| corral_api_types::ec2::is_id_with_prefix(id, p))
        {
            return Err(Ec2Error::client(
                malformed,
                format!("Invalid id: \"{}\" ({what})", crate::query::clip(id)),
            ));
        }
    }
    Ok(())
}

/// Declares the façade's actions once: the table [`ACTIONS`] and
/// [`dispatch`], which refuses a viewer every action that is not a read
/// (`Describe*`, `Get*`) with UnauthorizedOperation, as IAM refuses an
/// action a policy does not allow (before DryRun is looked at).
macro_rules! actions {
    ($ctx:ident, $action:ident; $($name:literal => $call:expr,)*) => {
        /// Every action the façade serves.
        pub const ACTIONS: &[&str] = &[$($name),*];

        pub async fn dispatch($ctx: &Ctx<'_>, $action: &str) -> Result<Xml> {
            if $ctx.caller.role == Role::Viewer && !reads_only($action) && ACTIONS.contains(&$action) {
                return Err(Ec2Error::unauthorized_operation(format!(
                    "You are not authorized to perform this operation: user {} is a viewer of project {}",
                    $ctx.caller.user, $ctx.caller.project
                )));
            }
            match $action {
                $($name => $call,)*
                other => Err(Ec2Error::invalid_action(&crate::query::clip(other))),
            }
        }
    };
}

/// Actions that change nothing: what a viewer may call.
pub fn reads_only(action: &str) -> bool {
    action.starts_with("Describe") || action.starts_with("Get")
}

actions!(ctx, action;
        "DescribeRegions" => region::describe_regions(ctx).await,
        "DescribeAvailabilityZones" => region::describe_zones(ctx).await,
        "DescribeAccountAttributes" => region::describe_account_attributes(ctx).await,
        "CreateKeyPair" => keypairs::create(ctx).await,
        "ImportKeyPair" => keypairs::import(ctx).await,
        "DescribeKeyPairs" => keypairs::describe(ctx).await,
        "DeleteKeyPair" => keypairs::delete(ctx).await,
        "CreateSecurityGroup" => security_groups::create(ctx).await,
        "DescribeSecurityGroups" => security_groups::describe(ctx).await,
        "DeleteSecurityGroup" => security_groups::delete(ctx).await,
        "AuthorizeSecurityGroupIngress" => security_groups::change(ctx, true, true).await,
        "AuthorizeSecurityGroupEgress" => security_groups::change(ctx, false, true).await,
        "RevokeSecurityGroupIngress" => security_groups::change(ctx, true, false).await,
        "RevokeSecurityGroupEgress" => security_groups::change(ctx, false, false).await,
        "RunInstances" => launch::run(ctx).await,
        "DescribeInstances" => instances::describe(ctx).await,
        "TerminateInstances" => instance_state::terminate(ctx).await,
        "StopInstances" => instance_state::stop_start(ctx, false).await,
        "StartInstances" => instance_state::stop_start(ctx, true).await,
        "RebootInstances" => instance_state::reboot(ctx).await,
        "GetConsoleOutput" => instances::console_output(ctx).await,
        "DescribeInstanceStatus" => instance_attrs::describe_status(ctx).await,
        "DescribeInstanceAttribute" => instance_attrs::describe_attribute(ctx).await,
        "ModifyInstanceAttribute" => instance_attrs::modify_attribute(ctx).await,
        "DescribeInstanceCreditSpecifications" => instance_types::describe_credits(ctx).await,
        "DescribeInstanceTypes" => instance_types::describe(ctx).await,
        "DescribeInstanceTypeOfferings" => instance_types::describe_offerings(ctx).await,
        "ModifyInstanceMetadataOptions" => instance_meta::modify_options(ctx).await,
        "GetPasswordData" => instance_meta::password_data(ctx).await,
        "CreateTags" => tags::create(ctx).await,
        "DeleteTags" => tags::delete(ctx).await,
        "DescribeTags" => tags::describe(ctx).await,
        "CreateVolume" => volumes::create(ctx).await,
        "DescribeVolumes" => volumes::describe(ctx).await,
        "DeleteVolume" => volumes::delete(ctx).await,
        "AttachVolume" => volumes::attach(ctx).await,
        "DetachVolume" => volumes::detach(ctx).await,
        "CreateSnapshot" => snapshots::create_snapshot(ctx).await,
        "DescribeSnapshots" => snapshots::describe_snapshots(ctx).await,
        "DeleteSnapshot" => snapshots::delete_snapshot(ctx).await,
        "DescribeImages" => images::describe(ctx).await,
        "DeregisterImage" => images::deregister(ctx).await,
        "RegisterImage" => image_register::register(ctx).await,
        "DescribeImageAttribute" => image_register::describe_attribute(ctx).await,
        "ModifyImageAttribute" => image_register::modify_attribute(ctx).await,
        "AllocateAddress" => addresses::allocate(ctx).await,
        "DescribeAddresses" => addresses::describe(ctx).await,
        "AssociateAddress" => addresses::associate(ctx).await,
        "DisassociateAddress" => addresses::disassociate(ctx).await,
        "ReleaseAddress" => addresses::release(ctx).await,
        "DescribeVpcs" => vpcs::describe_vpcs(ctx).await,
        "DescribeSubnets" => subnets::describe_subnets(ctx).await,
        "DescribeVpcAttribute" => vpcs::describe_vpc_attribute(ctx).await,
        "CreateVpc" => vpcs::create_vpc(ctx).await,
        "CreateSubnet" => subnets::create_subnet(ctx).await,
        "DeleteSubnet" => subnets::delete_subnet(ctx).await,
        "CreateDefaultVpc" => vpcs::create_default_vpc(ctx).await,
        "DeleteVpc" => vpcs::delete_vpc(ctx).await,
        "DescribeNetworkInterfaces" => network_interfaces::describe(ctx).await,
        "DescribeRouteTables" => subnets::describe_route_tables(ctx).await,
);
