//! The `corral` binary: servers (`up`), client verbs and benchmarks.

mod bench;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "corral", version, about = "Declarative control plane for KVM virtual machines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure performance; prints figures and the ratios the goals use.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
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
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench { what } => match what {
            BenchCommand::Store {
                etcd,
                ops,
                value_size,
                writers,
            } => {
                bench::store(bench::StoreBenchOptions {
                    etcd,
                    ops,
                    value_size,
                    writers,
                })
                .await
            }
        },
    }
}
