//! The XML [`Libvirt`] writes (a domain's definition) and the little it
//! reads back (DHCP reservations, disks, the recording node). Text in,
//! text out: no libvirt calls here.

use super::{disk_xml, domain_name, xml_escape, DomainSpec, Libvirt, NicSource};

impl Libvirt {
    /// The domain definition of `spec`. On libvirt's test driver only the
    /// disks are kept: it runs nothing, has none of Corral's networks and
    /// writes no console, but its disk list is what volume hot-plug
    /// compares against.
    pub fn domain_xml(&self, spec: &DomainSpec) -> String {
        let e = xml_escape;
        let real = !self.is_test();
        let mut devices = String::new();
        for d in &spec.disks {
            devices.push_str("    ");
            devices.push_str(&disk_xml(d));
            devices.push('\n');
        }
        let mut os = String::from("<type arch='x86_64'>hvm</type>");
        if real {
            match &spec.kernel {
                Some(k) => {
                    os.push_str(&format!(
                        "<kernel>{}</kernel>",
                        e(&k.kernel.display().to_string())
                    ));
                    if let Some(i) = &k.initrd {
                        os.push_str(&format!("<initrd>{}</initrd>", e(&i.display().to_string())));
                    }
                    os.push_str(&format!("<cmdline>{}</cmdline>", e(&k.cmdline)));
                }
                None => os.push_str("<boot dev='hd'/>"),
            }
            for nic in &spec.nics {
                let (kind, source) = match &nic.source {
                    NicSource::Network(n) => ("network", format!("<source network='{}'/>", e(n))),
                    NicSource::Bridge(b) => ("bridge", format!("<source bridge='{}'/>", e(b))),
                };
                devices.push_str(&format!(
                    "    <interface type='{kind}'><mac address='{mac}'/>{source}<target dev='{tap}'/><model type='virtio'/></interface>\n",
                    mac = e(&nic.mac),
                    tap = e(&nic.tap),
                ));
            }
            match &spec.console_log {
                Some(log) => devices.push_str(&format!(
                    "    <serial type='pty'><log file='{}' append='on'/><target port='0'/></serial>\n",
                    e(&log.display().to_string())
                )),
                None => devices.push_str("    <serial type='pty'><target port='0'/></serial>\n"),
            }
            devices
                .push_str("    <console type='pty'><target type='serial' port='0'/></console>\n");
            devices.push_str("    <memballoon model='none'/>\n");
            // No USB: nothing Corral attaches uses it, and libvirt would
            // otherwise add a UHCI controller the guest probes at boot
            // (Nova disables it the same way when no USB device is asked
            // for). The bare-QEMU baseline of `corral bench boot` has none.
            devices.push_str("    <controller type='usb' model='none'/>\n");
        }
        let cpu = if self.virt_type == "kvm" {
            "  <cpu mode='host-passthrough'/>\n"
        } else {
            ""
        };
        format!(
            "<domain type='{vt}'>\n  <name>{name}</name>\n  <uuid>{uid}</uuid>\n  <metadata>\n    <corral:instance xmlns:corral='https://corral.dev/xmlns/instance/v1'>\n      <corral:node>{node}</corral:node>\n      <corral:project>{project}</corral:project>\n      <corral:name>{instance}</corral:name>\n    </corral:instance>\n  </metadata>\n  <memory unit='MiB'>{mem}</memory>\n  <vcpu>{cpus}</vcpu>\n  <os>{os}</os>\n  <features><acpi/></features>\n{cpu}  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n  <devices>\n{devices}  </devices>\n</domain>\n",
            vt = e(&self.virt_type),
            name = e(&domain_name(&spec.uid)),
            uid = e(&spec.uid),
            node = e(&spec.node),
            project = e(&spec.project),
            instance = e(&spec.instance),
            mem = spec.memory_mib,
            cpus = spec.vcpus,
        )
    }
}

/// The `<host .../>` DHCP reservations in a network's XML: (MAC, element).
pub(super) fn host_elements(xml: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<host ") {
        let Some(len) = rest[start..].find("/>") else {
            break;
        };
        let elem = &rest[start..start + len + 2];
        if let Some(mac) = attr(elem, "mac") {
            out.push((mac.to_ascii_lowercase(), elem.to_string()));
        }
        rest = &rest[start + len + 2..];
    }
    out
}

/// The value of attribute `name` in one element (either quote style).
fn attr<'a>(elem: &'a str, name: &str) -> Option<&'a str> {
    for q in ['\'', '"'] {
        let pat = format!(" {name}={q}");
        if let Some(i) = elem.find(&pat) {
            let v = &elem[i + pat.len()..];
            return v.find(q).map(|j| &v[..j]);
        }
    }
    None
}

/// Whether two `<host>` elements reserve the same thing.
pub(super) fn host_same(a: &str, b: &str) -> bool {
    ["mac", "ip", "name"]
        .iter()
        .all(|k| attr(a, k).map(str::to_ascii_lowercase) == attr(b, k).map(str::to_ascii_lowercase))
}

/// The text of the first `<corral:node>` element.
pub(super) fn corral_node(xml: &str) -> Option<String> {
    let start = xml.find("<corral:node>")? + "<corral:node>".len();
    let len = xml[start..].find("</corral:node>")?;
    Some(
        xml[start..start + len]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// Each `<disk>...</disk>` element of a domain's XML with its target dev.
pub(super) fn disk_elements(xml: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<disk ") {
        let Some(len) = rest[start..].find("</disk>") else {
            break;
        };
        let element = &rest[start..start + len + "</disk>".len()];
        let target = element.find("<target dev=").and_then(|i| {
            let v = &element[i + "<target dev=".len()..];
            let q = v.chars().next()?;
            let v = &v[1..];
            v.find(q).map(|end| v[..end].to_string())
        });
        out.push((target, element.to_string()));
        rest = &rest[start + len..];
    }
    out
}

pub(super) fn find_disk_element(xml: &str, target: &str) -> Option<String> {
    disk_elements(xml)
        .into_iter()
        .find(|(t, _)| t.as_deref() == Some(target))
        .map(|(_, e)| e)
}

/// `xml` (a domain definition) with `disk` added last among its devices.
pub(super) fn with_disk(xml: &str, disk: &str) -> Option<String> {
    let at = xml.rfind("</devices>")?;
    Some(format!("{}  {disk}\n  {}", &xml[..at], &xml[at..]))
}

/// `xml` (a domain definition) without `element` (as found in it).
pub(super) fn without(xml: &str, element: &str) -> String {
    xml.replacen(element, "", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_added_and_removed_in_a_definition() {
        let xml = "<domain>\n  <devices>\n  </devices>\n</domain>\n";
        let d = "<disk type='file' device='disk'><target dev='vdb' bus='virtio'/></disk>";
        let added = with_disk(xml, d).unwrap();
        let found = disk_elements(&added);
        assert_eq!(found.len(), 1, "{added}");
        assert_eq!(found[0].0.as_deref(), Some("vdb"));
        let element = find_disk_element(&added, "vdb").unwrap();
        assert!(disk_elements(&without(&added, &element)).is_empty());
    }
}
