//! The ebtables guard that keeps what must stay on its node off the
//! tunnels ([`guard_tunnel`]): the rules of [`GUARD_CHAIN`] and its jumps,
//! read from `ebtables -L` and rewritten whole with `ebtables-restore`.

use std::collections::{BTreeMap, BTreeSet};

use super::{check_ifname, Overlay, Shell, VxlanError};

/// The ebtables chain (table `filter`) that [`guard_tunnel`] owns, jumped
/// to from FORWARD and OUTPUT.
pub const GUARD_CHAIN: &str = "CORRAL-VXLAN";

/// The built-in chains that jump to [`GUARD_CHAIN`]: frames the bridge
/// forwards, and frames the node itself sends (its gateway's ARP).
const GUARD_HOOKS: [&str; 2] = ["FORWARD", "OUTPUT"];

/// The `filter` table as `ebtables -L` lists it: chain -> its rules.
fn ebtables_chains(listing: &str) -> BTreeMap<String, Vec<String>> {
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in listing.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Bridge chain:") {
            let name = rest.split(',').next().unwrap_or("").trim().to_string();
            chains.entry(name.clone()).or_default();
            current = Some(name);
        } else if line.is_empty() || line.starts_with("Bridge table:") {
            continue;
        } else if let Some(c) = &current {
            chains.entry(c.clone()).or_default().push(line.to_string());
        }
    }
    chains
}

/// The `ebtables-restore --noflush` script that makes [`GUARD_CHAIN`]
/// hold exactly the rules for `overlays` and be jumped to once, first, from
/// each of [`GUARD_HOOKS`]; with no overlays, that removes the chain and
/// its jumps. `None`: nothing to do.
fn guard_script(chains: &BTreeMap<String, Vec<String>>, overlays: &[Overlay]) -> Option<String> {
    use std::fmt::Write as _;
    let jump = format!("-j {GUARD_CHAIN}");
    let jumps = |hook: &str| -> (usize, bool) {
        let rules = chains.get(hook).map(Vec::as_slice).unwrap_or_default();
        let n = rules.iter().filter(|r| **r == jump).count();
        (n, rules.first() == Some(&jump))
    };
    let mut s = String::from("*filter\n");
    if overlays.is_empty() {
        if !chains.contains_key(GUARD_CHAIN) {
            return None;
        }
        for hook in GUARD_HOOKS {
            for _ in 0..jumps(hook).0 {
                let _ = writeln!(s, "-D {hook} {jump}");
            }
        }
        let _ = writeln!(s, "-F {GUARD_CHAIN}\n-X {GUARD_CHAIN}");
    } else {
        // Declaring the chain creates or flushes it; RETURN, not the
        // ACCEPT ebtables gives user chains by default, so frames this
        // chain does not drop go on through the rest of the hook.
        let _ = writeln!(s, ":{GUARD_CHAIN} RETURN");
        let mut seen = BTreeSet::new();
        for o in overlays {
            if !seen.insert((o.device.as_str(), o.gateway)) {
                continue;
            }
            let (dev, gw) = (&o.device, o.gateway);
            for port in [67, 68] {
                let _ = writeln!(
                    s,
                    "-A {GUARD_CHAIN} -o {dev} -p IPv4 --ip-proto udp --ip-dport {port} -j DROP"
                );
            }
            for side in ["dst", "src"] {
                let _ = writeln!(
                    s,
                    "-A {GUARD_CHAIN} -o {dev} -p ARP --arp-ip-{side} {gw} -j DROP"
                );
            }
        }
        for hook in GUARD_HOOKS {
            let (n, first) = jumps(hook);
            if n == 1 && first {
                continue;
            }
            for _ in 0..n {
                let _ = writeln!(s, "-D {hook} {jump}");
            }
            let _ = writeln!(s, "-I {hook} 1 {jump}");
        }
    }
    s.push_str("COMMIT\n");
    Some(s)
}

/// Keeps what must stay on its node off the tunnels: for each overlay,
/// frames leaving through its VXLAN device that are DHCP (IPv4 UDP to
/// port 67 or 68) or ARP to or from its gateway are dropped, as every
/// node holds the gateway (same IP and MAC) and serves its own guests'
/// DHCP. The rules live in [`GUARD_CHAIN`] of ebtables' `filter` table,
/// jumped to first from FORWARD and OUTPUT, and are rewritten whole in one
/// `ebtables-restore` transaction each call (so overlays no longer given
/// leave no rules; none at all removes the chain and its jumps).
pub fn guard_tunnel(sh: &Shell, overlays: &[Overlay]) -> Result<(), VxlanError> {
    for o in overlays {
        check_ifname(&o.device)?;
    }
    let listing = sh.run("ebtables", &["-t", "filter", "-L"], None)?;
    let Some(script) = guard_script(&ebtables_chains(&listing), overlays) else {
        return Ok(());
    };
    tracing::debug!(overlays = overlays.len(), "writing the VXLAN guard");
    sh.run("ebtables-restore", &["--noflush"], Some(&script))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::overlay;
    use super::*;

    #[test]
    fn guard_chain_is_corrals() {
        assert!(GUARD_CHAIN.starts_with(crate::net::CHAIN_PREFIX));
    }

    const LISTING: &str = "Bridge table: filter

Bridge chain: INPUT, entries: 0, policy: ACCEPT

Bridge chain: FORWARD, entries: 3, policy: ACCEPT
-j ACCEPT
-j CORRAL-VXLAN
-j CORRAL-VXLAN

Bridge chain: OUTPUT, entries: 1, policy: ACCEPT
-j CORRAL-VXLAN

Bridge chain: CORRAL-VXLAN, entries: 1, policy: RETURN
-p ARP -o cvxold --arp-ip-src 10.9.0.1 -j DROP
";

    #[test]
    fn guard_is_rewritten_whole_with_one_jump_first() {
        let chains = ebtables_chains(LISTING);
        assert_eq!(chains["FORWARD"].len(), 3);
        assert_eq!(chains[GUARD_CHAIN].len(), 1);
        let o = overlay("cvx1", [10, 77, 0, 1]);
        let script = guard_script(&chains, &[o.clone(), o]).unwrap();
        assert_eq!(
            script,
            "*filter
:CORRAL-VXLAN RETURN
-A CORRAL-VXLAN -o cvx1 -p IPv4 --ip-proto udp --ip-dport 67 -j DROP
-A CORRAL-VXLAN -o cvx1 -p IPv4 --ip-proto udp --ip-dport 68 -j DROP
-A CORRAL-VXLAN -o cvx1 -p ARP --arp-ip-dst 10.77.0.1 -j DROP
-A CORRAL-VXLAN -o cvx1 -p ARP --arp-ip-src 10.77.0.1 -j DROP
-D FORWARD -j CORRAL-VXLAN
-D FORWARD -j CORRAL-VXLAN
-I FORWARD 1 -j CORRAL-VXLAN
COMMIT
"
        );
        let script = guard_script(&chains, &[]).unwrap();
        assert_eq!(
            script,
            "*filter
-D FORWARD -j CORRAL-VXLAN
-D FORWARD -j CORRAL-VXLAN
-D OUTPUT -j CORRAL-VXLAN
-F CORRAL-VXLAN
-X CORRAL-VXLAN
COMMIT
"
        );
        let bare = ebtables_chains(
            "Bridge table: filter\n\nBridge chain: INPUT, entries: 0, policy: ACCEPT\n",
        );
        assert_eq!(guard_script(&bare, &[]), None);
        let script = guard_script(&bare, &[overlay("cvx1", [10, 77, 0, 1])]).unwrap();
        assert!(
            script.ends_with("-I FORWARD 1 -j CORRAL-VXLAN\n-I OUTPUT 1 -j CORRAL-VXLAN\nCOMMIT\n"),
            "{script}"
        );
    }
}
