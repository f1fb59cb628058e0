//! `corral-bench`: the benchmarks behind `corral bench …` (the `corral`
//! binary runs this one found beside it). Each prints its figures and the
//! ratios the goals in docs/PERFORMANCE.md are stated in, against a
//! baseline measured in the same run. Kept out of the `corral` binary so
//! that it links no test harness (this crate uses `corral-test-support`).

mod abuse;
mod api;
mod boot;
mod ec2;
mod figures;
mod net;
mod reconcile;
mod soak;
mod store;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure performance; prints figures and the ratios the goals use.
#[derive(Parser)]
#[command(name = "corral bench", bin_name = "corral bench", version)]
struct Cli {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Store writes: raw etcd-client puts vs the Store on etcd and embedded.
    Store {
        /// Use this etcd instead of starting a private one.
        #[arg(long)]
        etcd: Option<String>,
        /// Operations per case.
        #[arg(long, default_value_t = 10_000)]
        ops: usize,
        /// Bytes per value (a typical Instance is ~1 KiB of JSON).
        #[arg(long, default_value_t = 1024)]
        value_size: usize,
        /// Concurrent writers, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,64")]
        writers: Vec<usize>,
    },
    /// Simulated hosts end to end: instances created through the API
    /// until all are Running.
    Reconcile {
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        #[arg(long, default_value_t = 5_000)]
        instances: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Run the simulated hosts' agents inside the server's process
        /// (by default they run in a child process, so the server's own
        /// memory is measured alone).
        #[arg(long)]
        agents_in_process: bool,
    },
    /// Overlay forwarding tables on simulated nodes: the time from an
    /// instance Running to every other node's tunnel knowing its MAC.
    Net {
        #[arg(long, default_value_t = 20)]
        nodes: usize,
        #[arg(long, default_value_t = 200)]
        instances: usize,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// The simulated hosts of `bench reconcile` when they run in a process
    /// of their own: one agent per `NODE TOKEN` line of the file, until
    /// standard input closes.
    #[command(hide = true)]
    SimHosts {
        #[arg(long)]
        server: String,
        #[arg(long)]
        tokens: std::path::PathBuf,
    },
    /// The native API: creates and gets at N clients next to raw Store
    /// creates, and whole-list latency, on both backends.
    Api {
        /// Operations per case: long enough (a second or more per case on
        /// this machine) that one scheduling hiccup does not decide the ratio.
        #[arg(long, default_value_t = 30_000)]
        ops: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Instances in the listed project.
        #[arg(long, default_value_t = 10_000)]
        list_size: usize,
        /// How many times the whole list is fetched.
        #[arg(long, default_value_t = 30)]
        list_runs: usize,
        /// Which store backends to measure.
        #[arg(long, value_enum, default_value_t = api::Backends::Both)]
        backend: api::Backends,
    },
    /// The EC2 façade: RunInstances, DescribeInstances (with N instances
    /// present) and TerminateInstances, SigV4-signed, on simulated hosts,
    /// next to the native API doing the same in the same run.
    Ec2 {
        #[arg(long, default_value_t = 20)]
        hosts: usize,
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// RunInstances calls (and native creates, and terminates).
        #[arg(long, default_value_t = 500)]
        runs: usize,
        /// Instances present for the DescribeInstances cases, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "100,1000")]
        present: Vec<usize>,
        /// DescribeInstances calls (and native lists) per case.
        #[arg(long, default_value_t = 1000)]
        describes: usize,
        /// Use a private etcd instead of the embedded store.
        #[arg(long)]
        etcd: bool,
    },
    /// A bounded mixed workload (apply, EC2 run/terminate, list, describe,
    /// watch) against a real `corral up`, then `corral server` on etcd:
    /// throughput, p99, errors and the server's RSS against a bound.
    Soak {
        /// Seconds per phase.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 4)]
        watchers: usize,
        /// Skip the etcd phase.
        #[arg(long)]
        no_etcd: bool,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Run each phase twice, clean and then beside abusive clients
        /// (slow, oversized, junk paths, bad signatures), and compare the
        /// normal clients' p99 and the server's RSS.
        #[arg(long)]
        abuse: bool,
    },
    /// Real guests: POST -> Ready through Corral on qemu:///system (1 and
    /// N concurrent instances) next to a bare QEMU boot of the same guest
    /// (B0), measured in the same run. Root, libvirtd running.
    Boot {
        /// Rounds of each kind (bare QEMU, 1 instance, N concurrent).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Instances booted at once in the concurrent rounds.
        #[arg(long, default_value_t = 10)]
        concurrent: usize,
        /// The test guest (built there by tests/images/build-guest).
        #[arg(long, default_value = "/var/cache/corral/guest")]
        guest_dir: PathBuf,
        /// Give up on a round after this many seconds.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// Also boot N bare QEMUs at once, for scale.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        bare_concurrent: bool,
        /// Keep the temporary directory (logs, store) afterwards.
        #[arg(long)]
        keep: bool,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().what {
        BenchCommand::Store {
            etcd,
            ops,
            value_size,
            writers,
        } => {
            store::store(store::StoreBenchOptions {
                etcd,
                ops,
                value_size,
                writers,
            })
            .await
        }
        BenchCommand::Reconcile {
            nodes,
            instances,
            clients,
            timeout,
            agents_in_process,
        } => {
            reconcile::reconcile(reconcile::ReconcileBenchOptions {
                nodes,
                instances,
                clients,
                timeout: std::time::Duration::from_secs(timeout),
                agents_in_process,
            })
            .await
        }
        BenchCommand::Net {
            nodes,
            instances,
            timeout,
        } => {
            net::net(net::NetBenchOptions {
                nodes,
                instances,
                timeout: std::time::Duration::from_secs(timeout),
            })
            .await
        }
        BenchCommand::SimHosts { server, tokens } => reconcile::sim_hosts(&server, &tokens).await,
        BenchCommand::Api {
            ops,
            clients,
            list_size,
            list_runs,
            backend,
        } => {
            api::api(api::ApiBenchOptions {
                ops,
                clients,
                list_size,
                list_runs,
                backend,
            })
            .await
        }
        BenchCommand::Ec2 {
            hosts,
            clients,
            runs,
            present,
            describes,
            etcd,
        } => {
            ec2::ec2(ec2::Ec2BenchOptions {
                hosts,
                clients,
                runs,
                present,
                describes,
                etcd,
            })
            .await
        }
        BenchCommand::Soak {
            seconds,
            clients,
            watchers,
            no_etcd,
            seed,
            abuse,
        } => {
            soak::soak(soak::SoakOptions {
                seconds,
                clients,
                watchers,
                etcd: !no_etcd,
                seed,
                abuse,
            })
            .await
        }
        BenchCommand::Boot {
            runs,
            concurrent,
            guest_dir,
            timeout,
            bare_concurrent,
            keep,
        } => {
            boot::boot(boot::BootBenchOptions {
                runs,
                concurrent,
                guest_dir,
                timeout: std::time::Duration::from_secs(timeout),
                bare_concurrent,
                keep,
            })
            .await
        }
    }
}

/// The `corral` binary the benchmarks start (`corral up`, `corral server`,
/// `corral agent`): the one beside this binary, as cargo builds both into
/// one directory.
pub(crate) fn corral_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let corral = exe.with_file_name("corral");
    if corral.is_file() {
        Ok(corral)
    } else {
        anyhow::bail!(
            "{} not found: build it beside corral-bench (cargo build --release -p corral-cli -p corral-bench)",
            corral.display()
        )
    }
}
