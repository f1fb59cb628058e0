//! Address: a floating (elastic) IP taken from a pool network, optionally
//! associated with an instance's interface (DNAT on its node).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::is_zero_i64;
use crate::validate::{
    check_immutable, check_meta_update, check_opt_ref, check_ref, check_tags, header, NameRule,
};
use crate::{Condition, Defaults, FieldErrors, Validate, ValidateUpdate};

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
    /// Name of the Network the address is allocated from (the pool).
    pub network: String,
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

impl Validate for Address {
    fn validate(&self) -> FieldErrors {
        let mut errs = header::<Self>(
            &self.api_version,
            &self.kind,
            &self.metadata,
            NameRule::DnsLabel,
        );
        let spec = &self.spec;
        check_ref(&mut errs, "spec.network", &spec.network);
        check_opt_ref(&mut errs, "spec.instance", spec.instance.as_ref());
        if spec.nic.is_some() && spec.instance.is_none() {
            errs.push("spec.nic", "requires spec.instance");
        }
        check_tags(&mut errs, "spec.tags", &spec.tags);
        errs
    }
}

impl Defaults for Address {
    fn apply_defaults(&mut self) {}
}

impl ValidateUpdate for Address {
    /// The pool is fixed; the association may change.
    fn validate_update(&self, old: &Self) -> FieldErrors {
        let mut errs = check_meta_update(&old.metadata, &self.metadata);
        check_immutable(
            &mut errs,
            "spec.network",
            &old.spec.network,
            &self.spec.network,
        );
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::testing::round_trip;
    use crate::validate::testing::assert_errors;
    use crate::validate::DNS_LABEL_MSG;
    use crate::Resource;

    #[test]
    fn round_trip_with_status() {
        let a: Address = round_trip(
            r#"
apiVersion: corral/v1
kind: Address
metadata: {name: web-ip, project: demo}
spec: {network: public, instance: web-1, nic: 0}
status: {ip: 192.0.2.5, ec2Id: eipalloc-0123456789abcdef0, associationId: eipassoc-0123456789abcdef0}
"#,
        );
        assert_eq!(a.spec.nic, Some(0));
        assert!(a.validate().is_empty(), "{}", a.validate());
    }

    #[test]
    fn rules() {
        let mut a = Address::new("demo", "ip", AddressSpec::default());
        a.spec.nic = Some(1);
        assert_errors(
            &a.validate(),
            &["spec.network: required", "spec.nic: requires spec.instance"],
        );
        a.spec.network = "pub".into();
        a.spec.instance = Some("Web".into());
        assert_errors(&a.validate(), &[&format!("spec.instance: {DNS_LABEL_MSG}")]);
    }
}
