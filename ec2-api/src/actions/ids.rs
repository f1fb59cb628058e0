//! The kinds of EC2 id the actions take: the parameter that names one, the
//! shape its ids must have (`<Kind>.Malformed` otherwise) and the
//! `<Kind>.NotFound` error for one that names nothing.

use super::check_ids;
use crate::error::{Ec2Error, Result};
use crate::objects::Tagged;
use crate::query::{clip, Params};

/// One kind of EC2 id.
pub struct IdKind {
    /// The parameter naming one (`VolumeId`); `<param>.N` lists several.
    pub param: &'static str,
    /// What AWS's messages call that list (`volumeIds`).
    pub list_name: &'static str,
    /// The prefixes its ids may have.
    pub prefixes: &'static [&'static str],
    /// The error code of an id of another shape.
    pub malformed: &'static str,
    /// What that error's message calls the id (`volume id`).
    pub what: &'static str,
    /// The error code of an id that names nothing.
    pub not_found_code: &'static str,
    /// That error's message for an id.
    pub not_found_message: fn(&str) -> String,
}

impl IdKind {
    /// `<Kind>.Malformed` unless every id has this kind's shape.
    pub fn check(&self, ids: &[String]) -> Result<()> {
        check_ids(ids, self.prefixes, self.malformed, self.what)
    }

    /// [`IdKind::check`] for one id.
    pub fn check_one(&self, id: &str) -> Result<()> {
        self.check(&[id.to_string()])
    }

    /// The ids of `<param>.N`, checked.
    pub fn list(&self, params: &Params) -> Result<Vec<String>> {
        let ids = params.list(self.param)?;
        self.check(&ids)?;
        Ok(ids)
    }

    /// The id of the required `<param>`, checked.
    pub fn required(&self, params: &Params) -> Result<String> {
        let id = params.required(self.param)?.to_string();
        self.check_one(&id)?;
        Ok(id)
    }

    /// `<Kind>.NotFound` for `id`.
    pub fn not_found(&self, id: &str) -> Ec2Error {
        Ec2Error::not_found(self.not_found_code, (self.not_found_message)(&clip(id)))
    }

    /// The item whose id (by `id_of`) is `id`, or `<Kind>.NotFound`.
    pub fn find<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        id: &str,
        id_of: impl Fn(&T) -> String,
    ) -> Result<T> {
        items
            .into_iter()
            .find(|i| id_of(i) == id)
            .ok_or_else(|| self.not_found(id))
    }

    /// The resource name of the object of `objects` with EC2 id `id`
    /// (checked first).
    pub fn find_named<K: Tagged>(&self, objects: &[K], id: &str) -> Result<String> {
        self.check_one(id)?;
        let o = self.find(objects, id, |o| o.ec2_id())?;
        Ok(o.meta().name.clone())
    }
}

pub const INSTANCE: IdKind = IdKind {
    param: "InstanceId",
    list_name: "instanceIds",
    prefixes: &["i"],
    malformed: "InvalidInstanceID.Malformed",
    what: "instance id",
    not_found_code: "InvalidInstanceID.NotFound",
    not_found_message: |id| format!("The instance ID '{id}' does not exist"),
};

pub const VOLUME: IdKind = IdKind {
    param: "VolumeId",
    list_name: "volumeIds",
    prefixes: &["vol"],
    malformed: "InvalidVolumeID.Malformed",
    what: "volume id",
    not_found_code: "InvalidVolume.NotFound",
    not_found_message: |id| format!("The volume '{id}' does not exist."),
};

pub const SNAPSHOT: IdKind = IdKind {
    param: "SnapshotId",
    list_name: "snapshotIds",
    prefixes: &["snap"],
    malformed: "InvalidSnapshotID.Malformed",
    what: "snapshot id",
    not_found_code: "InvalidSnapshot.NotFound",
    not_found_message: |id| format!("The snapshot '{id}' does not exist."),
};

pub const IMAGE: IdKind = IdKind {
    param: "ImageId",
    list_name: "imageIds",
    prefixes: &["ami", "aki", "ari"],
    malformed: "InvalidAMIID.Malformed",
    what: "image id",
    not_found_code: "InvalidAMIID.NotFound",
    not_found_message: |id| format!("The image id '[{id}]' does not exist"),
};

pub const VPC: IdKind = IdKind {
    param: "VpcId",
    list_name: "vpcIds",
    prefixes: &["vpc"],
    malformed: "InvalidVpcID.Malformed",
    what: "vpc id",
    not_found_code: "InvalidVpcID.NotFound",
    not_found_message: |id| format!("The vpc ID '{id}' does not exist"),
};

pub const SUBNET: IdKind = IdKind {
    param: "SubnetId",
    list_name: "subnetIds",
    prefixes: &["subnet"],
    malformed: "InvalidSubnetID.Malformed",
    what: "subnet id",
    not_found_code: "InvalidSubnetID.NotFound",
    not_found_message: |id| format!("The subnet ID '{id}' does not exist"),
};

pub const NETWORK_INTERFACE: IdKind = IdKind {
    param: "NetworkInterfaceId",
    list_name: "networkInterfaceIds",
    prefixes: &["eni"],
    malformed: "InvalidNetworkInterfaceID.Malformed",
    what: "network interface id",
    not_found_code: "InvalidNetworkInterfaceID.NotFound",
    not_found_message: |id| format!("The networkInterface ID '{id}' does not exist"),
};

pub const ROUTE_TABLE: IdKind = IdKind {
    param: "RouteTableId",
    list_name: "routeTableIds",
    prefixes: &["rtb"],
    malformed: "InvalidRouteTableID.Malformed",
    what: "route table id",
    not_found_code: "InvalidRouteTableID.NotFound",
    not_found_message: |id| format!("The routeTable ID '{id}' does not exist"),
};

pub const SECURITY_GROUP: IdKind = IdKind {
    param: "GroupId",
    list_name: "groupIds",
    prefixes: &["sg"],
    malformed: "InvalidGroupId.Malformed",
    what: "security group id",
    not_found_code: "InvalidGroup.NotFound",
    not_found_message: |id| format!("The security group '{id}' does not exist"),
};

pub const KEY_PAIR: IdKind = IdKind {
    param: "KeyPairId",
    list_name: "keyPairIds",
    prefixes: &["key"],
    malformed: "InvalidKeyPair.Malformed",
    what: "key pair id",
    not_found_code: "InvalidKeyPair.NotFound",
    not_found_message: |id| format!("The key pair '{id}' does not exist"),
};

pub const ALLOCATION: IdKind = IdKind {
    param: "AllocationId",
    list_name: "allocationIds",
    prefixes: &["eipalloc"],
    malformed: "InvalidAllocationID.Malformed",
    what: "allocation id",
    not_found_code: "InvalidAllocationID.NotFound",
    not_found_message: |id| format!("The allocation ID '{id}' does not exist"),
};
