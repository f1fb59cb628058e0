//! The names Corral gives host devices, libvirt networks and iptables
//! chains: derived from uids only (never from tenant text), and short
//! enough for Linux interface names (15 characters).

/// Prefix of Corral's libvirt network names (`corral-<network uid>`).
pub const NETWORK_PREFIX: &str = "corral-";
/// Prefix of Corral's bridges (`crb` + 12 hex digits of the network uid).
pub const BRIDGE_PREFIX: &str = "crb";
/// Prefix of Corral's guest tap devices (`crt` + 10 hex digits of the
/// instance uid + the NIC index).
pub const TAP_PREFIX: &str = "crt";
/// Prefix of Corral's VXLAN devices (`cvx` + 12 hex digits of the network
/// uid), one per overlay Network.
pub const VXLAN_PREFIX: &str = "cvx";
/// Prefix of every iptables chain Corral owns.
pub const CHAIN_PREFIX: &str = "CORRAL-";

/// The libvirt network name for a Network.
pub fn network_name(network_uid: &str) -> String {
    format!("{NETWORK_PREFIX}{network_uid}")
}

fn hex_of(uid: &str, n: usize) -> String {
    uid.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .take(n)
        .collect()
}

/// The bridge device for a Network (at most 15 characters).
pub fn bridge_name(network_uid: &str) -> String {
    format!("{BRIDGE_PREFIX}{}", hex_of(network_uid, 12))
}

/// The VXLAN device of an overlay Network (at most 15 characters): the
/// same digits as its bridge, under a prefix of its own.
pub fn vxlan_name(network_uid: &str) -> String {
    format!("{VXLAN_PREFIX}{}", hex_of(network_uid, 12))
}

/// The tap device of an instance's NIC (at most 15 characters): one
/// digit for the NIC, as validation allows at most
/// [`corral_api_types::kinds::instance::MAX_NICS`] of them.
pub fn tap_name(instance_uid: &str, nic: usize) -> String {
    const _: () = assert!(corral_api_types::kinds::instance::MAX_NICS <= 10);
    debug_assert!(nic < corral_api_types::kinds::instance::MAX_NICS);
    format!("{TAP_PREFIX}{}{}", hex_of(instance_uid, 10), nic % 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_interface_names() {
        let uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        assert_eq!(bridge_name(uid), "crb0f1e2d3c4b5a");
        assert!(bridge_name(uid).len() <= 15);
        assert_eq!(tap_name(uid, 3), "crt0f1e2d3c4b3");
        assert!(tap_name(uid, 3).len() <= 15);
    }

    #[test]
    fn vxlan_names_fit_and_differ_from_other_devices() {
        let uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        assert_eq!(vxlan_name(uid), "cvx0f1e2d3c4b5a");
        assert!(vxlan_name(uid).len() <= 15);
        assert!(vxlan_name("").len() <= 15);
        assert!(vxlan_name(&"f".repeat(64)).len() <= 15);
        for other in [BRIDGE_PREFIX, TAP_PREFIX] {
            assert!(!VXLAN_PREFIX.starts_with(other) && !other.starts_with(VXLAN_PREFIX));
        }
        assert_ne!(vxlan_name(uid), bridge_name(uid));
    }
}
