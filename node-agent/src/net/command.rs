//! Running the host's networking tools (`ip`, `bridge`, `iptables-*`,
//! `ip6tables-*`, `ebtables-*`) as child processes, never through a
//! shell: on the host, or inside a named network namespace (`ip netns
//! exec NAME ...`), as a [`Shell`] says. Each caller words the failure in
//! its own error type.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Where the commands run: on the host, or inside a named network
/// namespace (`ip netns exec NAME ...`: tests and multi-node rigs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shell {
    netns: Option<String>,
}

impl Shell {
    /// Commands run directly, in the agent's own network namespace.
    pub fn host() -> Self {
        Shell { netns: None }
    }

    /// Commands run as `ip netns exec NAME <cmd> ...`.
    pub fn in_netns(name: &str) -> Self {
        Shell {
            netns: Some(name.to_string()),
        }
    }

    /// The namespace commands run in (`None`: the host's).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }
}

/// Why a command did not answer.
#[derive(Debug)]
pub(super) enum Failure {
    /// It could not be started, fed or waited for.
    Spawn(std::io::Error),
    /// It exited non-zero: its standard error (else its exit status).
    Exit(String),
}

/// A failed command: its command line, for messages, and why.
#[derive(Debug)]
pub(super) struct CommandError {
    pub(super) cmd: String,
    pub(super) failure: Failure,
}

/// The command line that runs `prog args...`, for messages.
pub(super) fn describe(netns: Option<&str>, prog: &str, args: &[&str]) -> String {
    let mut words: Vec<&str> = Vec::new();
    if let Some(ns) = netns {
        words.extend(["ip", "netns", "exec", ns]);
    }
    words.push(prog);
    words.extend(args);
    words.join(" ")
}

/// Runs `prog args...` (in `netns` when given, with `stdin` fed to it),
/// answering its standard output.
pub(super) fn run(
    netns: Option<&str>,
    prog: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, CommandError> {
    let mut cmd = match netns {
        None => Command::new(prog),
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, prog]);
            c
        }
    };
    cmd.args(args);
    let fail = |failure| CommandError {
        cmd: describe(netns, prog, args),
        failure,
    };
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(Failure::Spawn(e)))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| fail(Failure::Spawn(e)))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(Failure::Spawn(e)))?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.is_empty() {
            stderr = out.status.to_string();
        }
        return Err(fail(Failure::Exit(stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
