//! A VXLAN device's forwarding database: what it should hold ([`Fdb`]),
//! what `bridge -j fdb show` says it holds, the changes between the two
//! and [`sync_fdb`], which makes them ([`FdbChange`] counts them).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;

use super::{check_ifname, guest_mac, Shell, VxlanError, FLOOD_MAC};

/// What a VXLAN device's forwarding database should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fdb {
    /// Peer nodes' underlay addresses: each gets broadcast and unknown
    /// frames (ARP, DHCP...).
    pub flood: BTreeSet<Ipv4Addr>,
    /// Remote guests: MAC (`52:54:00:..`, lowercase) -> their node's
    /// underlay address.
    pub macs: BTreeMap<String, Ipv4Addr>,
}

/// What [`sync_fdb`] changed. A MAC that moved to another node counts
/// once in each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FdbChange {
    pub added: usize,
    pub removed: usize,
}

/// An FDB entry as `bridge -j fdb show` prints it.
#[derive(Debug, Deserialize)]
struct FdbEntry {
    mac: String,
    #[serde(default)]
    dst: Option<String>,
}

/// One change to a VXLAN device's forwarding database.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FdbOp {
    /// Another flood destination (`bridge fdb append` of the zero MAC).
    Flood(Ipv4Addr),
    /// A guest MAC's node, set or moved (`bridge fdb replace`).
    Replace(String, Ipv4Addr),
    /// An entry that should not be there (`bridge fdb del`).
    Del(String, IpAddr),
}

/// The programmed entries (those with a `dst`) of a device's FDB, from
/// `bridge -j fdb show`: MAC (lowercase) -> destinations.
fn programmed(entries: Vec<FdbEntry>) -> Result<BTreeMap<String, Vec<IpAddr>>, String> {
    let mut have: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for e in entries {
        let Some(dst) = e.dst else { continue };
        let ip: IpAddr = dst
            .parse()
            .map_err(|_| format!("an FDB destination that is no address: {dst:?}"))?;
        have.entry(e.mac.to_ascii_lowercase()).or_default().push(ip);
    }
    Ok(have)
}

/// The changes that make `have` into `flood` + `macs`, additions first,
/// and what they count as.
fn fdb_plan(
    mut have: BTreeMap<String, Vec<IpAddr>>,
    flood: &BTreeSet<Ipv4Addr>,
    macs: &BTreeMap<String, Ipv4Addr>,
) -> (Vec<FdbOp>, FdbChange) {
    let mut ops = Vec::new();
    let mut change = FdbChange::default();
    let have_flood = have.remove(FLOOD_MAC).unwrap_or_default();
    for ip in flood {
        if !have_flood.contains(&IpAddr::V4(*ip)) {
            ops.push(FdbOp::Flood(*ip));
            change.added += 1;
        }
    }
    for ip in have_flood {
        if !matches!(ip, IpAddr::V4(v4) if flood.contains(&v4)) {
            ops.push(FdbOp::Del(FLOOD_MAC.to_string(), ip));
            change.removed += 1;
        }
    }
    for (mac, ip) in macs {
        let dsts = have.remove(mac).unwrap_or_default();
        let want = IpAddr::V4(*ip);
        let present = dsts.contains(&want);
        let stale: Vec<IpAddr> = dsts.iter().copied().filter(|d| *d != want).collect();
        if !present && dsts.len() == 1 {
            // Moved to another node: replacing the one destination
            // changes it in place, with no moment of flooding.
            ops.push(FdbOp::Replace(mac.clone(), *ip));
            change.added += 1;
            change.removed += 1;
            continue;
        }
        if !present {
            ops.push(FdbOp::Replace(mac.clone(), *ip));
            change.added += 1;
        }
        for d in stale {
            ops.push(FdbOp::Del(mac.clone(), d));
            change.removed += 1;
        }
    }
    for (mac, dsts) in have {
        for d in dsts {
            ops.push(FdbOp::Del(mac.clone(), d));
            change.removed += 1;
        }
    }
    (ops, change)
}

/// Makes the programmed entries (those with a destination) of `device`'s
/// forwarding database exactly `want`: a flood entry per peer node and an
/// entry per remote guest MAC; what else has a destination is deleted.
/// Every MAC is checked before anything runs. Idempotent: a second call
/// with the same `want` changes nothing and answers 0/0.
pub fn sync_fdb(sh: &Shell, device: &str, want: &Fdb) -> Result<FdbChange, VxlanError> {
    check_ifname(device)?;
    let mut macs = BTreeMap::new();
    for (mac, ip) in &want.macs {
        let mac = guest_mac(mac)?;
        if macs.insert(mac.clone(), *ip).is_some_and(|old| old != *ip) {
            return Err(VxlanError::BadMac {
                mac,
                why: "given twice, for different nodes",
            });
        }
    }
    let entries: Vec<FdbEntry> = sh.json("bridge", &["-j", "fdb", "show", "dev", device])?;
    let have = programmed(entries).map_err(|what| VxlanError::Unexpected {
        cmd: format!("bridge -j fdb show dev {device}"),
        what,
    })?;
    let (ops, change) = fdb_plan(have, &want.flood, &macs);
    for op in &ops {
        let (verb, mac, dst) = match op {
            FdbOp::Flood(ip) => ("append", FLOOD_MAC, ip.to_string()),
            FdbOp::Replace(mac, ip) => ("replace", mac.as_str(), ip.to_string()),
            FdbOp::Del(mac, ip) => ("del", mac.as_str(), ip.to_string()),
        };
        let mut args = vec!["fdb", verb, mac, "dev", device, "dst", &dst, "self"];
        if verb != "del" {
            args.push("permanent");
        }
        tracing::debug!(device, mac, dst, verb, "VXLAN FDB entry");
        sh.run("bridge", &args, None)?;
    }
    if change != FdbChange::default() {
        tracing::info!(
            device,
            added = change.added,
            removed = change.removed,
            "VXLAN FDB updated"
        );
    }
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::super::parse_json;
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn macs_are_checked_before_any_command() {
        for (mac, why) in [
            ("52:54:00:zz:00:01", "not six hex pairs"),
            ("52:54:00:00:01", "not six hex pairs"),
            ("52:54:00:00:00:001", "not six hex pairs"),
            ("52:54:00:00:00:01 dev lo", "not six hex pairs"),
            ("", "not six hex pairs"),
            ("00:00:00:00:00:00", "all zero"),
            ("01:00:5e:00:00:01", "multicast"),
            ("ff:ff:ff:ff:ff:ff", "multicast"),
        ] {
            let want = Fdb {
                flood: BTreeSet::new(),
                macs: BTreeMap::from([(mac.to_string(), Ipv4Addr::new(192, 0, 2, 2))]),
            };
            // A namespace that cannot exist: any command run would fail
            // differently.
            let err = sync_fdb(&Shell::in_netns("/nonexistent"), "cvx0", &want).unwrap_err();
            match &err {
                VxlanError::BadMac { mac: m, why: w } => {
                    assert_eq!((m.as_str(), *w), (mac, why));
                }
                other => panic!("{mac:?}: {other}"),
            }
            assert!(err.to_string().contains(&format!("{mac:?}")), "{err}");
        }
        assert_eq!(guest_mac("52:54:00:AB:cd:EF").unwrap(), "52:54:00:ab:cd:ef");
        let twice = Fdb {
            flood: BTreeSet::new(),
            macs: BTreeMap::from([
                ("52:54:00:AB:00:01".to_string(), Ipv4Addr::new(192, 0, 2, 2)),
                ("52:54:00:ab:00:01".to_string(), Ipv4Addr::new(192, 0, 2, 3)),
            ]),
        };
        assert!(matches!(
            sync_fdb(&Shell::in_netns("/nonexistent"), "cvx0", &twice),
            Err(VxlanError::BadMac { .. })
        ));
    }

    #[test]
    fn fdb_output_keeps_only_programmed_entries() {
        let out = r#"[{"mac":"02:1c:c2:54:bd:6c","flags":[],"master":"br0","state":"permanent"},
            {"mac":"52:54:00:AA:bb:cc","dst":"192.168.251.3","flags":["self"],"state":"permanent"},
            {"mac":"00:00:00:00:00:00","dst":"192.168.251.2","flags":["self"],"state":"permanent"},
            {"mac":"00:00:00:00:00:00","dst":"2001:db8::1","flags":["self"],"state":"permanent"}]"#;
        let have = programmed(parse_json(out).unwrap()).unwrap();
        assert_eq!(
            have,
            BTreeMap::from([
                (
                    FLOOD_MAC.to_string(),
                    vec![ip("192.168.251.2"), ip("2001:db8::1")]
                ),
                ("52:54:00:aa:bb:cc".to_string(), vec![ip("192.168.251.3")]),
            ])
        );
        assert!(parse_json::<FdbEntry>("").unwrap().is_empty());
        assert!(programmed(
            parse_json(r#"[{"mac":"52:54:00:00:00:01","dst":"nowhere"}]"#).unwrap()
        )
        .is_err());
    }

    #[test]
    fn fdb_plan_adds_moves_and_removes() {
        let a = Ipv4Addr::new(192, 0, 2, 1);
        let b = Ipv4Addr::new(192, 0, 2, 2);
        let c = Ipv4Addr::new(192, 0, 2, 3);
        let m1 = "52:54:00:00:00:01".to_string();
        let m2 = "52:54:00:00:00:02".to_string();
        let m3 = "52:54:00:00:00:03".to_string();
        let have = BTreeMap::from([
            (FLOOD_MAC.to_string(), vec![IpAddr::V4(a), IpAddr::V4(c)]),
            (m1.clone(), vec![IpAddr::V4(a)]),
            (m2.clone(), vec![IpAddr::V4(a)]),
            (m3.clone(), vec![IpAddr::V4(c)]),
        ]);
        let flood = BTreeSet::from([a, b]);
        let macs = BTreeMap::from([(m1.clone(), a), (m2.clone(), b)]);
        let (ops, change) = fdb_plan(have, &flood, &macs);
        assert_eq!(
            ops,
            vec![
                FdbOp::Flood(b),
                FdbOp::Del(FLOOD_MAC.to_string(), IpAddr::V4(c)),
                FdbOp::Replace(m2.clone(), b),
                FdbOp::Del(m3.clone(), IpAddr::V4(c)),
            ]
        );
        assert_eq!(
            change,
            FdbChange {
                added: 2,
                removed: 3
            }
        );
        // Already so: nothing.
        let have = BTreeMap::from([
            (FLOOD_MAC.to_string(), vec![IpAddr::V4(b), IpAddr::V4(a)]),
            (m1.clone(), vec![IpAddr::V4(a)]),
            (m2.clone(), vec![IpAddr::V4(b)]),
        ]);
        let (ops, change) = fdb_plan(have, &flood, &macs);
        assert!(ops.is_empty(), "{ops:?}");
        assert_eq!(change, FdbChange::default());
        // Two destinations for one MAC (appended by hand): the wrong one
        // goes, the right one stays.
        let have = BTreeMap::from([(m1.clone(), vec![IpAddr::V4(a), IpAddr::V4(c)])]);
        let (ops, _) = fdb_plan(have, &BTreeSet::new(), &macs);
        assert_eq!(
            ops,
            vec![
                FdbOp::Del(m1.clone(), IpAddr::V4(c)),
                FdbOp::Replace(m2.clone(), b),
            ]
        );
    }
}
