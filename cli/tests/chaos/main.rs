//! Chaos suite (issue 8, "Faults"): real processes killed at seeded
//! moments, then the invariants that must survive it.
//!
//! - `embedded_store_kill9_during_write_burst`: `corral up` (redb store)
//!   SIGKILLed in the middle of concurrent creates, restarted on the same
//!   data: every acknowledged create is there, the file passes redb's
//!   integrity check, `corral up` starts cleanly.
//! - `watchers_behind_etcd_compaction_relist_and_miss_nothing`: through
//!   2,400 writes and an etcd compaction, a store watch nobody reads
//!   (it falls behind etcd itself: Expired, relist), native API watchers
//!   that stall or disconnect (served from the server's watch cache), and
//!   one that resumes from before that cache (410, relist) all end with
//!   exactly the store's objects.
//! - `stopped_agent_goes_unknown_and_returns_without_restarting_guests`: a
//!   node agent process SIGSTOPped while its guests run: Node and Instances
//!   Unknown within the node grace, back to the truth after SIGCONT, and the
//!   hypervisor saw no start, destroy or define.
//! - `sigkill_rounds_on_three_member_etcd`: three etcd members, two
//!   `corral server`s, two node agents on simulated hosts, a seeded
//!   workload; each round SIGKILLs one of {a server, the controller leader,
//!   an agent, an etcd member}, restarts it, waits for convergence and
//!   checks the invariants.
//!
//! Seeded by `CORRAL_CHAOS_SEED` (default below): a failure prints the seed
//! to rerun it. `--nocapture` shows the rounds and what was checked.
//!
//! How the test sees simulated hosts: libvirt's test driver lives inside
//! the process that opened it, so a separate agent process would take its
//! "host" with it when killed (that is a host crash, not an agent crash),
//! and nothing outside could list its domains. So:
//! - scenario 3 runs the agent as its own process — this test binary
//!   re-executed as `stopped_agent::agent_host_process` — with the same `Agent` and
//!   `Libvirt` code `corral agent` runs, plus a read-only window (a tiny
//!   HTTP answer) listing the host's domains and how often the agent
//!   called start/destroy/define on each. SIGSTOP freezes agent and host
//!   together, which is what a stopped agent looks like to the server.
//! - scenario 4 runs the agents inside this process, each on its own tokio
//!   runtime, on hosts this process keeps open. "SIGKILL an agent" drops
//!   its runtime at once (no shutdown path runs; its connections reset);
//!   the host and its guests live on, as libvirtd would after a real agent
//!   died, and the test lists every host's domains directly.
//!
//! Servers, `corral up` and etcd members are real processes killed with
//! SIGKILL.
//!
//! The workload changes objects as a careful client does (read, change the
//! spec, write back what was read). A blind PUT of name and spec replaces
//! `metadata.finalizers` with none (Kubernetes' PUT semantics, which
//! docs/API.md keeps): an Instance changed that way and deleted before its
//! controller re-adds `corral/instance` is gone at once, its running domain
//! left to the agent's orphan sweep (up to 30 s) and its address released
//! meanwhile. This suite found that with blind PUTs; it is reported, not
//! hidden: the careful client is what the CLI (apply) and EC2 do.

mod compaction;
mod invariants;
mod kill9;
mod rounds;
mod stopped_agent;
mod support;
mod workload;

#[path = "../common/seeded.rs"]
mod seeded;
