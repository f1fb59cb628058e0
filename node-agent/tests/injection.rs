//! Injection: hostile text (path traversal, quotes, markup, shell and
//! newlines) that reaches the node agent from objects is escaped where it
//! is written into libvirt domain XML and NoCloud meta-data, proven by
//! parsing the output back (libvirt's own XML parser, a YAML parser) and
//! getting exactly the input. Paths on the host are built from server-made
//! uids only (checked by the API server's tests: a client's uid is
//! replaced).

use std::path::PathBuf;

use corral_node_agent::host::Seed;
use corral_node_agent::hypervisor::{
    disk_xml, domain_name, simulated_host, xml_escape, DiskSpec, DomainSpec,
};
use corral_node_agent::{Hypervisor, Libvirt};

const HOSTILE: &[&str] = &[
    "../../etc/passwd",
    "a'b",
    "x\"y",
    "<domain type='kvm'>",
    "</name><name>evil",
    "$(reboot)",
    "`id`",
    "line\nbreak: yes",
    "&amp;",
    "&lt;",
    "]]>",
    "a;rm -rf /",
    "- item",
    "key: value",
    "#comment",
    "\u{202e}rtl",
];

/// No raw markup survives escaping: every `<`, `>`, quote and `&` in the
/// output is part of an entity.
#[test]
fn xml_escape_leaves_no_markup() {
    for s in HOSTILE {
        let e = xml_escape(s);
        assert!(!e.contains('<') && !e.contains('>'), "{s:?} -> {e:?}");
        assert!(!e.contains('\'') && !e.contains('"'), "{s:?} -> {e:?}");
        let unescaped = e
            .replace("&lt;", "")
            .replace("&gt;", "")
            .replace("&quot;", "")
            .replace("&apos;", "")
            .replace("&amp;", "");
        assert!(!unescaped.contains('&'), "{s:?} -> {e:?}");
    }
}

/// A disk's path and serial (a volume id) land inside their attribute or
/// element and nowhere else.
#[test]
fn disk_xml_escapes_paths_and_serials() {
    for s in HOSTILE {
        for cdrom in [false, true] {
            let d = DiskSpec {
                path: PathBuf::from(format!("/var/lib/corral/{s}")),
                format: "qcow2".into(),
                target: "vdb".into(),
                readonly: false,
                serial: Some(s.to_string()),
                cdrom,
            };
            let xml = disk_xml(&d);
            // Exactly the elements we wrote: one disk, one source, one target.
            assert_eq!(xml.matches('<').count(), if cdrom { 6 } else { 7 }, "{xml}");
            assert!(xml.contains(&format!(
                "file='{}'",
                xml_escape(&format!("/var/lib/corral/{s}"))
            )));
            if !cdrom {
                assert!(xml.contains(&format!("<serial>{}</serial>", xml_escape(s))));
            }
        }
    }
}

/// Domain metadata (project, instance name, node) goes through libvirt's
/// XML parser intact: what is read back is exactly what was written.
#[test]
fn domain_metadata_round_trips_through_libvirt() {
    let dir = tempfile::tempdir().unwrap();
    let uri = simulated_host(dir.path(), "inject", 4, 4096).unwrap();
    let hv = Libvirt::open(&uri, "kvm").unwrap();
    for (i, s) in HOSTILE.iter().enumerate() {
        // libvirt keeps XML 1.0 text: no control characters but newline and tab.
        let uid = format!("00000000-0000-4000-8000-{i:012}");
        let spec = DomainSpec {
            node: format!("node-{s}"),
            uid: uid.clone(),
            project: s.to_string(),
            instance: s.to_string(),
            vcpus: 1,
            memory_mib: 64,
            ..Default::default()
        };
        let xml = hv.domain_xml(&spec);
        assert_eq!(xml.matches("<name>").count(), 1, "{xml}");
        assert_eq!(xml.matches("<domain ").count(), 1, "{xml}");
        hv.define(&spec)
            .unwrap_or_else(|e| panic!("{s:?}: {e}\n{xml}"));
        let name = domain_name(&uid);
        assert_eq!(
            hv.node_of(&name).unwrap().as_deref(),
            Some(format!("node-{s}").as_str())
        );
        hv.undefine(&name).unwrap();
    }
}

/// NoCloud meta-data is YAML: hostile host names and key comments stay
/// scalars (no injected keys, no broken document).
#[test]
fn meta_data_keeps_hostile_text_as_scalars() {
    for s in HOSTILE {
        let seed = Seed {
            instance_id: format!("i-{s}"),
            hostname: s.to_string(),
            public_keys: vec![format!("ssh-ed25519 AAAA {s}"), s.to_string()],
            user_data: s.as_bytes().to_vec(),
        };
        let text = seed.meta_data();
        let parsed: serde_json::Value =
            yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{s:?}: {e}\n{text}"));
        let map = parsed.as_object().unwrap();
        let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["instance-id", "local-hostname", "public-keys"],
            "{text}"
        );
        assert_eq!(parsed["local-hostname"], *s, "{text}");
        assert_eq!(parsed["instance-id"], format!("i-{s}"));
        assert_eq!(
            parsed["public-keys"][0],
            format!("ssh-ed25519 AAAA {s}").trim()
        );
        assert_eq!(parsed["public-keys"][1], s.trim());
    }
}
