//! The tree of paths an instance reads: versions, `meta-data/` (as each
//! dated version shows it), `user-data` and the identity document, in
//! EC2's layout. Pure: from an [`InstanceMetadata`] to text.

use std::collections::BTreeMap;

use serde::Serialize;

use super::InstanceMetadata;

/// Metadata versions, oldest first, as `GET /` lists them. Plain string
/// order is version order: `1.0` < dates < `latest`.
const VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "latest",
];

// ---------------------------------------------------------------------------
// The tree of paths.

/// What a path resolves to.
pub(super) enum Value {
    Text(String),
    Bytes(Vec<u8>),
}

/// A node of the `meta-data/` tree.
enum Node {
    Leaf(String),
    /// Children in listing order: (path segment, how the listing shows it,
    /// node).
    Dir(Vec<(String, String, Node)>),
}

impl Node {
    fn text(self) -> String {
        match self {
            Node::Leaf(s) => s,
            Node::Dir(children) => children
                .into_iter()
                .map(|(_, listed, _)| listed)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// A directory listed in name order, subdirectories with a trailing `/`.
/// Empty values are left out: EC2 has no empty categories, and clients
/// (botocore) retry an empty answer as a failure.
fn dir(children: Vec<(&str, Node)>) -> Node {
    let mut children: Vec<_> = children
        .into_iter()
        .filter(|(_, node)| !matches!(node, Node::Leaf(s) if s.is_empty()))
        .map(|(name, node)| {
            let listed = match node {
                Node::Dir(_) => format!("{name}/"),
                Node::Leaf(_) => name.to_string(),
            };
            (name.to_string(), listed, node)
        })
        .collect();
    children.sort_by(|a, b| a.0.cmp(&b.0));
    Node::Dir(children)
}

fn leaf(s: impl Into<String>) -> Node {
    Node::Leaf(s.into())
}

/// Resolves a request path for `md`, or `None` for 404.
pub(super) fn resolve(md: &InstanceMetadata, path: &str) -> Option<Value> {
    if path == "/" {
        return Some(Value::Text(VERSIONS.join("\n")));
    }
    // One trailing slash is insignificant; empty segments are not paths.
    let trimmed = path.strip_prefix('/')?;
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let segs: Vec<&str> = trimmed.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    let version = *VERSIONS.iter().find(|v| **v == segs[0])?;
    let has_dynamic = version >= "2009-04-04";
    let user_data = md.user_data.as_ref().filter(|d| !d.is_empty());
    match &segs[1..] {
        [] => {
            let mut top = Vec::new();
            if has_dynamic {
                top.push("dynamic");
            }
            top.push("meta-data");
            if user_data.is_some() {
                top.push("user-data");
            }
            Some(Value::Text(top.join("\n")))
        }
        ["user-data"] => user_data.map(|d| Value::Bytes(d.clone())),
        ["meta-data", rest @ ..] => walk(meta_data(md, version), rest).map(Value::Text),
        ["dynamic", rest @ ..] if has_dynamic => {
            let identity = dir(vec![("document", leaf(identity_document(md)))]);
            walk(dir(vec![("instance-identity", identity)]), rest).map(Value::Text)
        }
        _ => None,
    }
}

fn walk(mut node: Node, path: &[&str]) -> Option<String> {
    for seg in path {
        let Node::Dir(children) = node else {
            return None;
        };
        node = children.into_iter().find(|(name, ..)| name == seg)?.2;
    }
    Some(node.text())
}

/// The `meta-data/` tree of `md` as `version` shows it.
fn meta_data(md: &InstanceMetadata, version: &str) -> Node {
    let mut c: Vec<(&str, Node)> = Vec::new();
    let mut add = |since: &str, name: &'static str, node: Node| {
        if version >= since {
            c.push((name, node));
        }
    };
    if let Some(ami) = &md.ami_id {
        add("1.0", "ami-id", leaf(ami));
    }
    add("1.0", "ami-launch-index", leaf("0"));
    add("1.0", "hostname", leaf(&md.hostname));
    add("1.0", "instance-id", leaf(&md.instance_id));
    add("2007-08-29", "instance-type", leaf(&md.instance_type));
    if let Some(k) = &md.kernel_id {
        add("2008-02-01", "kernel-id", leaf(k));
    }
    add("2007-01-19", "local-hostname", leaf(&md.hostname));
    add("1.0", "local-ipv4", leaf(&md.local_ipv4));
    let mac = md.mac.to_ascii_lowercase();
    if !mac.is_empty() {
        add("2011-01-01", "mac", leaf(&mac));
        add("2011-01-01", "network", network(md, &mac));
    }
    let mut placement = vec![("availability-zone", leaf(&md.availability_zone))];
    // EC2 added the region in 2020-08-24, a build it does not list.
    if version >= "2020-08-24" {
        placement.push(("region", leaf(&md.region)));
    }
    add("2008-02-01", "placement", dir(placement));
    if let Some(h) = &md.public_hostname {
        add("2007-01-19", "public-hostname", leaf(h));
    }
    if let Some(ip) = &md.public_ipv4 {
        add("2007-01-19", "public-ipv4", leaf(ip));
    }
    if !md.public_keys.is_empty() {
        add("1.0", "public-keys", public_keys(&md.public_keys));
    }
    if let Some(r) = &md.ramdisk_id {
        add("2008-02-01", "ramdisk-id", leaf(r));
    }
    if let Some(r) = &md.reservation_id {
        add("1.0", "reservation-id", leaf(r));
    }
    if !md.security_groups.is_empty() {
        add(
            "1.0",
            "security-groups",
            leaf(md.security_groups.join("\n")),
        );
    }
    // EC2 added tags after its last dated version.
    if let Some(tags) = md.tags.as_ref().filter(|t| !t.is_empty()) {
        add("latest", "tags", instance_tags(tags));
    }
    dir(c)
}

/// `tags/instance/`: the tag keys, in key order, each holding its value
/// (an empty value too: the tag exists).
fn instance_tags(tags: &BTreeMap<String, String>) -> Node {
    let keys = tags
        .iter()
        .map(|(k, v)| (k.clone(), k.clone(), leaf(v)))
        .collect();
    dir(vec![("instance", Node::Dir(keys))])
}

/// `public-keys/`: listed as `N=name`, entered as `N/`, holding
/// `openssh-key`; kept in key order (`10` after `9`).
fn public_keys(keys: &[(String, String)]) -> Node {
    Node::Dir(
        keys.iter()
            .enumerate()
            .map(|(i, (name, key))| {
                let node = dir(vec![("openssh-key", leaf(key))]);
                (i.to_string(), format!("{i}={name}"), node)
            })
            .collect(),
    )
}

/// `network/interfaces/macs/<mac>/` for the one interface served.
fn network(md: &InstanceMetadata, mac: &str) -> Node {
    let mut iface = vec![
        ("device-number", leaf("0")),
        ("local-hostname", leaf(&md.hostname)),
        ("local-ipv4s", leaf(&md.local_ipv4)),
        ("mac", leaf(mac)),
    ];
    if let Some(ip) = &md.public_ipv4 {
        iface.push(("public-ipv4s", leaf(ip)));
        iface.push((
            "ipv4-associations",
            Node::Dir(vec![(ip.clone(), ip.clone(), leaf(&md.local_ipv4))]),
        ));
    }
    if let Some(h) = &md.public_hostname {
        iface.push(("public-hostname", leaf(h)));
    }
    if !md.security_groups.is_empty() {
        iface.push(("security-groups", leaf(md.security_groups.join("\n"))));
    }
    let macs = Node::Dir(vec![(mac.to_string(), format!("{mac}/"), dir(iface))]);
    dir(vec![("interfaces", dir(vec![("macs", macs)]))])
}

/// `dynamic/instance-identity/document`, with EC2's field names.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IdentityDocument<'a> {
    account_id: &'a str,
    architecture: &'a str,
    availability_zone: &'a str,
    image_id: Option<&'a str>,
    instance_id: &'a str,
    instance_type: &'a str,
    kernel_id: Option<&'a str>,
    pending_time: Option<String>,
    private_ip: &'a str,
    ramdisk_id: Option<&'a str>,
    region: &'a str,
    version: &'static str,
}

fn identity_document(md: &InstanceMetadata) -> String {
    let doc = IdentityDocument {
        account_id: &md.account_id,
        architecture: &md.architecture,
        availability_zone: &md.availability_zone,
        image_id: md.ami_id.as_deref(),
        instance_id: &md.instance_id,
        instance_type: &md.instance_type,
        kernel_id: md.kernel_id.as_deref(),
        pending_time: md
            .launch_time
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
        private_ip: &md.local_ipv4,
        ramdisk_id: md.ramdisk_id.as_deref(),
        region: &md.region,
        version: "2017-09-30",
    };
    // Serialising borrowed strings and options cannot fail.
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md() -> InstanceMetadata {
        InstanceMetadata {
            instance_id: "i-0123456789abcdef0".into(),
            hostname: "web".into(),
            local_ipv4: "10.0.0.5".into(),
            mac: "52:54:00:AA:BB:CC".into(),
            availability_zone: "nova-a".into(),
            region: "nova".into(),
            public_keys: (0..11)
                .map(|i| (format!("k{i}"), format!("ssh-ed25519 K{i}")))
                .collect(),
            ..Default::default()
        }
    }

    fn text(md: &InstanceMetadata, path: &str) -> Option<String> {
        match resolve(md, path)? {
            Value::Text(t) => Some(t),
            Value::Bytes(_) => None,
        }
    }

    #[test]
    fn versions_compare_as_strings() {
        let mut sorted = VERSIONS.to_vec();
        sorted.sort();
        assert_eq!(sorted, VERSIONS);
    }

    #[test]
    fn public_keys_keep_numeric_order_and_leaves_ignore_a_trailing_slash() {
        let m = md();
        let listing = text(&m, "/latest/meta-data/public-keys/").unwrap();
        assert!(listing.starts_with("0=k0\n1=k1\n2=k2"), "{listing}");
        assert!(listing.ends_with("9=k9\n10=k10"), "{listing}");
        assert_eq!(
            text(&m, "/latest/meta-data/public-keys/10/openssh-key/").unwrap(),
            "ssh-ed25519 K10"
        );
        assert_eq!(
            text(&m, "/latest/meta-data/mac").unwrap(),
            "52:54:00:aa:bb:cc"
        );
        assert_eq!(text(&m, "/latest//meta-data"), None);
        assert_eq!(text(&m, "latest/meta-data"), None);
    }

    #[test]
    fn tags_are_served_only_when_given_and_only_at_latest() {
        let mut m = md();
        assert!(!text(&m, "/latest/meta-data/").unwrap().contains("tags"));
        assert_eq!(text(&m, "/latest/meta-data/tags/instance"), None);
        m.tags = Some(BTreeMap::new());
        assert!(!text(&m, "/latest/meta-data/").unwrap().contains("tags"));
        m.tags = Some(
            [("Name", "web"), ("env", ""), ("team:a", "x y")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
        );
        let listing = text(&m, "/latest/meta-data/").unwrap();
        assert!(listing.ends_with("\npublic-keys/\ntags/"), "{listing}");
        assert_eq!(text(&m, "/latest/meta-data/tags").unwrap(), "instance/");
        assert_eq!(
            text(&m, "/latest/meta-data/tags/instance/").unwrap(),
            "Name\nenv\nteam:a"
        );
        assert_eq!(
            text(&m, "/latest/meta-data/tags/instance/Name").unwrap(),
            "web"
        );
        assert_eq!(
            text(&m, "/latest/meta-data/tags/instance/team:a").unwrap(),
            "x y"
        );
        assert_eq!(text(&m, "/latest/meta-data/tags/instance/env").unwrap(), "");
        assert_eq!(text(&m, "/latest/meta-data/tags/instance/nope"), None);
        assert_eq!(text(&m, "/2021-07-15/meta-data/tags/instance/Name"), None);
    }

    #[test]
    fn empty_values_are_not_served() {
        let mut m = md();
        m.instance_type.clear();
        m.security_groups = vec![];
        m.user_data = Some(vec![]);
        let listing = text(&m, "/latest/meta-data/").unwrap();
        assert!(!listing.contains("instance-type"), "{listing}");
        assert!(!listing.contains("security-groups"), "{listing}");
        assert_eq!(text(&m, "/latest/meta-data/instance-type"), None);
        assert_eq!(text(&m, "/latest/").unwrap(), "dynamic\nmeta-data");
        assert!(resolve(&m, "/latest/user-data").is_none());
    }
}
