//! `corral up` (everything on one machine, embedded store) and
//! `corral server` (API on an etcd cluster).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use corral_api_types::auth::{ApiToken, User};
use corral_apiserver::auth::{issue_access_key, issue_token, token_hash};
use corral_apiserver::ApiState;
use corral_store::{EmbeddedStore, ResourceStore, Store};

use crate::config::{config_dir, config_path, write_private, ClientConfig, Credentials};

pub const ADMIN: &str = "admin";
pub const REGION: &str = "corral-1";

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub ec2_listen: SocketAddr,
    /// Write the client config (and AWS files) for the admin.
    pub write_config: bool,
    /// Run the controllers (and how leadership is decided).
    pub controllers: Option<crate::cluster::Leadership>,
    /// Run a node agent in this process.
    pub agent: Option<crate::cluster::LocalAgent>,
    /// Where image bytes are kept.
    pub blob_dir: PathBuf,
    /// What tenants may import from this host and its network.
    pub imports: corral_store::import::ImportPolicy,
    /// The certificate both APIs present; None serves plain HTTP
    /// (`--insecure-http`).
    pub tls: Option<corral_tls::ServerIdentity>,
    /// The key file sealing EC2 secrets in the store (made on first start).
    pub secrets_key_file: PathBuf,
    /// The CIDR of the operator's address pool made on first start when
    /// there is none (`corral up`; a cluster's operator makes its own).
    pub address_pool: Option<String>,
}

/// `corral up`'s operator address pool: devstack's public floating range.
pub const UP_ADDRESS_POOL: &str = "172.24.4.0/24";

/// Makes the operator's pool project and, when it holds no pool yet, the
/// pool `public` of `cidr`, so AllocateAddress works out of the box.
async fn seed_address_pool(store: &ResourceStore, cidr: &str) -> Result<()> {
    use corral_api_types::kinds::address::{DEFAULT_POOL_NETWORK, POOL_PROJECT};
    use corral_api_types::{Network, NetworkSpec, Project, ProjectSpec, Resource};
    use corral_store::StoreError;
    let project = Project::new(
        "",
        POOL_PROJECT,
        ProjectSpec {
            description: Some("the operator's floating address pools".into()),
            ..Default::default()
        },
    );
    match store.create(&project).await {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let pools = store
        .list::<Network>(Some(POOL_PROJECT), Default::default())
        .await?;
    if !pools.items.is_empty() {
        return Ok(());
    }
    let pool = Network::new(
        POOL_PROJECT,
        DEFAULT_POOL_NETWORK,
        NetworkSpec {
            cidr: cidr.to_string(),
            ..Default::default()
        },
    );
    match store.create(&pool).await {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Opens the embedded store under `data_dir`.
pub fn open_embedded(data_dir: &Path) -> Result<Arc<dyn Store>> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let path = data_dir.join("store.redb");
    let store = EmbeddedStore::open(&path)
        .with_context(|| format!("opening the store {}", path.display()))?;
    Ok(Arc::new(store))
}

fn base_url(scheme: &str, addr: SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("{scheme}://{host}:{}", addr.port())
}

/// Whether the config file on disk still authenticates as `user` against
/// this server and trusts `ca_file`.
async fn config_still_valid(
    store: &ResourceStore,
    path: &Path,
    server: &str,
    ca_file: &str,
) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(config) = yaml_serde::from_str::<ClientConfig>(&text) else {
        return false;
    };
    if config.server != server || config.token.is_empty() || config.ca_file != ca_file {
        return false;
    }
    matches!(
        store.get::<ApiToken>("", &token_hash(&config.token)).await,
        Ok(Some(t)) if t.spec.user == config.user
    )
}

/// Writes config.yaml, aws-credentials, aws-config and admin.rc.
fn write_client_files(creds: &Credentials<'_>) -> Result<Vec<PathBuf>> {
    let dir = config_dir();
    let config = ClientConfig {
        server: creds.server.to_string(),
        token: creds.token.to_string(),
        project: creds.project.to_string(),
        user: creds.user.to_string(),
        ec2_endpoint: creds.ec2_endpoint.to_string(),
        ca_file: creds.ca_file.to_string(),
    };
    let config_file = config_path();
    config.save(&config_file)?;
    let aws_credentials = dir.join("aws-credentials");
    write_private(&aws_credentials, &creds.aws_credentials("corral"))?;
    let aws_config = dir.join("aws-config");
    write_private(&aws_config, &creds.aws_config("corral"))?;
    let rc = dir.join(format!("{}.rc", creds.user));
    write_private(&rc, &creds.rc_file())?;
    Ok(vec![config_file, aws_credentials, aws_config, rc])
}

/// Bootstraps, makes sure the admin has a working client config, and
/// serves until SIGINT/SIGTERM.
pub async fn serve(raw: Arc<dyn Store>, options: ServeOptions) -> Result<()> {
    let keys = corral_store::secrets::SecretKeys::load_or_create(&options.secrets_key_file)
        .context("--secrets-key-file")?;
    let store = ResourceStore::with_secrets(raw.clone(), Arc::new(keys));
    let boot = corral_apiserver::bootstrap(&store, ADMIN)
        .await
        .context("seeding the store")?;
    if let Some(cidr) = &options.address_pool {
        seed_address_pool(&store, cidr)
            .await
            .context("making the operator's address pool")?;
    }
    let sealed = corral_apiserver::rotate::seal_in_clear(&store)
        .await
        .context("sealing EC2 secrets stored in clear")?;
    if sealed > 0 {
        println!("Sealed {sealed} EC2 secret(s) that were stored in clear");
    }
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let server = base_url(scheme, options.listen);
    let ec2 = base_url(scheme, options.ec2_listen);

    if options.write_config {
        let path = config_path();
        // The CA travels with the client files, so every client trusts
        // this server and only it with no step of the user's.
        let ca_file = match &options.tls {
            Some(id) => {
                let f = config_dir().join("ca.crt");
                write_private(&f, &id.ca_pem)?;
                f.display().to_string()
            }
            None => String::new(),
        };
        let issued = match boot.admin {
            Some(issued) => Some((issued.token, issued.access_key_id, issued.secret_access_key)),
            None if !config_still_valid(&store, &path, &server, &ca_file).await => {
                // The data outlived the client files (or they point
                // elsewhere): give the admin fresh credentials.
                store
                    .get::<User>("", ADMIN)
                    .await?
                    .context("the admin user is missing from the store")?;
                let token = issue_token(&store, ADMIN, "corral up").await?;
                let (id, secret) = issue_access_key(&store, ADMIN).await?;
                Some((token, id, secret))
            }
            None => None,
        };
        if let Some((token, id, secret)) = issued {
            let creds = Credentials {
                server: &server,
                ec2_endpoint: &ec2,
                region: REGION,
                user: ADMIN,
                project: "default",
                token: &token,
                access_key_id: &id,
                secret_access_key: &secret,
                ca_file: &ca_file,
            };
            let files = write_client_files(&creds)?;
            println!("Wrote admin credentials:");
            for f in &files {
                println!("  {}", f.display());
            }
            let dir = config_dir();
            println!("For awscli/boto3 (EC2 API at {ec2}):");
            println!(
                "  export AWS_SHARED_CREDENTIALS_FILE={} AWS_CONFIG_FILE={} AWS_PROFILE=corral",
                dir.join("aws-credentials").display(),
                dir.join("aws-config").display()
            );
            println!("Or source {}", dir.join("admin.rc").display());
        } else {
            println!("Client config: {} (still valid)", path.display());
        }
    }

    let imports = Arc::new(options.imports.clone());
    let ec2_state = corral_ec2_api::Ec2State::new(
        store.clone(),
        corral_ec2_api::Ec2Config {
            region: REGION.to_string(),
            imports: imports.clone(),
            ..Default::default()
        },
    );
    let listener = listen(options.listen, options.tls.as_ref(), "the API").await?;
    let ec2_listener = listen(options.ec2_listen, options.tls.as_ref(), "the EC2 API").await?;
    let blobs = corral_store::blobs::BlobStore::open(&options.blob_dir)
        .with_context(|| format!("opening the image store {}", options.blob_dir.display()))?;
    // Controllers and the agent start once the API can answer them.
    let background = crate::cluster::start(
        &store,
        options.controllers.clone(),
        options.agent.clone(),
        Some(blobs.clone()),
        imports.clone(),
        &server,
        options.tls.as_ref().map(|id| id.ca_pem.clone()),
    )
    .await?;
    // What the store can repair by itself (etcd's NOSPACE alarm once
    // space is freed), tried every 15 s.
    let healing = raw.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(15)).await;
            if let Err(e) = healing.heal().await {
                tracing::warn!(error = %corral_store::error_text(&e), "repairing the store");
            }
        }
    });
    let state = ApiState::with_imports(store, options.imports);
    state.set_blobs(blobs);
    println!(
        "Corral is up: native API {server}, EC2 API {ec2} (store: {}); stop with Ctrl-C",
        raw.backend()
    );
    match &options.tls {
        Some(id) => {
            println!("TLS: CA {} ({})", id.ca_file.display(), id.ca_hash);
            println!(
                "Agents join with: corral agent --server {server} --server-ca-hash {} --token TOKEN --node NAME",
                id.ca_hash
            );
        }
        None => println!("TLS is off (--insecure-http): credentials cross the network in clear"),
    }
    tracing::info!(%server, %ec2, backend = raw.backend(), "serving the native and EC2 APIs");
    // On a signal the agent and controllers stop first (the local agent's
    // watch is one of the server's open connections), then the servers
    // drain; streams still open after a few seconds (other clients'
    // watches) do not keep the process alive.
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        background.stop().await;
        let _ = stopping.send(true);
    });
    let signalled = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let servers = async {
        tokio::join!(
            corral_apiserver::serve(state, listener, signalled(stopped.clone())),
            corral_ec2_api::serve(ec2_state, ec2_listener, signalled(stopped.clone())),
        )
    };
    let grace = async {
        signalled(stopped.clone()).await;
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    };
    tokio::select! {
        (api, ec2_api) = servers => {
            api.context("serving the API")?;
            ec2_api.context("serving the EC2 API")?;
        }
        _ = grace => tracing::warn!("connections still open after 5 s; stopping anyway"),
    }
    println!("Corral stopped.");
    Ok(())
}

/// Binds `addr`, behind TLS when the server has an identity.
async fn listen(
    addr: SocketAddr,
    tls: Option<&corral_tls::ServerIdentity>,
    what: &str,
) -> Result<corral_tls::Listen> {
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} to {addr}"))?;
    Ok(match tls {
        Some(id) => corral_tls::Listen::Tls(corral_tls::TlsListener::new(tcp, id.config.clone())?),
        None => corral_tls::Listen::Plain(tcp),
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
