//! Rendering for humans: kubectl-style tables with per-kind columns, ages
//! (`5s`, `3m`, `2h`, `4d`), sizes, and YAML/JSON printing.

use chrono::{DateTime, Utc};
use corral_api_types::KindInfo;
use serde_json::Value;

/// What a missing value shows as.
pub const NONE: &str = "<none>";

/// A string at a JSON pointer, if present and non-empty.
pub fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A scalar at a JSON pointer as text, or `<none>`.
/// The EC2 id: as the status records it, else derived from the uid the
/// same way the EC2 façade derives it.
fn ec2_id(v: &Value, kind: &str) -> String {
    let recorded = text_at(v, "/status/ec2Id");
    if recorded != NONE {
        return recorded;
    }
    let Some(uid) = v.pointer("/metadata/uid").and_then(|u| u.as_str()) else {
        return NONE.to_string();
    };
    if kind == "Image" {
        // Kernels and ramdisks are aki-/ari-.
        let image_type = v
            .pointer("/spec/imageType")
            .and_then(|t| serde_json::from_value(t.clone()).ok())
            .unwrap_or_default();
        return corral_api_types::ec2::image_id(image_type, uid);
    }
    corral_api_types::ec2::resource_id(kind, uid).unwrap_or_else(|| NONE.to_string())
}

pub fn text_at(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => NONE.to_string(),
    }
}

pub fn name_of(v: &Value) -> &str {
    str_at(v, "/metadata/name").unwrap_or("")
}

pub fn project_of(v: &Value) -> &str {
    str_at(v, "/metadata/project").unwrap_or("")
}

/// A timestamp at a JSON pointer.
pub fn time_at(v: &Value, pointer: &str) -> Option<DateTime<Utc>> {
    str_at(v, pointer)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// kubectl's human duration: `45s`, `3m20s`, `15m`, `5h10m`, `20h`,
/// `3d4h`, `30d`, `2y10d`.
pub fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        };
    }
    if days < 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if days < 365 * 8 {
        let d = days % 365;
        return if d == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{d}d")
        };
    }
    format!("{years}y")
}

/// Age of a timestamp at `pointer`, or `<unknown>`.
pub fn age_at(v: &Value, pointer: &str, now: DateTime<Utc>) -> String {
    match time_at(v, pointer) {
        Some(t) => human_duration(now - t),
        None => "<unknown>".into(),
    }
}

/// `1.5Gi`, `300Mi`, `12Ki`, `512B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["Ki", "Mi", "Gi", "Ti", "Pi"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut value = n as f64;
    let mut unit = "";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    if value >= 10.0 || value.fract() == 0.0 {
        format!("{value:.0}{unit}")
    } else {
        format!("{value:.1}{unit}")
    }
}

/// Status of the condition `type_` (`True`, `False`, `Unknown`), if reported.
pub fn condition_status<'a>(v: &'a Value, type_: &str) -> Option<&'a str> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))?
        .get("status")
        .and_then(Value::as_str)
}

/// One column of a kind's table.
pub struct Column {
    pub header: &'static str,
    pub cell: fn(&Value, DateTime<Utc>) -> String,
}

const fn col(header: &'static str, cell: fn(&Value, DateTime<Utc>) -> String) -> Column {
    Column { header, cell }
}

fn name_cell(v: &Value, _: DateTime<Utc>) -> String {
    name_of(v).to_string()
}

fn age_cell(v: &Value, now: DateTime<Utc>) -> String {
    age_at(v, "/metadata/creationTimestamp", now)
}

fn size_gib(v: Option<&Value>) -> String {
    v.and_then(Value::as_u64)
        .map_or(NONE.to_string(), |n| format!("{n}Gi"))
}

fn join_strings(v: Option<&Value>, field: &str) -> String {
    let items: Vec<&str> = v
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.get(field).and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    if items.is_empty() {
        NONE.to_string()
    } else {
        items.join(",")
    }
}

fn instance_type_cell(v: &Value, _: DateTime<Utc>) -> String {
    if let Some(t) = str_at(v, "/spec/instanceType") {
        return t.to_string();
    }
    match (
        v.pointer("/spec/cpus").and_then(Value::as_u64),
        v.pointer("/spec/memoryMiB").and_then(Value::as_u64),
    ) {
        (Some(c), Some(m)) => format!("{c}cpu/{m}Mi"),
        _ => NONE.to_string(),
    }
}

fn instance_image_cell(v: &Value, _: DateTime<Utc>) -> String {
    match (str_at(v, "/spec/image"), str_at(v, "/spec/bootVolume")) {
        (Some(i), _) => i.to_string(),
        (None, Some(b)) => format!("volume:{b}"),
        _ => NONE.to_string(),
    }
}

fn attached_cell(v: &Value, _: DateTime<Utc>) -> String {
    match (
        str_at(v, "/status/attachedTo/instance"),
        str_at(v, "/status/attachedTo/device"),
    ) {
        (Some(i), Some(d)) => format!("{i}:{d}"),
        (Some(i), None) => i.to_string(),
        _ => NONE.to_string(),
    }
}

fn ready_cell(v: &Value, _: DateTime<Utc>) -> String {
    condition_status(v, "Ready")
        .unwrap_or("Unknown")
        .to_string()
}

fn count_cell(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
        .to_string()
}

/// The table columns of a kind (`wide` adds the extra ones).
pub fn columns(info: &KindInfo, wide: bool) -> Vec<Column> {
    let mut cols = vec![col("NAME", name_cell)];
    match info.plural {
        "instances" => {
            cols.push(col("PHASE", |v, _| text_at(v, "/status/phase")));
            cols.push(col("NODE", |v, _| text_at(v, "/status/nodeName")));
            cols.push(col("ADDRESS", |v, _| {
                join_strings(v.pointer("/status/addresses"), "ip")
            }));
            cols.push(col("AGE", age_cell));
            if wide {
                cols.push(col("TYPE", instance_type_cell));
                cols.push(col("IMAGE", instance_image_cell));
                cols.push(col("ZONE", |v, _| text_at(v, "/spec/availabilityZone")));
                cols.push(col("EC2-ID", |v, _| ec2_id(v, "Instance")));
            }
        }
        "networks" => {
            cols.push(col("CIDR", |v, _| text_at(v, "/spec/cidr")));
            cols.push(col("MODE", |v, _| text_at(v, "/spec/mode")));
            cols.push(col("AGE", age_cell));
            if wide {
                cols.push(col("GATEWAY", |v, _| text_at(v, "/spec/gateway")));
                cols.push(col("DHCP", |v, _| text_at(v, "/spec/dhcp")));
            }
        }
        "volumes" => {
            cols.push(col("SIZE", |v, _| {
                size_gib(
                    v.pointer("/spec/sizeGiB")
                        .or_else(|| v.pointer("/status/sizeGiB")),
                )
            }));
            cols.push(col("PHASE", |v, _| text_at(v, "/status/phase")));
            cols.push(col("ATTACHED-TO", attached_cell));
            cols.push(col("AGE", age_cell));
            if wide {
                cols.push(col("NODE", |v, _| text_at(v, "/status/nodeName")));
                cols.push(col("ZONE", |v, _| text_at(v, "/spec/availabilityZone")));
                cols.push(col("EC2-ID", |v, _| ec2_id(v, "Volume")));
            }
        }
        "snapshots" => {
            cols.push(col("VOLUME", |v, _| text_at(v, "/spec/volume")));
            cols.push(col("PHASE", |v, _| text_at(v, "/status/phase")));
            cols.push(col("SIZE", |v, _| size_gib(v.pointer("/status/sizeGiB"))));
            cols.push(col("AGE", age_cell));
        }
        "images" => {
            cols.push(col("PHASE", |v, _| text_at(v, "/status/phase")));
            cols.push(col("FORMAT", |v, _| text_at(v, "/spec/format")));
            cols.push(col("SIZE", |v, _| {
                v.pointer("/status/sizeBytes")
                    .and_then(Value::as_u64)
                    .map_or(NONE.to_string(), human_bytes)
            }));
            cols.push(col("AGE", age_cell));
            if wide {
                cols.push(col("VISIBILITY", |v, _| text_at(v, "/spec/visibility")));
                cols.push(col("EC2-ID", |v, _| ec2_id(v, "Image")));
            }
        }
        "keypairs" => {
            cols.push(col("FINGERPRINT", |v, _| text_at(v, "/status/fingerprint")));
            cols.push(col("AGE", age_cell));
        }
        "securitygroups" => {
            cols.push(col("INGRESS", |v, _| count_cell(v, "/spec/ingress")));
            cols.push(col("EGRESS", |v, _| count_cell(v, "/spec/egress")));
            cols.push(col("AGE", age_cell));
            if wide {
                cols.push(col("DESCRIPTION", |v, _| text_at(v, "/spec/description")));
            }
        }
        "addresses" => {
            cols.push(col("NETWORK", |v, _| text_at(v, "/spec/network")));
            cols.push(col("IP", |v, _| text_at(v, "/status/ip")));
            cols.push(col("INSTANCE", |v, _| text_at(v, "/spec/instance")));
            cols.push(col("AGE", age_cell));
        }
        "nodes" => {
            cols.push(col("READY", ready_cell));
            cols.push(col("VCPUS", |v, _| text_at(v, "/status/capacity/vcpus")));
            cols.push(col("MEMORY", |v, _| {
                v.pointer("/status/capacity/memoryMiB")
                    .and_then(Value::as_u64)
                    .map_or(NONE.to_string(), |m| format!("{m}Mi"))
            }));
            cols.push(col("AGE", age_cell));
            if wide {
                cols.push(col("ZONE", |v, _| text_at(v, "/spec/zone")));
                cols.push(col("ADDRESS", |v, _| text_at(v, "/status/address")));
                cols.push(col("HYPERVISOR", |v, _| {
                    text_at(v, "/status/hypervisor/type")
                }));
            }
        }
        "instancetypes" => {
            cols.push(col("VCPUS", |v, _| text_at(v, "/spec/vcpus")));
            cols.push(col("MEMORY", |v, _| {
                v.pointer("/spec/memoryMiB")
                    .and_then(Value::as_u64)
                    .map_or(NONE.to_string(), |m| format!("{m}Mi"))
            }));
            cols.push(col("DISK", |v, _| size_gib(v.pointer("/spec/rootDiskGiB"))));
        }
        "projects" => {
            cols.push(col("DESCRIPTION", |v, _| text_at(v, "/spec/description")));
            cols.push(col("AGE", age_cell));
        }
        "events" => {
            cols.clear();
            cols.push(col("LAST SEEN", |v, now| {
                if time_at(v, "/spec/lastTimestamp").is_some() {
                    age_at(v, "/spec/lastTimestamp", now)
                } else {
                    age_at(v, "/metadata/creationTimestamp", now)
                }
            }));
            cols.push(col("TYPE", |v, _| text_at(v, "/spec/type")));
            cols.push(col("REASON", |v, _| text_at(v, "/spec/reason")));
            cols.push(col("OBJECT", |v, _| {
                match (
                    str_at(v, "/spec/involvedObject/kind"),
                    str_at(v, "/spec/involvedObject/name"),
                ) {
                    (Some(k), Some(n)) => format!("{}/{n}", k.to_ascii_lowercase()),
                    _ => NONE.to_string(),
                }
            }));
            cols.push(col("MESSAGE", |v, _| text_at(v, "/spec/message")));
        }
        _ => cols.push(col("AGE", age_cell)),
    }
    cols
}

/// Rows of text aligned in columns, three spaces apart, like kubectl.
pub fn render_table(headers: &[String], rows: &[Vec<String>]) -> String {
    let ncols = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(ncols) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(headers).chain(rows.iter().map(Vec::as_slice)) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(ncols) {
            if i + 1 == ncols {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 3;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// JSON as YAML text (always ends with a newline).
pub fn to_yaml(v: &Value) -> String {
    let mut s = yaml_serde::to_string(v).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// Pretty JSON text with a trailing newline.
pub fn to_json(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// Indents every non-empty line of `text` by `n` spaces.
pub fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_like_kubectl() {
        let d = chrono::Duration::seconds;
        assert_eq!(human_duration(d(5)), "5s");
        assert_eq!(human_duration(d(119)), "119s");
        assert_eq!(human_duration(d(180)), "3m");
        assert_eq!(human_duration(d(200)), "3m20s");
        assert_eq!(human_duration(d(45 * 60)), "45m");
        assert_eq!(human_duration(d(2 * 3600)), "120m");
        assert_eq!(human_duration(d(5 * 3600 + 600)), "5h10m");
        assert_eq!(human_duration(d(20 * 3600)), "20h");
        assert_eq!(human_duration(d(4 * 86400)), "4d");
        assert_eq!(human_duration(d(3 * 86400 + 7200)), "3d2h");
        assert_eq!(human_duration(d(30 * 86400)), "30d");
        assert_eq!(human_duration(d(-1)), "0s");
        assert_eq!(human_duration(d(-10)), "<invalid>");
    }

    #[test]
    fn bytes() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(2048), "2Ki");
        assert_eq!(human_bytes(1536 * 1024 * 1024), "1.5Gi");
        assert_eq!(human_bytes(20 * 1024 * 1024), "20Mi");
    }

    #[test]
    fn tables_align() {
        let t = render_table(
            &["NAME".into(), "PHASE".into(), "AGE".into()],
            &[
                vec!["web-1".into(), "Running".into(), "5s".into()],
                vec!["a".into(), "<none>".into(), "3m".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME    PHASE     AGE\nweb-1   Running   5s\na       <none>    3m\n"
        );
    }

    #[test]
    fn instance_columns() {
        let info = corral_api_types::kind_info("instance").unwrap();
        let v = json!({
            "metadata": {"name": "web", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"instanceType": "m1.tiny", "image": "tiny"},
            "status": {"phase": "Running", "addresses": [{"network": "lan", "ip": "10.0.0.5"}]}
        });
        let now = DateTime::parse_from_rfc3339("2024-01-01T00:00:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let cols = columns(info, true);
        let headers: Vec<&str> = cols.iter().map(|c| c.header).collect();
        assert_eq!(
            headers,
            ["NAME", "PHASE", "NODE", "ADDRESS", "AGE", "TYPE", "IMAGE", "ZONE", "EC2-ID"]
        );
        let cells: Vec<String> = cols.iter().map(|c| (c.cell)(&v, now)).collect();
        assert_eq!(
            cells,
            ["web", "Running", "<none>", "10.0.0.5", "5s", "m1.tiny", "tiny", "<none>", "<none>"]
        );
    }
}
