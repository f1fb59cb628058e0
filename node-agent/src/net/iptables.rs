//! Writing a plan's rulesets into the host's iptables (IPv4) and
//! ip6tables (IPv6), one lifecycle for both: whole (`apply_firewall`,
//! idempotent, also removing what no plan has) or as the difference from
//! what this agent wrote last (`update_firewall`, one `iptables-restore`
//! or `ip6tables-restore` per changed table). A host that cannot filter
//! IPv6 is an error once there is anything to filter: bridged guests
//! would otherwise reach each other over IPv6 past their groups. Runs the
//! tools as child processes, on the host or in a network namespace
//! ([`Shell`]); blocking.

use std::fmt::Write as _;
use std::path::Path;

use super::command::{self, CommandError, Failure, Shell};
use super::{Family, NetPlan, TableRules, CHAIN_PREFIX};

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
    /// ip6tables is missing or the kernel will not run it: the IPv4 rules
    /// may be in, but guests' IPv6 would pass their groups unfiltered.
    #[error(
        "this host cannot filter IPv6 (ip6tables): security groups cannot hold guests' IPv6 traffic"
    )]
    NoIpv6(#[source] Box<FirewallError>),
}

impl From<CommandError> for FirewallError {
    fn from(e: CommandError) -> FirewallError {
        match e.failure {
            Failure::Spawn(source) => FirewallError::Spawn { cmd: e.cmd, source },
            Failure::Exit(stderr) => FirewallError::Failed { cmd: e.cmd, stderr },
        }
    }
}

fn run(sh: &Shell, cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, FirewallError> {
    Ok(command::run(sh.netns(), cmd, args, stdin)?)
}

// The tools and tables of each family.
impl Family {
    fn tool(self) -> &'static str {
        match self {
            Family::Ipv4 => "iptables",
            Family::Ipv6 => "ip6tables",
        }
    }

    fn save(self) -> &'static str {
        match self {
            Family::Ipv4 => "iptables-save",
            Family::Ipv6 => "ip6tables-save",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Family::Ipv4 => "iptables-restore",
            Family::Ipv6 => "ip6tables-restore",
        }
    }

    /// The tables Corral writes (IPv6 translates nothing: no `nat`).
    fn tables(self) -> &'static [&'static str] {
        match self {
            Family::Ipv4 => &["mangle", "filter", "nat"],
            Family::Ipv6 => &["mangle", "filter"],
        }
    }

    /// The br_netfilter switch that sends bridged frames of this family
    /// through its tables.
    fn bridge_knob(self) -> &'static str {
        match self {
            Family::Ipv4 => "bridge-nf-call-iptables",
            Family::Ipv6 => "bridge-nf-call-ip6tables",
        }
    }
}

/// Corral's chains that exist in `table` now.
fn existing_chains(sh: &Shell, family: Family, table: &str) -> Result<Vec<String>, FirewallError> {
    let dump = run(sh, family.save(), &["-t", table], None)?;
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
fn ensure_hooks(sh: &Shell, r: &TableRules) -> Result<(), FirewallError> {
    let (tool, table) = (r.family.tool(), r.table);
    for (builtin, chain) in &r.hooks {
        let listing = run(sh, tool, &["-w", "-t", table, "-S", builtin], None)?;
        let jump = format!("-A {builtin} -j {chain}");
        let rules: Vec<&str> = listing.lines().filter(|l| l.starts_with("-A ")).collect();
        if rules.first() == Some(&jump.as_str())
            && rules.iter().filter(|l| **l == jump).count() == 1
        {
            continue;
        }
        // Not first (someone inserted above us) or duplicated: redo.
        while run(
            sh,
            tool,
            &["-w", "-t", table, "-D", builtin, "-j", chain],
            None,
        )
        .is_ok()
        {}
        run(
            sh,
            tool,
            &["-w", "-t", table, "-I", builtin, "1", "-j", chain],
            None,
        )?;
    }
    Ok(())
}

fn remove_hooks(sh: &Shell, family: Family, table: &str) -> Result<(), FirewallError> {
    let tool = family.tool();
    let listing = run(sh, tool, &["-w", "-t", table, "-S"], None)?;
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
                sh,
                tool,
                &["-w", "-t", table, "-D", builtin, "-j", target],
                None,
            )?;
        }
    }
    Ok(())
}

/// Bridged guest-to-guest traffic passes iptables and ip6tables only with
/// br_netfilter on (`bridge-nf-call-iptables`, `bridge-nf-call-ip6tables`);
/// without it security groups between guests of one network would not
/// hold, so this is an error.
fn ensure_bridge_netfilter(sh: &Shell) -> Result<(), FirewallError> {
    let refused = |what: String| FirewallError::Failed {
        cmd: "enabling br_netfilter".into(),
        stderr: format!("{what}: security groups cannot filter bridged traffic"),
    };
    let knobs = Family::ALL.map(|f| f.bridge_knob());
    if sh.netns().is_some() {
        // /proc/sys/net is the reader's namespace's: set it from inside.
        let mut args = vec!["-q".to_string(), "-w".to_string()];
        args.extend(knobs.iter().map(|k| format!("net.bridge.{k}=1")));
        args.push("net.ipv4.ip_forward=1".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        return match run(sh, "sysctl", &args, None) {
            Ok(_) => Ok(()),
            Err(e) => Err(refused(e.to_string())),
        };
    }
    let dir = Path::new("/proc/sys/net/bridge");
    if !dir.join(knobs[0]).exists() {
        // A module on most distributions; built in on some kernels.
        let _ = run(sh, "modprobe", &["br_netfilter"], None);
    }
    for knob in knobs.map(|k| dir.join(k)) {
        let ok = std::fs::read_to_string(&knob).is_ok_and(|v| v.trim() == "1")
            || std::fs::write(&knob, "1").is_ok();
        if !ok {
            return Err(refused(format!(
                "{} is missing or read-only",
                knob.display()
            )));
        }
    }
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
    Ok(())
}

/// Whether `e` says the tool itself is not installed.
fn tool_missing(e: &FirewallError) -> bool {
    matches!(e, FirewallError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Makes the host's iptables and ip6tables hold exactly `plan`'s rules.
/// Idempotent; an empty plan removes every Corral chain and jump.
pub fn apply_firewall(sh: &Shell, plan: &NetPlan) -> Result<(), FirewallError> {
    let rulesets = Family::ALL.map(|f| (f, plan.ruleset(f)));
    if rulesets.iter().any(|(_, r)| !r.is_empty()) {
        ensure_bridge_netfilter(sh)?;
    }
    for (family, rules) in &rulesets {
        apply_family(sh, *family, rules)?;
    }
    Ok(())
}

fn apply_family(sh: &Shell, family: Family, rules: &[TableRules]) -> Result<(), FirewallError> {
    for &table in family.tables() {
        let want = rules.iter().find(|r| r.table == table);
        let existing = match existing_chains(sh, family, table) {
            Ok(chains) => chains,
            // A host without the tool holds none of Corral's chains: with
            // nothing to filter, nothing to do.
            Err(e) if rules.is_empty() && tool_missing(&e) => return Ok(()),
            // The first contact with ip6tables: its failure is the host's
            // lack of IPv6 filtering, not a rule's fault.
            Err(e) if family == Family::Ipv6 => return Err(FirewallError::NoIpv6(Box::new(e))),
            Err(e) => return Err(e),
        };
        if want.is_none() {
            if existing.is_empty() {
                continue;
            }
            remove_hooks(sh, family, table)?;
        }
        let script = restore_script(table, want, &existing);
        run(sh, family.restore(), &["-w", "--noflush"], Some(&script))?;
        if let Some(r) = want {
            ensure_hooks(sh, r)?;
        }
    }
    Ok(())
}

/// Moves the host's iptables and ip6tables from `applied` (what this
/// agent made them hold last, and found intact when it last reasserted
/// them) to `plan`, with one `iptables-restore` (`ip6tables-restore`)
/// per table whose Corral rules changed: the chains, and the jumps from
/// built-in chains deleted or inserted in the same transaction. Nothing
/// is read back: the periodic full [`apply_firewall`] repairs what
/// someone else changed meanwhile. If a restore fails (a chain or jump
/// removed by hand, say), it does the full apply instead. Returns
/// whether it had to.
pub fn update_firewall(
    sh: &Shell,
    applied: &NetPlan,
    plan: &NetPlan,
) -> Result<bool, FirewallError> {
    let changes = Family::ALL.map(|f| (f, applied.ruleset(f), plan.ruleset(f)));
    let has_chains = |rs: &[TableRules]| rs.iter().any(|r| !r.chains.is_empty());
    if changes
        .iter()
        .any(|(_, before, after)| has_chains(after) && !has_chains(before))
    {
        ensure_bridge_netfilter(sh)?;
    }
    for (family, before, after) in &changes {
        let family = *family;
        for &table in family.tables() {
            let old = before.iter().find(|r| r.table == table);
            let new = after.iter().find(|r| r.table == table);
            let Some(script) = update_script(table, old, new) else {
                continue;
            };
            if let Err(e) = run(sh, family.restore(), &["-w", "--noflush"], Some(&script)) {
                tracing::warn!(table, tool = family.tool(), error = %e, "incremental firewall update failed; reapplying in full");
                apply_firewall(sh, plan)?;
                return Ok(true);
            }
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

    #[test]
    fn a_host_that_cannot_run_ip6tables_says_so() {
        // A namespace that does not exist stands for a host whose
        // ip6tables cannot answer: with IPv6 rules to write, that is an
        // error naming IPv6, with the tool's own failure as its source.
        let sh = Shell::in_netns("corral-test-no-such-netns");
        let plan = NetPlan {
            networks: vec![net(NetworkMode::Nat)],
            ports: vec![],
            metadata_port: 8775,
        };
        let e = apply_family(&sh, Family::Ipv6, &plan.rules_v6()).unwrap_err();
        assert!(matches!(e, FirewallError::NoIpv6(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "this host cannot filter IPv6 (ip6tables): security groups cannot hold guests' IPv6 traffic"
        );
        let source = std::error::Error::source(&e).unwrap().to_string();
        assert!(source.contains("ip6tables-save -t mangle"), "{source}");
    }
}
