//! Pure functions the EC2 façade and the controllers share: how a
//! resource's EC2 id is derived from its `metadata.uid`, how an access key
//! id names its `AccessKey` object, the account id of a project, and the
//! annotation keys the façade writes.
//!
//! Ids are derived, never stored as the source of truth: `<prefix>-` and the
//! first 17 hex digits of SHA-256 of `"<Kind>/<uid>"`. So an object created
//! from a manifest has the same id the façade would have given it, and the
//! id is stable for the object's whole life (its uid never changes).

use sha2::{Digest, Sha256};

/// Hex digits after the prefix, as in `i-0123456789abcdef0`.
pub const ID_HEX_DIGITS: usize = 17;

/// The EC2 name of an object whose EC2 name is not a DNS label (KeyName
/// `"my key"`, GroupName `"Web Servers"`); such objects are named by their
/// EC2 id instead.
pub const NAME_ANNOTATION: &str = "ec2.corral/name";
/// The ClientToken a Create*/RunInstances call was made with.
pub const CLIENT_TOKEN_ANNOTATION: &str = "ec2.corral/client-token";
/// SHA-256 of the request parameters that came with the ClientToken.
pub const REQUEST_HASH_ANNOTATION: &str = "ec2.corral/request-hash";
/// Instances launched by one RunInstances call share a reservation id.
pub const RESERVATION_ANNOTATION: &str = "ec2.corral/reservation-id";
/// Launch index of an instance within its reservation.
pub const LAUNCH_INDEX_ANNOTATION: &str = "ec2.corral/launch-index";
/// When set, StopInstances is refused (EC2's disableApiStop).
pub const DISABLE_API_STOP_ANNOTATION: &str = "ec2.corral/disable-api-stop";
/// EC2's instanceInitiatedShutdownBehavior (`stop` or `terminate`).
pub const SHUTDOWN_BEHAVIOR_ANNOTATION: &str = "ec2.corral/shutdown-behavior";
/// A reboot request (RFC 3339 time): the node agent reboots the guest
/// once for each new value.
pub const REBOOT_ANNOTATION: &str = "corral/reboot-requested-at";
/// Finalizer that keeps a terminated instance visible to DescribeInstances
/// for [`TERMINATED_VISIBLE_SECONDS`].
pub const TERMINATED_FINALIZER: &str = "ec2.corral/terminated-visibility";
/// How long a terminated instance stays visible, seconds.
pub const TERMINATED_VISIBLE_SECONDS: i64 = 3600;

fn hash_hex(input: &str) -> String {
    hex_lower(&Sha256::digest(input.as_bytes()))
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// `<prefix>-` + 17 hex digits of SHA-256(`"<kind>/<uid>"`).
pub fn derive_id(prefix: &str, kind: &str, uid: &str) -> String {
    let h = hash_hex(&format!("{kind}/{uid}"));
    format!("{prefix}-{}", &h[..ID_HEX_DIGITS])
}

/// The id prefix of a kind's objects (images: see [`image_prefix`]).
pub fn id_prefix(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Instance" => "i",
        "Volume" => "vol",
        "Snapshot" => "snap",
        "SecurityGroup" => "sg",
        "Address" => "eipalloc",
        "KeyPair" => "key",
        "Network" => "vpc",
        "Image" => "ami",
        _ => return None,
    })
}

/// `ami`, `aki` or `ari` for a machine, kernel or ramdisk image.
pub fn image_prefix(image_type: crate::ImageType) -> &'static str {
    match image_type {
        crate::ImageType::Machine => "ami",
        crate::ImageType::Kernel => "aki",
        crate::ImageType::Ramdisk => "ari",
    }
}

/// The EC2 id of an object of `kind` with `uid` (images are `ami-`; use
/// [`image_id`] for kernels and ramdisks).
pub fn resource_id(kind: &str, uid: &str) -> Option<String> {
    id_prefix(kind).map(|p| derive_id(p, kind, uid))
}

pub fn instance_id(uid: &str) -> String {
    derive_id("i", "Instance", uid)
}

pub fn image_id(image_type: crate::ImageType, uid: &str) -> String {
    derive_id(image_prefix(image_type), "Image", uid)
}

/// A Network is a VPC with exactly one subnet.
pub fn subnet_id(network_uid: &str) -> String {
    derive_id("subnet", "Subnet", network_uid)
}

/// The route table of a Network's VPC.
pub fn route_table_id(network_uid: &str) -> String {
    derive_id("rtb", "RouteTable", network_uid)
}

/// The network interface `index` of an instance (`eni-`).
pub fn network_interface_id(instance_uid: &str, index: usize) -> String {
    derive_id(
        "eni",
        "NetworkInterface",
        &format!("{instance_uid}/{index}"),
    )
}

/// The reservation of an instance not launched by RunInstances.
pub fn reservation_id(seed: &str) -> String {
    derive_id("r", "Reservation", seed)
}

/// Association of an Address with an instance (`eipassoc-`).
pub fn association_id(address_uid: &str, instance: &str) -> String {
    derive_id(
        "eipassoc",
        "Association",
        &format!("{address_uid}/{instance}"),
    )
}

/// Whether `s` looks like an EC2 id with this prefix: `<prefix>-` and 8 or
/// 17 lower-case hex digits (AWS accepts both lengths).
pub fn is_id_with_prefix(s: &str, prefix: &str) -> bool {
    match s.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) {
        Some(hex) => {
            (hex.len() == 8 || hex.len() == ID_HEX_DIGITS)
                && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        None => false,
    }
}

/// Store name of an access key id's `AccessKey` (names are lower-case DNS
/// labels).
pub fn access_key_name(id: &str) -> String {
    id.to_ascii_lowercase()
}

/// A project's EC2 account id: 12 decimal digits derived from its name.
pub fn account_id(project: &str) -> String {
    let digest = Sha256::digest(format!("Project/{project}").as_bytes());
    let mut n = 0u64;
    for b in &digest[..8] {
        n = (n << 8) | u64::from(*b);
    }
    format!("{:012}", n % 1_000_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_derived_and_stable() {
        let uid = "6f1c9e2a-0000-4000-8000-000000000001";
        let a = instance_id(uid);
        assert_eq!(a, instance_id(uid));
        assert!(a.starts_with("i-") && a.len() == 2 + ID_HEX_DIGITS, "{a}");
        assert!(is_id_with_prefix(&a, "i"));
        assert_ne!(resource_id("Volume", uid).unwrap()[4..], a[2..]);
        assert_eq!(resource_id("Instance", uid).unwrap(), a);
        assert!(resource_id("Node", uid).is_none());
        assert!(image_id(crate::ImageType::Kernel, uid).starts_with("aki-"));
        assert_eq!(
            image_id(crate::ImageType::Machine, uid)[4..],
            image_id(crate::ImageType::Ramdisk, uid)[4..]
        );
        assert!(subnet_id(uid).starts_with("subnet-"));
        // The documented derivation, spelled out once.
        let h = hash_hex(&format!("Instance/{uid}"));
        assert_eq!(a, format!("i-{}", &h[..17]));
    }

    #[test]
    fn id_syntax() {
        assert!(is_id_with_prefix("i-0123abcd", "i"));
        assert!(is_id_with_prefix("vol-0123456789abcdef0", "vol"));
        for bad in [
            "i-",
            "i-0123ABCD",
            "i-0123456",
            "vol-0123abcd",
            "i0123abcd",
            "i-0123456789abcdef01",
        ] {
            assert!(!is_id_with_prefix(bad, "i"), "{bad}");
        }
    }

    #[test]
    fn account_ids_are_twelve_digits() {
        let a = account_id("default");
        assert_eq!(a.len(), 12);
        assert!(a.bytes().all(|b| b.is_ascii_digit()));
        assert_ne!(a, account_id("other"));
        assert_eq!(access_key_name("AKIAABC"), "akiaabc");
    }
}
