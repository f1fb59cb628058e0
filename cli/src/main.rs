//! The `corral` binary: servers (`up`, `server`), the node agent and
//! client verbs. `corral bench …` runs the separate `corral-bench` binary,
//! so this one links no test harness.

mod client;
mod cluster;
mod commands;
mod config;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's malloc: per-thread heaps without arena
/// locks; in an API profile glibc's malloc, free and their lock waits
/// were the largest single cost (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// What tenants' Images may import from this server's host and network
/// (`corral_store::import`).
#[derive(clap::Args, Clone)]
struct ImportArgs {
    /// A directory whose files tenants may import as images
    /// (`spec.source.path`, EC2 RegisterImage's ImageLocation); nothing
    /// outside it, nor a symlink out of it, is read. Repeatable.
    #[arg(long = "image-import-dir", default_value = corral_store::import::DEFAULT_IMPORT_DIR)]
    image_import_dirs: Vec<PathBuf>,
    /// Read no file of this host for tenants at all (upload or URL only).
    #[arg(long, conflicts_with = "image_import_dirs")]
    no_image_import: bool,
    /// A CIDR that image URLs may reach although it is loopback, private,
    /// link-local or this host's (refused by default). Repeatable.
    #[arg(long = "image-url-allow")]
    image_url_allow: Vec<corral_store::import::Cidr>,
    /// CA certificates (PEM) trusted for https:// image URLs, besides the
    /// system's.
    #[arg(long)]
    image_ca_bundle: Option<PathBuf>,
    /// The largest image a URL import may bring in, in bytes.
    #[arg(long, default_value_t = corral_store::import::DEFAULT_MAX_BYTES)]
    image_max_bytes: u64,
}

impl ImportArgs {
    fn policy(self) -> Result<corral_store::import::ImportPolicy> {
        let dirs = if self.no_image_import {
            Vec::new()
        } else {
            self.image_import_dirs
        };
        let mut policy = corral_store::import::ImportPolicy::new(dirs, self.image_url_allow)
            .context("--image-import-dir")?;
        policy.ca_bundle = self.image_ca_bundle;
        policy.max_bytes = self.image_max_bytes;
        Ok(policy)
    }
}

/// How the native and EC2 APIs are served: TLS by default, with a CA
/// this server makes on first start, or the operator's files.
#[derive(clap::Args, Clone)]
struct TlsArgs {
    /// The server's certificate chain (PEM) instead of one issued by the
    /// CA Corral makes for itself.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA clients are told to trust with --tls-cert (default: the last
    /// certificate of its chain).
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// Another DNS name or IP address the made certificate covers (it
    /// always covers localhost, loopback, this host's name and the
    /// addresses it listens on). Repeatable.
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
    /// Serve plain HTTP, without TLS. Only on loopback addresses unless
    /// --insecure-http-anywhere is also given.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_sans"])]
    insecure_http: bool,
    /// With --insecure-http: also on addresses other hosts can reach
    /// (credentials then cross the network in clear).
    #[arg(long, requires = "insecure_http")]
    insecure_http_anywhere: bool,
}

impl TlsArgs {
    /// The identity to serve with (None: plain HTTP), making the CA in
    /// `dir` on first use.
    fn identity(
        self,
        dir: &std::path::Path,
        listen: &[SocketAddr],
    ) -> Result<Option<corral_tls::ServerIdentity>> {
        if self.insecure_http {
            if let Some(a) = listen.iter().find(|a| !a.ip().is_loopback()) {
                if !self.insecure_http_anywhere {
                    anyhow::bail!(
                        "--insecure-http serves only on loopback addresses, and {a} is not one: \
                         use TLS (the default), or add --insecure-http-anywhere to send \
                         credentials in clear over the network"
                    );
                }
            }
            return Ok(None);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            return corral_tls::from_files(cert, key, self.tls_ca.as_deref())
                .map(Some)
                .context("--tls-cert/--tls-key");
        }
        let ips: Vec<_> = listen.iter().map(|a| a.ip()).collect();
        let names = corral_tls::SubjectNames::for_host(&ips, &self.tls_sans);
        corral_tls::load_or_create(dir, &names)
            .map(Some)
            .with_context(|| format!("the server's certificates in {}", dir.display()))
    }
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
        /// Hypervisor of the local node agent: `qemu:///system` on a real
        /// host, `test:///default` for a simulated one.
        #[arg(long, env = "CORRAL_LIBVIRT", default_value = "qemu:///system")]
        libvirt: String,
        /// Domain type for real hosts: `kvm`, `qemu` (TCG), or `auto`
        /// (kvm only where the CPU has vmx/svm and /dev/kvm opens).
        #[arg(long, default_value = "auto")]
        virt_type: String,
        /// Where the local agent keeps images, disks and consoles (QEMU
        /// must be able to reach it: every parent directory 0755).
        #[arg(
            long,
            env = "CORRAL_AGENT_DIR",
            default_value = "/var/lib/corral/agent"
        )]
        agent_dir: PathBuf,
        /// Name of the local Node (default: this host's short name).
        #[arg(long)]
        node: Option<String>,
        /// Run without the local agent (API and controllers only).
        #[arg(long)]
        no_agent: bool,
        /// The key file sealing EC2 secrets in the store (default: in the
        /// data directory; keep it out of the store's backups).
        #[arg(long)]
        secrets_key_file: Option<PathBuf>,
        #[command(flatten)]
        imports: ImportArgs,
        #[command(flatten)]
        tls: TlsArgs,
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
        /// Run the controllers here (behind leader election).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        controllers: bool,
        /// Where this server keeps image bytes.
        #[arg(long, env = "CORRAL_BLOB_DIR", default_value = "/var/lib/corral/blobs")]
        blob_dir: PathBuf,
        /// Where this server keeps its CA and certificate. Servers of one
        /// cluster share a CA: copy ca.crt and ca.key here before their
        /// first start, or give them all --tls-cert/--tls-key.
        #[arg(long, default_value = "/var/lib/corral/tls")]
        tls_dir: PathBuf,
        /// The key file sealing EC2 secrets in etcd, made on first start.
        /// Every server of a cluster needs the same file.
        #[arg(long, default_value = "/var/lib/corral/secrets.keys")]
        secrets_key_file: PathBuf,
        #[command(flatten)]
        imports: ImportArgs,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Run a node agent for one hypervisor host.
    Agent {
        /// Native API URL.
        #[arg(long, env = "CORRAL_SERVER")]
        server: String,
        /// The CA (PEM file) that signed the server's certificate.
        #[arg(long, env = "CORRAL_CA_FILE")]
        server_ca: Option<PathBuf>,
        /// Instead of --server-ca: `sha256:<hex>` of the server's CA
        /// certificate (`corral up` prints it); the CA is taken from the
        /// server only if it matches, and kept in --agent-dir.
        #[arg(long, conflicts_with = "server_ca")]
        server_ca_hash: Option<String>,
        /// Node-scoped token (`corral user create NAME --role node --node N`).
        #[arg(long, env = "CORRAL_TOKEN")]
        token: String,
        /// Node name (a DNS label).
        #[arg(long)]
        node: String,
        #[arg(long, default_value = "qemu:///system")]
        libvirt: String,
        /// `kvm`, `qemu` (TCG) or `auto` (kvm only where it can boot).
        #[arg(long, default_value = "auto")]
        virt_type: String,
        /// Where images, disks and consoles live (every parent 0755).
        #[arg(
            long,
            env = "CORRAL_AGENT_DIR",
            default_value = "/var/lib/corral/agent"
        )]
        agent_dir: PathBuf,
        /// Advertise this many vcpus instead of the host's (simulated hosts).
        #[arg(long)]
        vcpus: Option<u32>,
        /// Advertise this much memory instead of the host's.
        #[arg(long)]
        memory_mib: Option<u64>,
        /// Availability zone of this node.
        #[arg(long)]
        zone: Option<String>,
        /// Port of the instance metadata service on this host; guests reach
        /// it as http://169.254.169.254/ (redirected to their gateway).
        #[arg(long, default_value_t = 8775)]
        metadata_port: u16,
        /// This node's VXLAN tunnel endpoint: its underlay IPv4 address,
        /// which other nodes send overlay networks' traffic to. Without
        /// it, overlay networks run on this node alone.
        #[arg(long)]
        vtep: Option<std::net::Ipv4Addr>,
        /// UDP port of the VXLAN tunnels (the same on every node).
        #[arg(long, default_value_t = 4789, value_parser = clap::value_parser!(u16).range(1..))]
        vxlan_port: u16,
        /// MTU of overlay networks inside the tunnel: the underlay's MTU
        /// less 50 (VXLAN over IPv4). Pushed to guests by DHCP.
        #[arg(long, default_value_t = 1450, value_parser = clap::value_parser!(u32).range(576..=9000))]
        overlay_mtu: u32,
        /// This node's interface on the provider network: the floating
        /// addresses of its guests are held there as /32s (labelled
        /// IFACE:crf) and announced with gratuitous ARP (`arping`), so
        /// the provider network reaches them on-link. Without it, nothing
        /// answers for them (the outside world needs a route via the node).
        #[arg(long, value_parser = parse_uplink)]
        uplink: Option<String>,
        /// Seconds between full scans of the host's domains (the backstop
        /// behind libvirt's lifecycle events).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
        scan_interval: u64,
        /// Seconds between re-checks of every bound instance.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
        resync_interval: u64,
    },
    /// Measure performance; prints figures and the ratios the goals use
    /// (runs `corral-bench`, found beside this binary or on $PATH).
    #[command(disable_help_flag = true)]
    Bench {
        /// What to measure and how (`corral bench --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    #[command(flatten)]
    Client(commands::ClientCommand),
}

/// `corral bench ARGS`: runs `corral-bench ARGS` — the one beside this
/// binary (both are built into the same target directory), else the one
/// on `$PATH` — and exits with its status.
fn bench(args: Vec<std::ffi::OsString>) -> Result<()> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("corral-bench")))
        .filter(|p| p.is_file());
    let program = beside.unwrap_or_else(|| PathBuf::from("corral-bench"));
    let status = std::process::Command::new(&program)
        .args(&args)
        .status()
        .map_err(|e| {
            anyhow::anyhow!(
                "running {}: {e} (the benchmarks are their own binary: \
                 cargo build --release -p corral-bench)",
                program.display()
            )
        })?;
    std::process::exit(status.code().unwrap_or(1));
}

/// The CA an agent trusts: the file given, or the server's own CA learnt
/// against the pinned hash (and kept in the agent's directory), or the
/// system's roots.
async fn agent_ca(
    server: &str,
    file: Option<PathBuf>,
    pin: Option<String>,
    state_dir: &std::path::Path,
) -> Result<Option<String>> {
    let https = server.starts_with("https://");
    if !https && (file.is_some() || pin.is_some()) {
        anyhow::bail!("--server-ca/--server-ca-hash need an https:// --server, not {server:?}");
    }
    if let Some(file) = file {
        let pem = std::fs::read_to_string(&file)
            .with_context(|| format!("reading --server-ca {}", file.display()))?;
        return Ok(Some(pem));
    }
    let Some(pin) = pin else {
        if !https {
            tracing::warn!(%server, "talking to the server over plain HTTP: its token crosses the network in clear");
        }
        return Ok(None);
    };
    let pin = corral_tls::parse_pin(&pin)?;
    let kept = state_dir.join("server-ca.crt");
    if let Ok(pem) = std::fs::read_to_string(&kept) {
        if corral_tls::ca_hash(&pem).ok().as_deref() == Some(pin.as_str()) {
            return Ok(Some(pem));
        }
    }
    // The server may start after the agent: retry unreachable servers, but
    // a server that answers with another CA is refused at once.
    let mut delay = std::time::Duration::from_millis(200);
    let pem = loop {
        match corral_tls::fetch_pinned_ca(server, &pin).await {
            Ok(pem) => break pem,
            Err(corral_tls::TlsError::Connect(url, why)) => {
                tracing::warn!(%url, error = %why, "cannot reach the server to learn its CA yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("--server-ca-hash"),
        }
    };
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    std::fs::write(&kept, &pem)
        .with_context(|| format!("keeping the server's CA in {}", kept.display()))?;
    Ok(Some(pem))
}

/// `auto` becomes what this host can really boot.
/// `--uplink`: an interface name short enough for the label Corral's
/// addresses carry on it (`IFACE:crf`, 15 characters at most).
fn parse_uplink(v: &str) -> Result<String, String> {
    if v.is_empty() || v.contains(['/', ' ', ':']) {
        return Err(format!("{v:?} is not an interface name"));
    }
    corral_node_agent::net::uplink_label(v)
        .map(|_| v.to_string())
        .ok_or_else(|| format!("{v:?}: at most 11 characters (the addresses' label is {v}:crf)"))
}

fn resolve_virt_type(v: &str) -> String {
    if v == "auto" {
        corral_node_agent::host::detect_virt_type().to_string()
    } else {
        v.to_string()
    }
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
            libvirt,
            virt_type,
            agent_dir,
            node,
            no_agent,
            secrets_key_file,
            imports,
            tls,
        } => {
            let data_dir = data_dir.unwrap_or_else(config::default_data_dir);
            println!("Data directory: {}", data_dir.display());
            let tls = tls.identity(&data_dir.join("tls"), &[listen, ec2_listen])?;
            let store = up::open_embedded(&data_dir)?;
            up::serve(
                store,
                up::ServeOptions {
                    listen,
                    ec2_listen,
                    write_config: true,
                    controllers: Some(cluster::Leadership::Always),
                    blob_dir: data_dir.join("blobs"),
                    imports: imports.policy()?,
                    tls,
                    secrets_key_file: secrets_key_file
                        .unwrap_or_else(|| data_dir.join("secrets.keys")),
                    address_pool: Some(up::UP_ADDRESS_POOL.to_string()),
                    agent: (!no_agent).then(|| cluster::LocalAgent {
                        node: node.unwrap_or_else(cluster::default_node_name),
                        libvirt,
                        virt_type: resolve_virt_type(&virt_type),
                        state_dir: agent_dir,
                        // A simulated host advertises room for a lab.
                        vcpus: None,
                        memory_mib: None,
                    }),
                },
            )
            .await
        }
        Command::Server {
            etcd,
            listen,
            ec2_listen,
            write_config,
            controllers,
            blob_dir,
            tls_dir,
            secrets_key_file,
            imports,
            tls,
        } => {
            let tls = tls.identity(&tls_dir, &[listen, ec2_listen])?;
            let etcd_store = corral_store::EtcdStore::connect(&etcd)
                .await
                .with_context(|| format!("connecting to etcd at {}", etcd.join(",")))?;
            let identity = format!("{}:{}", cluster::default_node_name(), std::process::id());
            let leadership = controllers.then(|| cluster::Leadership::Etcd {
                client: Box::new(etcd_store.client()),
                identity,
            });
            up::serve(
                std::sync::Arc::new(etcd_store),
                up::ServeOptions {
                    listen,
                    ec2_listen,
                    write_config,
                    controllers: leadership,
                    blob_dir,
                    imports: imports.policy()?,
                    tls,
                    secrets_key_file,
                    agent: None,
                    address_pool: None,
                },
            )
            .await
        }
        Command::Agent {
            server,
            server_ca,
            server_ca_hash,
            token,
            node,
            libvirt,
            virt_type,
            agent_dir,
            vcpus,
            memory_mib,
            zone,
            metadata_port,
            vtep,
            vxlan_port,
            overlay_mtu,
            uplink,
            scan_interval,
            resync_interval,
        } => {
            let virt_type = resolve_virt_type(&virt_type);
            // libvirtd not answering yet is waited for (the node registers
            // once it answers); a URI libvirt cannot use is an error now.
            let (hv, waiting) = corral_node_agent::Libvirt::open_or_wait(&libvirt, &virt_type)
                .with_context(|| format!("opening libvirt at {libvirt}"))?;
            if let Some(why) = waiting {
                tracing::warn!(uri = %libvirt, error = %why, "libvirt does not answer yet; waiting for it before registering the node");
            }
            let mut opts = corral_node_agent::AgentOptions::new(&node);
            opts.state_dir = agent_dir;
            opts.vcpus = vcpus;
            opts.memory_mib = memory_mib;
            opts.zone = zone;
            opts.metadata_port = metadata_port;
            opts.vtep = vtep;
            opts.vxlan_port = vxlan_port;
            opts.overlay_mtu = overlay_mtu;
            opts.uplink = uplink;
            opts.scan = std::time::Duration::from_secs(scan_interval);
            opts.resync = std::time::Duration::from_secs(resync_interval);
            opts.events_uri = (!libvirt.starts_with("test:")).then(|| libvirt.clone());
            let ca = agent_ca(&server, server_ca, server_ca_hash, &opts.state_dir).await?;
            let api = corral_node_agent::ApiClient::with_ca(&server, &token, ca.as_deref())
                .context("--server-ca")?;
            let agent = corral_node_agent::Agent::new(api, std::sync::Arc::new(hv), opts);
            let (stop, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                let _ = stop.send(true);
            });
            println!("corral agent: node {node:?} on {libvirt}, API {server}");
            agent.run(rx).await?;
            Ok(())
        }
        Command::Client(c) => commands::run(c).await,
        Command::Bench { args } => bench(args),
    }
}
