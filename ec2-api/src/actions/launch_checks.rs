//! RunInstances' parameters that Corral does not act on. A launch that
//! asks for something Corral would not do (a launch template, an IAM
//! instance profile, an IPv6 metadata endpoint, a second network
//! interface…) is refused with an error naming the parameter, rather
//! than launched without it. Values that ask for nothing different, such as the
//! defaults that SDKs and terraform's aws_instance send on every launch
//! (`Monitoring.Enabled=false`, `EbsOptimized=false`,
//! `HibernationOptions.Configured=false`, `Placement.Tenancy=default`…),
//! pass.
//!
//! Also the one network interface form that terraform's aws_instance
//! sends whenever it has a `subnet_id` (`NetworkInterface.1.DeviceIndex=0`,
//! `.SubnetId`, `.SecurityGroupId.N`, `.PrivateIpAddress`), rewritten to
//! the instance-level parameters it means ([`flatten_network_interface`]).
//!
//! `launch::run` calls both first thing.

use crate::error::{Ec2Error, Result};
use crate::query::{clip, Params};

/// Top-level parameters RunInstances reads (launch, disks, tag_specs,
/// client_token, the DryRun gate), and the request's own (action,
/// version, SigV2 signature; SigV4's `X-Amz-*` are let through by
/// prefix).
const HANDLED: &[&str] = &[
    "ImageId",
    "MinCount",
    "MaxCount",
    "ClientToken",
    "InstanceType",
    "KeyName",
    "SecurityGroup",
    "SecurityGroupId",
    "SubnetId",
    "PrivateIpAddress",
    "UserData",
    "InstanceInitiatedShutdownBehavior",
    "BlockDeviceMapping",
    "TagSpecification",
    "DisableApiTermination",
    "DisableApiStop",
    "DryRun",
    "Action",
    "Version",
    "AWSAccessKeyId",
    "Signature",
    "SignatureMethod",
    "SignatureVersion",
    "Timestamp",
    "Expires",
    "SecurityToken",
];

/// Parameters that are lists of structures (`Name.N.Field`): any item is
/// refused, named `Name.N`, with this advice.
const LISTS: &[(&str, &str)] = &[
    (
        "NetworkInterface",
        "use SubnetId, SecurityGroupId and PrivateIpAddress",
    ),
    ("ElasticGpuSpecification", "Corral has no Elastic GPUs"),
    (
        "ElasticInferenceAccelerator",
        "Corral has no Elastic Inference accelerators",
    ),
    ("LicenseSpecification", "Corral has no License Manager"),
    ("Ipv6Address", "Corral's subnets are IPv4 only"),
    (
        "SecondaryInterface",
        "Corral launches instances with one network interface",
    ),
];

/// A parameter's name for a message: whole up to 128 characters (the
/// longest real ones are about 80), shortened past that.
fn name(key: &str) -> String {
    if key.chars().count() <= 128 {
        key.to_string()
    } else {
        key.chars().take(128).chain(['…']).collect()
    }
}

/// The error for `what` (a parameter, or `parameter=value`).
fn unsupported(what: &str, advice: &str) -> Ec2Error {
    Ec2Error::client(
        "UnsupportedOperation",
        format!("RunInstances: {what} is not supported by Corral; {advice}"),
    )
}

/// `key=value` is refused unless `value` is one of `ok`.
fn only(key: &str, value: &str, ok: &[&str], advice: &str) -> Result<()> {
    if ok.contains(&value) {
        Ok(())
    } else {
        Err(unsupported(&format!("{key}={}", clip(value)), advice))
    }
}

/// The boolean `key` is refused unless it is `ok`.
fn only_bool(p: &Params, key: &str, ok: bool, advice: &str) -> Result<()> {
    match p.bool(key)? {
        Some(b) if b != ok => Err(unsupported(&format!("{key}={b}"), advice)),
        _ => Ok(()),
    }
}

/// The integer `key` is refused unless it is 0.
fn only_zero(p: &Params, key: &str, advice: &str) -> Result<()> {
    match p.int(key)? {
        Some(n) if n != 0 => Err(unsupported(&format!("{key}={n}"), advice)),
        _ => Ok(()),
    }
}

/// Refuses every RunInstances parameter that is present and not empty
/// but that the launch would not honour, naming it: `UnsupportedOperation`
/// for what Corral does not do, `InvalidParameterValue` for a malformed
/// value of a parameter it checks here, `UnknownParameter` (as EC2
/// answers) for a name RunInstances does not have. Parameters are looked
/// at in name order, so the first refused is the same on every try.
pub fn refuse_unsupported(p: &Params) -> Result<()> {
    for (key, value) in p.iter() {
        if value.is_empty() {
            // What SDKs send for an unset string (terraform's
            // `Placement.AvailabilityZone=`): asks for nothing.
            continue;
        }
        check(p, key, value)?;
    }
    Ok(())
}

fn check(p: &Params, key: &str, value: &str) -> Result<()> {
    let (head, field) = key.split_once('.').unwrap_or((key, ""));
    if HANDLED.contains(&head) || head.starts_with("X-Amz-") {
        return Ok(());
    }
    if let Some((_, advice)) = LISTS.iter().find(|(name, _)| *name == head) {
        let index = field.split('.').next().unwrap_or_default();
        return Err(unsupported(&format!("{head}.{}", clip(index)), advice));
    }
    match (head, field) {
        ("Placement", "AvailabilityZone") => Ok(()),
        ("Placement", "Tenancy") => only(
            key,
            value,
            &["default"],
            "Corral's instances share hosts (tenancy default)",
        ),
        ("Placement", _) => Err(unsupported(
            &name(key),
            "Corral places instances by Placement.AvailabilityZone only",
        )),
        ("Monitoring", "Enabled") => only_bool(p, key, false, "Corral has no detailed monitoring"),
        ("EbsOptimized", "") => {
            only_bool(p, key, false, "Corral's volumes have no EBS-optimized mode")
        }
        ("HibernationOptions", "Configured") => {
            only_bool(p, key, false, "Corral cannot hibernate instances")
        }
        ("EnclaveOptions", "Enabled") => only_bool(p, key, false, "Corral has no Nitro Enclaves"),
        ("EnablePrimaryIpv6", "") => only_bool(p, key, false, "Corral's subnets are IPv4 only"),
        ("Ipv6AddressCount", "") => only_zero(p, key, "Corral's subnets are IPv4 only"),
        ("CreditSpecification", "CpuCredits") => credits(p, key, value),
        ("CapacityReservationSpecification", "CapacityReservationPreference") => only(
            key,
            value,
            // Neither uses a reservation, and Corral has none.
            &["open", "none"],
            "Corral has no capacity reservations",
        ),
        // Read and checked by launch (instance_meta::read_options).
        (
            "MetadataOptions",
            "HttpEndpoint"
            | "HttpTokens"
            | "HttpPutResponseHopLimit"
            | "InstanceMetadataTags"
            | "HttpProtocolIpv6",
        ) => Ok(()),
        ("CpuOptions", "AmdSevSnp") => only(
            key,
            value,
            &["disabled"],
            "Corral has no AMD SEV-SNP guests",
        ),
        ("PrivateDnsNameOptions", "HostnameType") => only(
            key,
            value,
            &["ip-name"],
            "Corral gives instances no DNS names",
        ),
        (
            "PrivateDnsNameOptions",
            "EnableResourceNameDnsARecord" | "EnableResourceNameDnsAAAARecord",
        ) => only_bool(p, key, false, "Corral gives instances no DNS names"),
        ("MaintenanceOptions", "AutoRecovery") => only(
            key,
            value,
            &["default"],
            "Corral's recovery of instances is not configurable",
        ),
        ("NetworkPerformanceOptions", "BandwidthWeighting") => only(
            key,
            value,
            &["default"],
            "Corral has no bandwidth weighting",
        ),
        _ => Err(refused(head, key)),
    }
}

const IMDS: &str = "the instance metadata options are HttpTokens, HttpEndpoint, HttpPutResponseHopLimit, InstanceMetadataTags and HttpProtocolIpv6";

/// `CreditSpecification.CpuCredits`: Corral has no CPU credits, and
/// DescribeInstanceCreditSpecifications calls every instance `standard`.
/// `unlimited` asks for nothing different either where it is what
/// terraform's aws_instance sends by default (t3 and t3a types).
fn credits(p: &Params, key: &str, value: &str) -> Result<()> {
    let t3 = p.get("InstanceType").is_some_and(|t| t.starts_with("t3"));
    if value == "standard" || (value == "unlimited" && t3) {
        return Ok(());
    }
    Err(unsupported(
        &format!("{key}={}", clip(value)),
        "Corral's instances are all 'standard' (they have no CPU credits)",
    ))
}

/// The refusal of a parameter with no value that passes.
fn refused(head: &str, key: &str) -> Ec2Error {
    let advice = match head {
        "LaunchTemplate" => "give the launch's parameters in the request",
        "IamInstanceProfile" => "Corral has no IAM instance profiles",
        "MetadataOptions" => IMDS,
        "KernelId" | "RamdiskId" => {
            "register the machine image with its KernelId and RamdiskId (RegisterImage)"
        }
        "CpuOptions" => "the instance type sets the vCPUs",
        "CreditSpecification" => "Corral's instances have no CPU credits",
        "InstanceMarketOptions" => "Corral has no Spot market",
        "CapacityReservationSpecification" => "Corral has no capacity reservations",
        "HibernationOptions" => "Corral cannot hibernate instances",
        "EnclaveOptions" => "Corral has no Nitro Enclaves",
        "PrivateDnsNameOptions" => "Corral gives instances no DNS names",
        "MaintenanceOptions" => "Corral's recovery of instances is not configurable",
        "NetworkPerformanceOptions" => "Corral has no bandwidth weighting",
        "Operator" => "Corral has no managed instances",
        "AdditionalInfo" => "it is reserved",
        "AddressingType" => {
            "allocate an address and associate it (AllocateAddress, AssociateAddress)"
        }
        _ => {
            return Ec2Error::client(
                "UnknownParameter",
                format!("The parameter {} is not recognized", name(key)),
            )
        }
    };
    unsupported(&name(key), advice)
}

/// The network interface terraform's aws_instance sends for a
/// `subnet_id` (and boto's NetworkInterfaceSpecification for the same):
/// one interface, `DeviceIndex=0`, with a subnet, security groups and a
/// private address. Such a request is rewritten to the instance-level
/// `SubnetId`, `SecurityGroupId.N` and `PrivateIpAddress` it means (None
/// when there is no `NetworkInterface.N`); any other interface is refused,
/// naming what cannot be done. Instance-level subnet, address or groups
/// beside an interface are refused as EC2 refuses them.
pub fn flatten_network_interface(p: &Params) -> Result<Option<Params>> {
    let mut keys = p.iter().filter(|(k, _)| k.starts_with("NetworkInterface."));
    let Some((first, _)) = keys.next() else {
        return Ok(None);
    };
    let index = first["NetworkInterface.".len()..]
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    let nics = p.structs("NetworkInterface")?;
    let prefix = format!("NetworkInterface.{}", clip(&index));
    let nic = match nics.as_slice() {
        [] => {
            return Err(unsupported(
                &prefix,
                "use SubnetId, SecurityGroupId and PrivateIpAddress",
            ))
        }
        [nic] => nic,
        [_, ..] => {
            return Err(unsupported(
                "NetworkInterface.N with more than one interface",
                "Corral launches instances with one network interface",
            ))
        }
    };
    if p.get_nonempty("SubnetId").is_some() {
        return Err(Ec2Error::invalid_combination(
            "Network interfaces and an instance-level subnet ID may not be specified on the same request",
        ));
    }
    if p.get_nonempty("PrivateIpAddress").is_some() {
        return Err(Ec2Error::invalid_combination(
            "Network interfaces and an instance-level private IP address should not be specified on the same request",
        ));
    }
    let instance_groups = p.iter().any(|(k, v)| {
        (k.starts_with("SecurityGroupId.") || k.starts_with("SecurityGroup.")) && !v.is_empty()
    });
    if instance_groups {
        return Err(Ec2Error::invalid_combination(
            "Network interfaces and an instance-level security groups may not be specified on the same request",
        ));
    }
    let field = |f: &str| format!("{prefix}.{f}");
    let mut subnet = None;
    let mut address = None;
    let mut device_index = None;
    for (f, v) in nic.iter() {
        if v.is_empty() {
            continue;
        }
        let full = field(f);
        match f.as_str() {
            "DeviceIndex" => {
                device_index = nic.int("DeviceIndex").map_err(|_| bad_int(&full, v))?
            }
            "SubnetId" => subnet = Some(v.clone()),
            "PrivateIpAddress" => address = Some(v.clone()),
            g if g.starts_with("SecurityGroupId.") => {}
            "AssociatePublicIpAddress" => only_bool(
                nic,
                f,
                false,
                "an instance gets a public address by AllocateAddress and AssociateAddress",
            )
            .map_err(|e| renamed(e, f, &full))?,
            "DeleteOnTermination" => only_bool(
                nic,
                f,
                true,
                "an instance's network interface is deleted with it",
            )
            .map_err(|e| renamed(e, f, &full))?,
            "NetworkCardIndex"
            | "Ipv6AddressCount"
            | "SecondaryPrivateIpAddressCount"
            | "Ipv4PrefixCount"
            | "Ipv6PrefixCount" => only_zero(nic, f, "Corral gives an interface one IPv4 address")
                .map_err(|e| renamed(e, f, &full))?,
            "InterfaceType" => only(
                &full,
                v,
                &["interface"],
                "Corral's interfaces are plain virtio NICs",
            )?,
            "NetworkInterfaceId" => {
                return Err(unsupported(
                    &full,
                    "an instance's network interface is made with it (use SubnetId)",
                ))
            }
            _ => {
                return Err(unsupported(
                    &name(&full),
                    "Corral's interfaces take SubnetId, SecurityGroupId and PrivateIpAddress",
                ))
            }
        }
    }
    match device_index {
        Some(0) => {}
        Some(n) => {
            return Err(unsupported(
                &format!("{}={n}", field("DeviceIndex")),
                "Corral launches instances with one network interface, device index 0",
            ))
        }
        None => return Err(Ec2Error::missing(&field("DeviceIndex"))),
    }
    let groups = nic.list("SecurityGroupId")?;
    let mut out: Vec<(String, String)> = p
        .iter()
        .filter(|(k, _)| !k.starts_with("NetworkInterface."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.extend(subnet.map(|s| ("SubnetId".to_string(), s)));
    out.extend(address.map(|a| ("PrivateIpAddress".to_string(), a)));
    for (n, g) in groups.into_iter().enumerate() {
        out.push((format!("SecurityGroupId.{}", n + 1), g));
    }
    Ok(Some(Params::from_pairs(out)))
}

fn bad_int(name: &str, v: &str) -> Ec2Error {
    Ec2Error::invalid_value(format!(
        "Value ({}) for parameter {name} is invalid. Expected an integer.",
        clip(v)
    ))
}

/// `e` with the field name `f` of a sub-structure replaced by its full
/// name.
fn renamed(mut e: Ec2Error, f: &str, name: &str) -> Ec2Error {
    e.message = e.message.replacen(f, name, 1);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    /// What every launch has.
    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("Action", "RunInstances"),
            ("Version", "2016-11-15"),
            ("ImageId", "ami-0123456789abcdef0"),
            ("MinCount", "1"),
            ("MaxCount", "1"),
        ]
    }

    fn with(extra: &[(&'static str, &'static str)]) -> Params {
        let mut all = base();
        all.extend_from_slice(extra);
        params(&all)
    }

    /// (code, message) of a refusal.
    fn refusal(extra: &[(&'static str, &'static str)]) -> (String, String) {
        let e = refuse_unsupported(&with(extra)).expect_err("refused");
        (e.code, e.message)
    }

    #[test]
    fn what_launch_reads_passes() {
        let p = with(&[
            ("ClientToken", "t"),
            ("InstanceType", "m1.small"),
            ("KeyName", "k"),
            ("SecurityGroup.1", "default"),
            ("SecurityGroupId.1", "sg-0123456789abcdef0"),
            ("SubnetId", "subnet-0123456789abcdef0"),
            ("PrivateIpAddress", "10.0.0.5"),
            ("Placement.AvailabilityZone", "corral-1a"),
            ("UserData", "aGVsbG8="),
            ("InstanceInitiatedShutdownBehavior", "stop"),
            ("BlockDeviceMapping.1.DeviceName", "/dev/sdb"),
            ("BlockDeviceMapping.1.Ebs.VolumeSize", "1"),
            ("TagSpecification.1.ResourceType", "instance"),
            ("TagSpecification.1.Tag.1.Key", "Name"),
            ("TagSpecification.1.Tag.1.Value", "x"),
            ("DisableApiTermination", "true"),
            ("DisableApiStop", "false"),
            ("MetadataOptions.HttpTokens", "required"),
            ("MetadataOptions.HttpEndpoint", "disabled"),
            ("MetadataOptions.HttpPutResponseHopLimit", "2"),
            ("MetadataOptions.InstanceMetadataTags", "enabled"),
            ("MetadataOptions.HttpProtocolIpv6", "disabled"),
            ("DryRun", "true"),
            ("X-Amz-Date", "20240101T000000Z"),
            ("AWSAccessKeyId", "AKIA"),
            ("Signature", "s"),
            ("SignatureMethod", "HmacSHA256"),
            ("SignatureVersion", "2"),
            ("Timestamp", "2024-01-01T00:00:00Z"),
        ]);
        refuse_unsupported(&p).unwrap();
    }

    /// The RunInstances terraform-provider-aws sends for a plain
    /// aws_instance (buildInstanceOpts: DisableApiTermination, EbsOptimized,
    /// Monitoring and HibernationOptions always, Placement with an empty
    /// zone), and the defaults other clients send when asked to set them.
    #[test]
    fn defaults_that_change_nothing_pass() {
        let terraform = with(&[
            ("ClientToken", "terraform-20240101000000000000000001"),
            ("InstanceType", "m1.small"),
            ("DisableApiTermination", "false"),
            ("EbsOptimized", "false"),
            ("Monitoring.Enabled", "false"),
            ("HibernationOptions.Configured", "false"),
            ("Placement.AvailabilityZone", ""),
            ("TagSpecification.1.ResourceType", "instance"),
            ("TagSpecification.1.Tag.1.Key", "Name"),
            ("TagSpecification.1.Tag.1.Value", "web"),
        ]);
        refuse_unsupported(&terraform).unwrap();
        // terraform's default credits for t3 types.
        refuse_unsupported(&with(&[
            ("InstanceType", "t3.micro"),
            ("CreditSpecification.CpuCredits", "unlimited"),
        ]))
        .unwrap();
        let defaults = with(&[
            ("MetadataOptions.HttpEndpoint", "enabled"),
            ("MetadataOptions.HttpTokens", "optional"),
            ("MetadataOptions.HttpPutResponseHopLimit", "2"),
            ("MetadataOptions.InstanceMetadataTags", "disabled"),
            ("MetadataOptions.HttpProtocolIpv6", "disabled"),
            ("CreditSpecification.CpuCredits", "standard"),
            ("Placement.Tenancy", "default"),
            ("Placement.GroupName", ""),
            ("Monitoring.Enabled", "FALSE"),
            ("EnclaveOptions.Enabled", "false"),
            (
                "CapacityReservationSpecification.CapacityReservationPreference",
                "open",
            ),
            ("CpuOptions.AmdSevSnp", "disabled"),
            ("PrivateDnsNameOptions.HostnameType", "ip-name"),
            (
                "PrivateDnsNameOptions.EnableResourceNameDnsARecord",
                "false",
            ),
            ("MaintenanceOptions.AutoRecovery", "default"),
            ("NetworkPerformanceOptions.BandwidthWeighting", "default"),
            ("EnablePrimaryIpv6", "false"),
            ("Ipv6AddressCount", "0"),
            ("AdditionalInfo", ""),
            ("KernelId", ""),
            ("IamInstanceProfile.Name", ""),
        ]);
        refuse_unsupported(&defaults).unwrap();
    }

    #[test]
    fn each_unhandled_parameter_is_refused_by_name() {
        let unsupported: &[(&[(&str, &str)], &str)] = &[
            (&[("NetworkInterface.1.DeviceIndex", "0")], "NetworkInterface.1 "),
            (
                &[("NetworkInterface.2.SubnetId", "subnet-0123456789abcdef0")],
                "NetworkInterface.2 ",
            ),
            (&[("LaunchTemplate.LaunchTemplateId", "lt-0123456789abcdef0")], "LaunchTemplate.LaunchTemplateId "),
            (&[("LaunchTemplate.Version", "$Latest")], "LaunchTemplate.Version "),
            (&[("IamInstanceProfile.Name", "web")], "IamInstanceProfile.Name "),
            (&[("IamInstanceProfile.Arn", "arn:aws:iam::1:instance-profile/x")], "IamInstanceProfile.Arn "),
            (&[("MetadataOptions.Other", "x")], "MetadataOptions.Other "),
            (&[("CpuOptions.CoreCount", "2")], "CpuOptions.CoreCount "),
            (&[("CpuOptions.ThreadsPerCore", "1")], "CpuOptions.ThreadsPerCore "),
            (&[("CpuOptions.AmdSevSnp", "enabled")], "CpuOptions.AmdSevSnp=enabled "),
            (&[("CreditSpecification.CpuCredits", "unlimited")], "CreditSpecification.CpuCredits=unlimited "),
            (&[("ElasticGpuSpecification.1.Type", "eg1.medium")], "ElasticGpuSpecification.1 "),
            (&[("ElasticInferenceAccelerator.1.Type", "eia1.medium")], "ElasticInferenceAccelerator.1 "),
            (&[("HibernationOptions.Configured", "true")], "HibernationOptions.Configured=true "),
            (&[("LicenseSpecification.1.LicenseConfigurationArn", "arn:x")], "LicenseSpecification.1 "),
            (&[("EnclaveOptions.Enabled", "true")], "EnclaveOptions.Enabled=true "),
            (
                &[("CapacityReservationSpecification.CapacityReservationPreference", "capacity-reservations-only")],
                "CapacityReservationSpecification.CapacityReservationPreference=capacity-reservations-only ",
            ),
            (
                &[("CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId", "cr-1")],
                "CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId ",
            ),
            (&[("InstanceMarketOptions.MarketType", "spot")], "InstanceMarketOptions.MarketType "),
            (&[("Ipv6AddressCount", "1")], "Ipv6AddressCount=1 "),
            (&[("Ipv6Address.1.Ipv6Address", "2001:db8::1")], "Ipv6Address.1 "),
            (&[("EnablePrimaryIpv6", "true")], "EnablePrimaryIpv6=true "),
            (&[("PrivateDnsNameOptions.HostnameType", "resource-name")], "PrivateDnsNameOptions.HostnameType=resource-name "),
            (&[("PrivateDnsNameOptions.EnableResourceNameDnsAAAARecord", "true")], "PrivateDnsNameOptions.EnableResourceNameDnsAAAARecord=true "),
            (&[("MaintenanceOptions.AutoRecovery", "disabled")], "MaintenanceOptions.AutoRecovery=disabled "),
            (&[("NetworkPerformanceOptions.BandwidthWeighting", "vpc-1")], "NetworkPerformanceOptions.BandwidthWeighting=vpc-1 "),
            (&[("Operator.Principal", "x")], "Operator.Principal "),
            (&[("Placement.Tenancy", "dedicated")], "Placement.Tenancy=dedicated "),
            (&[("Placement.GroupName", "cluster-1")], "Placement.GroupName "),
            (&[("Placement.HostId", "h-0123456789abcdef0")], "Placement.HostId "),
            (&[("Placement.PartitionNumber", "2")], "Placement.PartitionNumber "),
            (&[("Placement.AvailabilityZoneId", "use1-az1")], "Placement.AvailabilityZoneId "),
            (&[("KernelId", "aki-0123456789abcdef0")], "KernelId "),
            (&[("RamdiskId", "ari-0123456789abcdef0")], "RamdiskId "),
            (&[("AdditionalInfo", "x")], "AdditionalInfo "),
            (&[("AddressingType", "public")], "AddressingType "),
            (&[("Monitoring.Enabled", "true")], "Monitoring.Enabled=true "),
            (&[("EbsOptimized", "true")], "EbsOptimized=true "),
        ];
        for (extra, named) in unsupported {
            let (code, message) = refusal(extra);
            assert_eq!(code, "UnsupportedOperation", "{extra:?}: {message}");
            assert!(
                message.starts_with(&format!(
                    "RunInstances: {named}is not supported by Corral; "
                )),
                "{extra:?}: {message}"
            );
        }
        let (code, message) = refusal(&[("NetworkInterface.1.DeviceIndex", "0")]);
        assert_eq!(code, "UnsupportedOperation");
        assert_eq!(
            message,
            "RunInstances: NetworkInterface.1 is not supported by Corral; use SubnetId, SecurityGroupId and PrivateIpAddress"
        );
    }

    #[test]
    fn unknown_and_malformed_parameters() {
        assert_eq!(
            refusal(&[("NoSuchThing", "1")]),
            (
                "UnknownParameter".to_string(),
                "The parameter NoSuchThing is not recognized".to_string()
            )
        );
        for bad in [
            ("Monitoring.Enabled", "maybe"),
            ("EbsOptimized", "yes"),
            ("Ipv6AddressCount", "x"),
        ] {
            let (code, message) = refusal(&[bad]);
            assert_eq!(code, "InvalidParameterValue", "{bad:?}");
            assert!(message.contains(bad.0), "{bad:?}: {message}");
        }
        // Hostile names and values are errors with clipped echoes, never panics.
        let long = "x".repeat(10_000);
        let p = params(&[("NetworkInterface.\u{0}", "1"), (long.as_str(), "1")]);
        let e = refuse_unsupported(&p).unwrap_err();
        assert!(e.message.len() < 400, "{}", e.message);
        let p = params(&[("Placement.Tenancy", long.as_str())]);
        assert!(refuse_unsupported(&p).unwrap_err().message.len() < 400);
    }

    /// terraform's aws_instance with a `subnet_id` (buildNetworkInterfaceOpts).
    #[test]
    fn terraforms_subnet_interface_is_flattened() {
        let p = with(&[
            ("NetworkInterface.1.DeviceIndex", "0"),
            ("NetworkInterface.1.SubnetId", "subnet-0123456789abcdef0"),
            (
                "NetworkInterface.1.SecurityGroupId.1",
                "sg-0000000000000000a",
            ),
            (
                "NetworkInterface.1.SecurityGroupId.2",
                "sg-0000000000000000b",
            ),
            ("NetworkInterface.1.PrivateIpAddress", "10.0.0.7"),
            ("NetworkInterface.1.AssociatePublicIpAddress", "false"),
            ("EbsOptimized", "false"),
        ]);
        let flat = flatten_network_interface(&p).unwrap().expect("flattened");
        assert_eq!(flat.get("SubnetId"), Some("subnet-0123456789abcdef0"));
        assert_eq!(flat.get("PrivateIpAddress"), Some("10.0.0.7"));
        assert_eq!(
            flat.list("SecurityGroupId").unwrap(),
            ["sg-0000000000000000a", "sg-0000000000000000b"]
        );
        assert!(flat.iter().all(|(k, _)| !k.starts_with("NetworkInterface")));
        assert_eq!(flat.get("ImageId"), Some("ami-0123456789abcdef0"));
        refuse_unsupported(&flat).unwrap();
        // Nothing to flatten.
        assert!(flatten_network_interface(&with(&[])).unwrap().is_none());
    }

    #[test]
    fn other_interfaces_are_refused() {
        let nic = |extra: &[(&'static str, &'static str)]| {
            let mut all = vec![
                ("NetworkInterface.1.DeviceIndex", "0"),
                ("NetworkInterface.1.SubnetId", "subnet-0123456789abcdef0"),
            ];
            all.extend_from_slice(extra);
            flatten_network_interface(&with(&all)).unwrap_err()
        };
        for (extra, code, named) in [
            (
                vec![("NetworkInterface.1.AssociatePublicIpAddress", "true")],
                "UnsupportedOperation",
                "NetworkInterface.1.AssociatePublicIpAddress=true",
            ),
            (
                vec![(
                    "NetworkInterface.1.NetworkInterfaceId",
                    "eni-0123456789abcdef0",
                )],
                "UnsupportedOperation",
                "NetworkInterface.1.NetworkInterfaceId",
            ),
            (
                vec![("NetworkInterface.1.Ipv6AddressCount", "1")],
                "UnsupportedOperation",
                "NetworkInterface.1.Ipv6AddressCount=1",
            ),
            (
                vec![("NetworkInterface.1.Description", "x")],
                "UnsupportedOperation",
                "NetworkInterface.1.Description",
            ),
            (
                vec![("NetworkInterface.1.DeleteOnTermination", "false")],
                "UnsupportedOperation",
                "NetworkInterface.1.DeleteOnTermination=false",
            ),
            (
                vec![("NetworkInterface.2.DeviceIndex", "1")],
                "UnsupportedOperation",
                "more than one interface",
            ),
            (
                vec![("SubnetId", "subnet-0123456789abcdef1")],
                "InvalidParameterCombination",
                "instance-level subnet ID",
            ),
            (
                vec![("SecurityGroupId.1", "sg-0123456789abcdef1")],
                "InvalidParameterCombination",
                "instance-level security groups",
            ),
            (
                vec![("PrivateIpAddress", "10.0.0.9")],
                "InvalidParameterCombination",
                "instance-level private IP",
            ),
        ] {
            let e = nic(&extra);
            assert_eq!(e.code, code, "{extra:?}: {}", e.message);
            assert!(e.message.contains(named), "{extra:?}: {}", e.message);
        }
        // A device index other than 0, or none.
        let e = flatten_network_interface(&with(&[("NetworkInterface.1.DeviceIndex", "1")]))
            .unwrap_err();
        assert!(
            e.message.contains("NetworkInterface.1.DeviceIndex=1"),
            "{}",
            e.message
        );
        let e = flatten_network_interface(&with(&[(
            "NetworkInterface.1.SubnetId",
            "subnet-0123456789abcdef0",
        )]))
        .unwrap_err();
        assert_eq!(e.code, "MissingParameter");
        assert!(e.message.contains("NetworkInterface.1.DeviceIndex"));
        let e = flatten_network_interface(&with(&[("NetworkInterface.x.DeviceIndex", "0")]))
            .unwrap_err();
        assert_eq!(e.code, "InvalidParameterValue");
    }
}
