//! SecurityGroup: allow-lists of traffic applied to instance interfaces.
//! Traffic not allowed by some rule is dropped; no default rules are added.
//! A rule's peers are an IPv4 or IPv6 CIDR block, or another group's
//! members (IPv4: Corral gives guests IPv4 addresses only).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::is_zero_i64;
use crate::net::{CidrError, IpCidr, IpCidrError};
use crate::validate::{
    check_description, check_opt_ref, check_range, check_tags, header, impl_validate_update, index,
    join, NameRule,
};
use crate::{Defaults, FieldErrors, Validate};

crate::resource!(
    /// A set of firewall rules for instance interfaces.
    SecurityGroup,
    SecurityGroupSpec,
    SecurityGroupStatus,
    "securitygroups",
    Project
);

/// IP protocol of a rule. Written as `tcp`, `udp`, `icmp`, `all` (or `-1`),
/// or a protocol number `0`-`255` (`6`, `17` and `1` read as tcp, udp and
/// icmp; `icmpv6` reads as `58`, as EC2 does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Icmp,
    /// Every protocol.
    All,
    /// Another IP protocol by number.
    Number(u8),
}

impl Protocol {
    /// Parses the user's spelling; see the type's doc.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "icmp" => Some(Protocol::Icmp),
            "all" | "-1" => Some(Protocol::All),
            "icmpv6" => Some(Protocol::Number(58)),
            n if !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()) => {
                n.parse::<u8>().ok().map(Protocol::from_number)
            }
            _ => None,
        }
    }

    /// The protocol for an IP protocol number.
    pub fn from_number(n: u8) -> Protocol {
        match n {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            1 => Protocol::Icmp,
            n => Protocol::Number(n),
        }
    }

    /// Whether rules for this protocol take port ranges.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("tcp"),
            Protocol::Udp => f.write_str("udp"),
            Protocol::Icmp => f.write_str("icmp"),
            Protocol::All => f.write_str("all"),
            Protocol::Number(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str = "tcp, udp, icmp, icmpv6, all or a protocol number 0-255";
        impl serde::de::Visitor<'_> for V {
            type Value = Protocol;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Protocol, E> {
                Protocol::parse(v).ok_or_else(|| {
                    E::custom(format!("invalid protocol {v:?}: expected {EXPECTED}"))
                })
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Protocol, E> {
                match v {
                    -1 => Ok(Protocol::All),
                    0..=255 => Ok(Protocol::from_number(v as u8)),
                    _ => Err(E::custom(format!(
                        "invalid protocol {v}: expected {EXPECTED}"
                    ))),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Protocol, E> {
                match u8::try_from(v) {
                    Ok(n) => Ok(Protocol::from_number(n)),
                    Err(_) => Err(E::custom(format!(
                        "invalid protocol {v}: expected {EXPECTED}"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Protocol {
    fn schema_name() -> Cow<'static, str> {
        "Protocol".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "IP protocol: tcp, udp, icmp, icmpv6 (58), all (or -1), or a protocol number 0-255.",
            "anyOf": [
                { "type": "string", "enum": ["tcp", "udp", "icmp", "icmpv6", "all", "-1"] },
                { "type": "string", "pattern": "^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$" },
                { "type": "integer", "minimum": -1, "maximum": 255 }
            ]
        })
    }
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityGroupRule {
    pub protocol: Protocol,
    /// First port (tcp/udp, required; -1 with toPort -1 means all ports) or
    /// ICMP type (-1 for any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_port: Option<i32>,
    /// Last port (tcp/udp, required) or ICMP code (-1 for any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_port: Option<i32>,
    /// Peer addresses, an IPv4 or an IPv6 CIDR block (`0.0.0.0/0` or
    /// `::/0` for anywhere), host bits zero; kept as written. Exactly one
    /// of `cidr` and `sourceGroup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// Name of a SecurityGroup whose members are the peers (their IPv4
    /// addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_group: Option<String>,
    /// Free text, at most 255 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Rules a group may hold in each direction (AWS allows 60 by default,
/// Neutron 100 per project): every rule becomes firewall entries on every
/// node with a member, and the bound keeps a group a small object.
pub const MAX_RULES: usize = 100;

/// Desired state of a security group.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityGroupSpec {
    /// Free text, at most 255 characters.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Allowed inbound traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<SecurityGroupRule>,
    /// Allowed outbound traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<SecurityGroupRule>,
    /// EC2-style tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Observed state of a security group.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityGroupStatus {
    /// EC2 id, `sg-` and 17 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2_id: Option<String>,
    /// Addresses of the instance NICs carrying this group, sorted: what
    /// other groups' `sourceGroup` rules admit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub observed_generation: i64,
}

fn check_rule(errs: &mut FieldErrors, p: &str, r: &SecurityGroupRule) {
    match (&r.cidr, &r.source_group) {
        (None, None) => errs.push(join(p, "cidr"), "required: set cidr or sourceGroup"),
        (Some(_), Some(_)) => {
            errs.push(join(p, "sourceGroup"), "must not be set together with cidr")
        }
        _ => {}
    }
    if let Some(c) = &r.cidr {
        match c.parse::<IpCidr>() {
            Ok(_) => {}
            Err(e @ (IpCidrError::V4(CidrError::HostBits(_)) | IpCidrError::V6(_))) => {
                errs.push(join(p, "cidr"), e.to_string())
            }
            Err(IpCidrError::V4(_)) => errs.push(
                join(p, "cidr"),
                "must be an IPv4 or IPv6 CIDR block like 0.0.0.0/0 or ::/0",
            ),
        }
    }
    check_opt_ref(errs, &join(p, "sourceGroup"), r.source_group.as_ref());
    let (from_p, to_p) = (join(p, "fromPort"), join(p, "toPort"));
    match r.protocol {
        Protocol::Tcp | Protocol::Udp => {
            let proto = r.protocol;
            if r.from_port.is_none() {
                errs.push(&from_p, format!("required for {proto}"));
            }
            if r.to_port.is_none() {
                errs.push(&to_p, format!("required for {proto}"));
            }
            if let Some(f) = r.from_port {
                check_range(errs, &from_p, f, -1, 65535);
            }
            if let Some(t) = r.to_port {
                check_range(errs, &to_p, t, -1, 65535);
            }
            if let (Some(f), Some(t)) = (r.from_port, r.to_port) {
                if f == -1 && t != -1 {
                    errs.push(&to_p, "must be -1 when fromPort is -1 (all ports)");
                } else if t < f && t >= -1 {
                    errs.push(&to_p, format!("must not be less than fromPort ({f})"));
                }
            }
        }
        Protocol::Icmp => {
            if let Some(f) = r.from_port {
                check_range(errs, &from_p, f, -1, 255);
            }
            if let Some(t) = r.to_port {
                check_range(errs, &to_p, t, -1, 255);
            }
        }
        Protocol::All | Protocol::Number(_) => {
            let proto = r.protocol;
            if r.from_port.is_some() {
                errs.push(&from_p, format!("not allowed for protocol {proto}"));
            }
            if r.to_port.is_some() {
                errs.push(&to_p, format!("not allowed for protocol {proto}"));
            }
        }
    }
    check_description(errs, &join(p, "description"), r.description.as_deref());
}

impl Validate for SecurityGroup {
    fn validate(&self) -> FieldErrors {
        let mut errs = header(self, NameRule::DnsLabel);
        let spec = &self.spec;
        check_description(&mut errs, "spec.description", Some(&spec.description));
        for (path, rules) in [
            ("spec.ingress", &spec.ingress),
            ("spec.egress", &spec.egress),
        ] {
            if rules.len() > MAX_RULES {
                errs.push(
                    path,
                    format!("must have at most {MAX_RULES} rules (has {})", rules.len()),
                );
                continue;
            }
            for (i, r) in rules.iter().enumerate() {
                check_rule(&mut errs, &index(path, i), r);
            }
        }
        check_tags(&mut errs, "spec.tags", &spec.tags);
        errs
    }
}

impl crate::HostRefs for SecurityGroup {}

// Rules are kept exactly as written: no implicit egress rule.
impl Defaults for SecurityGroup {}

// Rules may change freely.
impl_validate_update!(SecurityGroup);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::testing::round_trip_kind;
    use crate::validate::testing::{assert_errors, assert_valid};
    use crate::validate::DNS_LABEL_MSG;
    use crate::Resource;

    fn rule(proto: Protocol, from: Option<i32>, to: Option<i32>) -> SecurityGroupRule {
        SecurityGroupRule {
            protocol: proto,
            from_port: from,
            to_port: to,
            cidr: Some("0.0.0.0/0".into()),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_and_protocol_spellings() {
        let sg: SecurityGroup = round_trip_kind(
            r#"
metadata: {name: web, project: demo}
spec:
  description: web servers
  ingress:
    - {protocol: tcp, fromPort: 22, toPort: 22, cidr: 0.0.0.0/0, description: ssh}
    - {protocol: "6", fromPort: 80, toPort: 80, sourceGroup: lb}
    - {protocol: icmp, fromPort: -1, toPort: -1, cidr: 10.0.0.0/8}
    - {protocol: 47, cidr: 10.0.0.0/8}
    - {protocol: "-1", cidr: 10.0.0.0/8}
  egress:
    - {protocol: all, cidr: 0.0.0.0/0}
status: {ec2Id: sg-0123456789abcdef0}
"#,
        );
        let protos: Vec<_> = sg.spec.ingress.iter().map(|r| r.protocol).collect();
        assert_eq!(
            protos,
            [
                Protocol::Tcp,
                Protocol::Tcp,
                Protocol::Icmp,
                Protocol::Number(47),
                Protocol::All
            ]
        );
        assert_eq!(serde_json::to_value(Protocol::Number(47)).unwrap(), "47");
        assert_valid(&sg);
        for bad in ["\"sctp\"", "256", "\"300\"", "-2", "\"\""] {
            let e = serde_json::from_str::<Protocol>(bad)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("expected tcp, udp, icmp, icmpv6, all or a protocol number 0-255"),
                "{e}"
            );
        }
        assert_eq!(Protocol::parse("UDP"), Some(Protocol::Udp));
        assert_eq!(Protocol::parse("icmpv6"), Some(Protocol::Number(58)));
    }

    #[test]
    fn peer_rules() {
        let mut sg = SecurityGroup::new("demo", "web", SecurityGroupSpec::default());
        let mut neither = rule(Protocol::All, None, None);
        neither.cidr = None;
        let mut both = rule(Protocol::All, None, None);
        both.source_group = Some("Lb".into());
        let mut hostbits = rule(Protocol::All, None, None);
        hostbits.cidr = Some("10.0.0.1/8".into());
        let mut junk = rule(Protocol::All, None, None);
        junk.cidr = Some("anywhere".into());
        sg.spec.ingress = vec![neither, both];
        sg.spec.egress = vec![hostbits, junk];
        assert_errors(
            &sg.validate(),
            &[
                "spec.ingress[0].cidr: required: set cidr or sourceGroup",
                "spec.ingress[1].sourceGroup: must not be set together with cidr",
                &format!("spec.ingress[1].sourceGroup: {DNS_LABEL_MSG}"),
                "spec.egress[0].cidr: host bits must be zero (did you mean 10.0.0.0/8?)",
                "spec.egress[1].cidr: must be an IPv4 or IPv6 CIDR block like 0.0.0.0/0 or ::/0",
            ],
        );
    }

    #[test]
    fn ipv6_peers() {
        let sg: SecurityGroup = round_trip_kind(
            r#"
metadata: {name: web, project: demo}
spec:
  ingress:
    - {protocol: tcp, fromPort: 22, toPort: 22, cidr: "2001:DB8::/32", description: ssh}
    - {protocol: icmpv6, cidr: "fe80::/10"}
  egress:
    - {protocol: all, cidr: "::/0"}
    - {protocol: all, cidr: 0.0.0.0/0}
"#,
        );
        assert_valid(&sg);
        // Kept as written: EC2 answers what it was given.
        assert_eq!(sg.spec.ingress[0].cidr.as_deref(), Some("2001:DB8::/32"));
        assert_eq!(sg.spec.ingress[1].protocol, Protocol::Number(58));

        let mut bad = SecurityGroup::new("demo", "web", SecurityGroupSpec::default());
        let with = |c: &str| SecurityGroupRule {
            cidr: Some(c.into()),
            ..rule(Protocol::All, None, None)
        };
        bad.spec.ingress = vec![
            with("2001:db8::1/64"),
            with("::/129"),
            with("2001:db8:::/32"),
            with("fe80::%eth0/64"),
        ];
        assert_errors(
            &bad.validate(),
            &[
                "spec.ingress[0].cidr: host bits must be zero (did you mean 2001:db8::/64?)",
                "spec.ingress[1].cidr: prefix length must be between 0 and 128",
                "spec.ingress[2].cidr: must be an IPv6 CIDR block like 2001:db8::/32",
                "spec.ingress[3].cidr: must be an IPv6 CIDR block like 2001:db8::/32",
            ],
        );
    }

    #[test]
    fn port_rules() {
        let mut sg = SecurityGroup::new("demo", "web", SecurityGroupSpec::default());
        sg.spec.description = "d".repeat(256);
        sg.spec.ingress = vec![
            rule(Protocol::Tcp, None, None),
            rule(Protocol::Udp, Some(100), Some(99)),
            rule(Protocol::Tcp, Some(-1), Some(80)),
            rule(Protocol::Tcp, Some(0), Some(65536)),
            rule(Protocol::Icmp, Some(256), Some(-2)),
            rule(Protocol::All, Some(1), None),
            rule(Protocol::Number(47), None, Some(2)),
            rule(Protocol::Tcp, Some(-1), Some(-1)),
            rule(Protocol::Icmp, None, None),
            rule(Protocol::Udp, Some(53), Some(53)),
        ];
        assert_errors(
            &sg.validate(),
            &[
                "spec.description: must be at most 255 characters (is 256)",
                "spec.ingress[0].fromPort: required for tcp",
                "spec.ingress[0].toPort: required for tcp",
                "spec.ingress[1].toPort: must not be less than fromPort (100)",
                "spec.ingress[2].toPort: must be -1 when fromPort is -1 (all ports)",
                "spec.ingress[3].toPort: must be between -1 and 65535 (is 65536)",
                "spec.ingress[4].fromPort: must be between -1 and 255 (is 256)",
                "spec.ingress[4].toPort: must be between -1 and 255 (is -2)",
                "spec.ingress[5].fromPort: not allowed for protocol all",
                "spec.ingress[6].toPort: not allowed for protocol 47",
            ],
        );
    }
}
