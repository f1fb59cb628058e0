//! Address: a floating (elastic) IP taken from a pool network, optionally
//! associated with an instance's interface (DNAT on its node).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::is_zero_i64;
use crate::validate::{
    check_opt_ref, check_ref, check_tags, header, impl_validate_update, NameRule,
};
use crate::{Condition, Defaults, FieldErrors, Network, NetworkStatus, Validate};

crate::resource!(
    /// A floating IP address.
    Address,
    AddressSpec,
    AddressStatus,
    "addresses",
    Project
);

/// Desired state of an address.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddressSpec {
    /// Name of a Network of this project the address is allocated from
    /// (the pool). Exactly one of `network` and `pool`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    /// Name of an operator's address pool: a Network in project
    /// [`POOL_PROJECT`], shared by every project (Nova's floating-IP
    /// pools, Neutron's external networks). Exactly one of `network` and
    /// `pool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Name of the Instance to associate with; unassociated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Index of that instance's NIC (in `spec.nics`); the first when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<u32>,
    /// EC2-style tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Observed state of an address.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddressStatus {
    /// The allocated IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// EC2 allocation id, `eipalloc-` and 17 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2_id: Option<String>,
    /// EC2 association id (`eipassoc-...`) while associated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub association_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub observed_generation: i64,
}

/// The project holding the operator's address pools (Networks any
/// project's Address may take a floating IP from with `spec.pool`). Only
/// admins write there; no tenant sees it.
pub const POOL_PROJECT: &str = "corral-pools";

impl Address {
    /// Where its pool Network is: (project, name).
    pub fn pool_key(&self) -> (&str, &str) {
        match &self.spec.pool {
            Some(p) => (POOL_PROJECT, p),
            None => (&self.metadata.project, &self.spec.network),
        }
    }

    /// Its owner string in the pool's allocation table: `Address/<name>`
    /// in its own project's pool, `Address/<project>/<name>` in an
    /// operator's pool, which every project shares.
    pub fn pool_owner(&self) -> String {
        match &self.spec.pool {
            Some(_) => pool_owner(&format!("{}/{}", self.metadata.project, self.metadata.name)),
            None => pool_owner(&self.metadata.name),
        }
    }
}

/// Label that marks a project's Network as its pool of floating IPs (the
/// EC2 façade's AllocateAddress takes from it; without one, from the
/// Network named [`DEFAULT_POOL_NETWORK`]).
pub const POOL_LABEL: &str = "corral.dev/address-pool";
/// The pool Network when none is labelled [`POOL_LABEL`]`=true`.
pub const DEFAULT_POOL_NETWORK: &str = "public";

/// A project's pool Network: the first (by name) labelled
/// `corral.dev/address-pool=true`, else the one named `public`.
pub fn pool_network(networks: &[Network]) -> Option<&Network> {
    let mut labelled: Vec<&Network> = networks
        .iter()
        .filter(|n| n.metadata.labels.get(POOL_LABEL).map(String::as_str) == Some("true"))
        .collect();
    labelled.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    labelled.first().copied().or_else(|| {
        networks
            .iter()
            .find(|n| n.metadata.name == DEFAULT_POOL_NETWORK)
    })
}

/// The owner string of an Address in its pool's allocation table
/// (`Network.status.allocations`): `Address/<name>`.
pub fn pool_owner(address: &str) -> String {
    format!("Address/{address}")
}

/// Whether an allocation-table owner is an Address (not an instance NIC).
pub fn is_pool_owner(who: &str) -> bool {
    who.starts_with("Address/")
}

/// The IP `owner` holds in `network`, if any.
pub fn held_ip(network: &Network, owner: &str) -> Option<String> {
    network.status.as_ref().and_then(|s| {
        s.allocations
            .iter()
            .find(|(_, who)| *who == owner)
            .map(|(ip, _)| ip.clone())
    })
}

/// The first free usable host address of a pool: inside its CIDR, not its
/// gateway, not in its allocation table.
pub fn free_ip(network: &Network) -> Option<String> {
    let (cidr, gateway) = network.spec.gateway()?;
    let taken = network.status.as_ref().map(|s| &s.allocations);
    (u32::from(cidr.first_host())..=u32::from(cidr.last_host()))
        .map(Ipv4Addr::from)
        .filter(|ip| cidr.is_host(*ip) && *ip != gateway)
        .map(|ip| ip.to_string())
        .find(|ip| taken.is_none_or(|t| !t.contains_key(ip)))
}

/// Takes an IP for `owner` in `network`'s table (or finds the one it
/// holds); `None` when the pool is exhausted. The caller writes the
/// Network back with compare-and-swap.
pub fn take_ip(network: &mut Network, owner: &str) -> Option<(String, bool)> {
    if let Some(ip) = held_ip(network, owner) {
        return Some((ip, false));
    }
    let ip = free_ip(network)?;
    network
        .status
        .get_or_insert_with(NetworkStatus::default)
        .allocations
        .insert(ip.clone(), owner.to_string());
    Some((ip, true))
}

/// The association id of an Address on NIC `nic` of the instance with uid
/// `instance_uid`: stable for one association, new for the next.
pub fn address_association_id(address_uid: &str, instance_uid: &str, nic: usize) -> String {
    crate::ec2::association_id(address_uid, &format!("{instance_uid}/{nic}"))
}

impl Validate for Address {
    fn validate(&self) -> FieldErrors {
        let mut errs = header(self, NameRule::DnsLabel);
        let spec = &self.spec;
        match (&spec.pool, spec.network.is_empty()) {
            (Some(p), true) => check_ref(&mut errs, "spec.pool", p),
            (None, false) => check_ref(&mut errs, "spec.network", &spec.network),
            (Some(_), false) => errs.push("spec.pool", "give spec.network or spec.pool, not both"),
            (None, true) => errs.push("spec.network", "required (or spec.pool)"),
        }
        check_opt_ref(&mut errs, "spec.instance", spec.instance.as_ref());
        if spec.nic.is_some() && spec.instance.is_none() {
            errs.push("spec.nic", "requires spec.instance");
        }
        check_tags(&mut errs, "spec.tags", &spec.tags);
        errs
    }
}

impl crate::HostRefs for Address {}

impl Defaults for Address {}

// The pool is fixed; the association may change.
impl_validate_update!(Address, "spec.network" => network, "spec.pool" => pool);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::testing::round_trip_kind;
    use crate::validate::testing::{assert_errors, assert_valid};
    use crate::validate::DNS_LABEL_MSG;
    use crate::Resource;

    #[test]
    fn round_trip_with_status() {
        let a: Address = round_trip_kind(
            r#"
metadata: {name: web-ip, project: demo}
spec: {network: public, instance: web-1, nic: 0}
status: {ip: 192.0.2.5, ec2Id: eipalloc-0123456789abcdef0, associationId: eipassoc-0123456789abcdef0}
"#,
        );
        assert_eq!(a.spec.nic, Some(0));
        assert_valid(&a);
    }

    #[test]
    fn pool_rule_and_allocation_table() {
        let net = |name: &str, pool: bool| {
            let mut n = Network::new(
                "p",
                name,
                crate::NetworkSpec {
                    cidr: "192.0.2.0/29".into(),
                    ..Default::default()
                },
            );
            if pool {
                n.metadata.labels.insert(POOL_LABEL.into(), "true".into());
            }
            n
        };
        let nets = vec![net("public", false), net("zz", true), net("ext", true)];
        assert_eq!(pool_network(&nets).unwrap().metadata.name, "ext");
        assert_eq!(pool_network(&nets[..1]).unwrap().metadata.name, "public");
        assert!(pool_network(&[net("lan", false)]).is_none());

        let mut n = net("public", false);
        n.status = Some(NetworkStatus {
            allocations: [("192.0.2.2".to_string(), "web/0".to_string())].into(),
            ..Default::default()
        });
        let me = pool_owner("a");
        assert!(is_pool_owner(&me) && !is_pool_owner("web/0"));
        assert_eq!(take_ip(&mut n, &me), Some(("192.0.2.3".into(), true)));
        assert_eq!(take_ip(&mut n, &me), Some(("192.0.2.3".into(), false)));
        for k in 0..3 {
            assert!(take_ip(&mut n, &pool_owner(&k.to_string())).is_some());
        }
        assert_eq!(take_ip(&mut n, &pool_owner("late")), None, "gateway never");
        let id = address_association_id("u", "i", 0);
        assert!(crate::ec2::is_id_with_prefix(&id, "eipassoc"));
        assert_ne!(id, address_association_id("u", "i", 1));
    }

    #[test]
    fn rules() {
        let mut a = Address::new("demo", "ip", AddressSpec::default());
        a.spec.nic = Some(1);
        assert_errors(
            &a.validate(),
            &[
                "spec.network: required (or spec.pool)",
                "spec.nic: requires spec.instance",
            ],
        );
        a.spec.network = "pub".into();
        a.spec.instance = Some("Web".into());
        assert_errors(&a.validate(), &[&format!("spec.instance: {DNS_LABEL_MSG}")]);
        a.spec.instance = None;
        a.spec.nic = None;
        a.spec.pool = Some("public".into());
        assert_errors(
            &a.validate(),
            &["spec.pool: give spec.network or spec.pool, not both"],
        );
        a.spec.network.clear();
        assert_valid(&a);
        assert_eq!(a.pool_key(), (POOL_PROJECT, "public"));
        assert_eq!(a.pool_owner(), "Address/demo/ip");
        a.spec.pool = None;
        a.spec.network = "pub".into();
        assert_eq!(a.pool_key(), ("demo", "pub"));
        assert_eq!(a.pool_owner(), "Address/ip");
    }
}
