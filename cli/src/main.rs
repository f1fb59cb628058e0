//! The `corral` binary: servers (`up`, `server`), client verbs and
//! benchmarks.

mod bench;
mod config;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "corral",
    version,
    about = "Declarative control plane for KVM virtual machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on this machine with the embedded store.
    Up {
        /// Where the store and images live.
        #[arg(long, env = "CORRAL_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Native API address.
        #[arg(long, default_value = "127.0.0.1:8774")]
        listen: SocketAddr,
        /// EC2 API address.
        #[arg(long, default_value = "127.0.0.1:8773")]
        ec2_listen: SocketAddr,
    },
    /// Run the API server on an etcd cluster (stateless; run several).
    Server {
        /// etcd endpoints, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        etcd: Vec<String>,
        #[arg(long, default_value = "127.0.0.1:8774")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8773")]
        ec2_listen: SocketAddr,
        /// Write the admin's client config on first start.
        #[arg(long)]
        write_config: bool,
    },
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
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Up {
            data_dir,
            listen,
            ec2_listen,
        } => {
            let data_dir = data_dir.unwrap_or_else(config::default_data_dir);
            println!("Data directory: {}", data_dir.display());
            let store = up::open_embedded(&data_dir)?;
            up::serve(
                store,
                up::ServeOptions {
                    listen,
                    ec2_listen,
                    write_config: true,
                },
            )
            .await
        }
        Command::Server {
            etcd,
            listen,
            ec2_listen,
            write_config,
        } => {
            let store = up::open_etcd(&etcd).await?;
            up::serve(
                store,
                up::ServeOptions {
                    listen,
                    ec2_listen,
                    write_config,
                },
            )
            .await
        }
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
