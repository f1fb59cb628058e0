//! Writing a plan's ruleset into the host's iptables: whole
//! (`apply_firewall`, idempotent, also removing what no plan has) or as
//! the difference from what this agent wrote last (`update_firewall`, one
//! `iptables-restore` per changed table). Runs iptables as a child
//! process; blocking.

use std::fmt::Write as _;

use super::command::{self, CommandError, Failure};
use super::{NetPlan, TableRules, CHAIN_PREFIX};

/// Why the host's firewall could not be set.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("running {cmd}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
}

impl From<CommandError> for FirewallError {
    fn from(e: CommandError) -> FirewallError {
        match e.failure {
            Failure::Spawn(source) => FirewallError::Spawn { cmd: e.cmd, source },
            Failure::Exit(stderr) => FirewallError::Failed { cmd: e.cmd, stderr },
        }
    }
}

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, FirewallError> {
    Ok(command::run(None, cmd, args, stdin)?)
}

/// Corral's chains that exist in `table` now.
fn existing_chains(table: &str) -> Result<Vec<String>, FirewallError> {
    let dump = run("iptables-save", &["-t", table], None)?;
    Ok(dump
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.starts_with(CHAIN_PREFIX))
        .map(str::to_string)
        .collect())
}

/// The restore script that makes `table` hold exactly `rules` (`None`: no
/// Corral chains at all). Existing chains not wanted any more are flushed
/// and deleted; jumps from built-in chains to deleted chains go first.
pub fn restore_script(table: &str, rules: Option<&TableRules>, existing: &[String]) -> String {
    let mut s = format!("*{table}\n");
    write_chains(&mut s, rules, existing);
    s.push_str("COMMIT\n");
    s
}

/// The body of a restore: `rules`' chains declared (flushed) and filled,
/// then every chain of `existing` not among them flushed and deleted.
fn write_chains(s: &mut String, rules: Option<&TableRules>, existing: &[String]) {
    let wanted: Vec<&str> = rules
        .map(|r| r.chains.iter().map(|(c, _)| c.as_str()).collect())
        .unwrap_or_default();
    if let Some(r) = rules {
        for (c, _) in &r.chains {
            let _ = writeln!(s, ":{c} - [0:0]");
        }
        for (c, lines) in &r.chains {
            for l in lines {
                let _ = writeln!(s, "-A {c} {l}");
            }
        }
    }
    // Flush every unwanted chain before deleting any: they may jump to
    // each other.
    let stale: Vec<&String> = existing
        .iter()
        .filter(|c| !wanted.contains(&c.as_str()))
        .collect();
    for c in &stale {
        let _ = writeln!(s, "-F {c}");
    }
    for c in &stale {
        let _ = writeln!(s, "-X {c}");
    }
}

/// Jump rules from built-in chains, first in line.
fn ensure_hooks(table: &str, hooks: &[(&'static str, String)]) -> Result<(), FirewallError> {
    for (builtin, chain) in hooks {
        let listing = run("iptables", &["-w", "-t", table, "-S", builtin], None)?;
        let jump = format!("-A {builtin} -j {chain}");
        let rules: Vec<&str> = listing.lines().filter(|l| l.starts_with("-A ")).collect();
        if rules.first() == Some(&jump.as_str())
            && rules.iter().filter(|l| **l == jump).count() == 1
        {
            continue;
        }
        // Not first (someone inserted above us) or duplicated: redo.
        while run(
            "iptables",
            &["-w", "-t", table, "-D", builtin, "-j", chain],
            None,
        )
        .is_ok()
        {}
        run(
            "iptables",
            &["-w", "-t", table, "-I", builtin, "1", "-j", chain],
            None,
        )?;
    }
    Ok(())
}

fn remove_hooks(table: &str) -> Result<(), FirewallError> {
    let listing = run("iptables", &["-w", "-t", table, "-S"], None)?;
    for l in listing.lines() {
        let Some(rest) = l.strip_prefix("-A ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(builtin), Some("-j"), Some(target), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !builtin.starts_with(CHAIN_PREFIX) && target.starts_with(CHAIN_PREFIX) {
            run(
                "iptables",
                &["-w", "-t", table, "-D", builtin, "-j", target],
                None,
            )?;
        }
    }
    Ok(())
}

/// Bridged guest-to-guest traffic passes iptables only with br_netfilter
/// on (`bridge-nf-call-iptables`); without it security groups between
/// guests of one network would not hold, so this is an error.
fn ensure_bridge_netfilter() -> Result<(), FirewallError> {
    let knob = std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
    if !knob.exists() {
        // A module on most distributions; built in on some kernels.
        let _ = run("modprobe", &["br_netfilter"], None);
    }
    let ok = std::fs::read_to_string(knob).is_ok_and(|v| v.trim() == "1")
        || std::fs::write(knob, "1").is_ok();
    if !ok {
        return Err(FirewallError::Failed {
            cmd: "enabling br_netfilter".into(),
            stderr: format!(
                "{} is missing or read-only: security groups cannot filter bridged traffic",
                knob.display()
            ),
        });
    }
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
    Ok(())
}

/// Makes the host's iptables hold exactly `plan`'s rules. Idempotent; an
/// empty plan removes every Corral chain and jump.
pub fn apply_firewall(plan: &NetPlan) -> Result<(), FirewallError> {
    let rules = plan.rules();
    if !rules.is_empty() {
        ensure_bridge_netfilter()?;
    }
    for table in ["mangle", "filter", "nat"] {
        let want = rules.iter().find(|r| r.table == table);
        let existing = existing_chains(table)?;
        if want.is_none() {
            if existing.is_empty() {
                continue;
            }
            remove_hooks(table)?;
        }
        let script = restore_script(table, want, &existing);
        run("iptables-restore", &["-w", "--noflush"], Some(&script))?;
        if let Some(r) = want {
            ensure_hooks(table, &r.hooks)?;
        }
    }
    Ok(())
}

/// Moves the host's iptables from `applied` (what this agent made it hold
/// last, and found intact when it last reasserted it) to `plan`, with one
/// `iptables-restore` per table whose Corral rules changed: the chains,
/// and the jumps from built-in chains deleted or inserted in the same
/// transaction. Nothing is read back: the periodic full [`apply_firewall`]
/// repairs what someone else changed meanwhile. If a restore fails (a
/// chain or jump removed by hand, say), it does the full apply instead.
/// Returns whether it had to.
pub fn update_firewall(applied: &NetPlan, plan: &NetPlan) -> Result<bool, FirewallError> {
    let before = applied.rules();
    let after = plan.rules();
    if after.iter().any(|r| !r.chains.is_empty()) && !before.iter().any(|r| !r.chains.is_empty()) {
        ensure_bridge_netfilter()?;
    }
    for table in ["mangle", "filter", "nat"] {
        let old = before.iter().find(|r| r.table == table);
        let new = after.iter().find(|r| r.table == table);
        let Some(script) = update_script(table, old, new) else {
            continue;
        };
        if let Err(e) = run("iptables-restore", &["-w", "--noflush"], Some(&script)) {
            tracing::warn!(table, error = %e, "incremental firewall update failed; reapplying in full");
            apply_firewall(plan)?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// The restore script that takes `table` from `old` to `new` (both as
/// this agent wrote them), or `None` if they are the same.
pub fn update_script(
    table: &str,
    old: Option<&TableRules>,
    new: Option<&TableRules>,
) -> Option<String> {
    if old == new {
        return None;
    }
    let no_hooks = Vec::new();
    let old_hooks = old.map_or(&no_hooks, |r| &r.hooks);
    let new_hooks = new.map_or(&no_hooks, |r| &r.hooks);
    let existing: Vec<String> = old
        .map(|r| r.chains.iter().map(|(c, _)| c.clone()).collect())
        .unwrap_or_default();
    let mut s = format!("*{table}\n");
    // Jumps that go: before their chains may be deleted.
    for (builtin, chain) in old_hooks.iter().filter(|h| !new_hooks.contains(h)) {
        let _ = writeln!(s, "-D {builtin} -j {chain}");
    }
    write_chains(&mut s, new, &existing);
    // New jumps, first in line, once their chains exist.
    for (builtin, chain) in new_hooks.iter().filter(|h| !old_hooks.contains(h)) {
        let _ = writeln!(s, "-I {builtin} 1 -j {chain}");
    }
    s.push_str("COMMIT\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::net;
    use super::*;
    use corral_api_types::NetworkMode;

    #[test]
    fn restore_removes_what_is_no_longer_planned() {
        let existing = vec!["CORRAL-FORWARD".to_string(), "CORRAL-I-old".to_string()];
        let s = restore_script("mangle", None, &existing);
        assert_eq!(
            s,
            "*mangle\n-F CORRAL-FORWARD\n-F CORRAL-I-old\n-X CORRAL-FORWARD\n-X CORRAL-I-old\nCOMMIT\n"
        );
        let plan = NetPlan {
            networks: vec![net(NetworkMode::Nat)],
            ports: vec![],
            metadata_port: 8775,
        };
        let rules = plan.rules();
        let s = restore_script(
            "mangle",
            rules.iter().find(|r| r.table == "mangle"),
            &existing,
        );
        assert!(s.contains(":CORRAL-FORWARD - [0:0]\n"), "{s}");
        assert!(s.contains("-X CORRAL-I-old\n"), "{s}");
        assert!(!s.contains("-X CORRAL-FORWARD"), "{s}");
    }
}
