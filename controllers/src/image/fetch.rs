//! Downloads an Image's `source.url` for a tenant without letting the URL
//! reach inside the host or its private networks (SSRF).
//!
//! The rules are [`ImportPolicy`]'s; here they are applied to what is
//! really connected to:
//! - a literal address is checked before the request;
//! - a name is resolved by [`GuardedResolver`], which hands the connector
//!   only addresses the policy allows (so a name that resolves to
//!   127.0.0.1, or rebinds to it between admission and fetch, connects to
//!   nothing);
//! - every redirect hop is checked the same way (at most
//!   [`MAX_REDIRECTS`]), and the peer address of the answer once more;
//! - no proxy from the environment is used (it would connect for us);
//! - the size is capped ([`ImportPolicy::max_bytes`], before reading when
//!   the server announces a length) and so is the time
//!   ([`ImportPolicy::fetch_timeout`]); `https://` uses rustls with the
//!   system's roots plus the operator's CA bundle.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral_store::blobs::{BlobInfo, BlobStore};
use corral_store::import::ImportPolicy;

/// Redirect hops followed before giving up.
pub const MAX_REDIRECTS: usize = 5;

/// Resolves names for the fetcher, dropping every address the policy
/// refuses; a name left with none fails, naming what it resolved to.
struct GuardedResolver {
    policy: Arc<ImportPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = Vec::new();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.address_refusal(a.ip()) {
                    None => true,
                    Some(why) => {
                        refused.push(format!("{} ({why})", a.ip()));
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = if refused.is_empty() {
                    format!("{host} resolves to no address")
                } else {
                    format!(
                        "{host} resolves only to addresses the server does not fetch from: {}",
                        refused.join(", ")
                    )
                };
                return Err(why.into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The HTTP client for tenant URLs.
fn client(policy: &Arc<ImportPolicy>) -> Result<reqwest::Client, String> {
    let hops = policy.clone();
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        match hops.check_parsed_url(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(e) => {
                let to = attempt.url().to_string();
                attempt.error(format!("redirected to {to}: {e}"))
            }
        }
    });
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(GuardedResolver {
            policy: policy.clone(),
        })
        .redirect(redirects)
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .timeout(policy.fetch_timeout)
        .user_agent(concat!("corral-image-import/", env!("CARGO_PKG_VERSION")));
    if let Some(bundle) = &policy.ca_bundle {
        let pem = std::fs::read(bundle)
            .map_err(|e| format!("reading the image CA bundle {}: {e}", bundle.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("the image CA bundle {}: {e}", bundle.display()))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| corral_runtime::error_chain(&e))
}

/// Downloads `url` into a blob, under `policy`.
pub async fn download(
    policy: &Arc<ImportPolicy>,
    url: &str,
    blobs: &BlobStore,
    progress: &(AtomicU64, AtomicU64),
) -> Result<BlobInfo, String> {
    policy
        .check_url(url)
        .map_err(|e| format!("spec.source.url: {e}"))?;
    let client = client(policy)?;
    let fail = |e: reqwest::Error| format!("GET {url}: {}", corral_runtime::error_chain(&e));
    let mut resp = client.get(url).send().await.map_err(fail)?;
    if let Some(peer) = resp.remote_addr() {
        policy
            .check_address(peer.ip())
            .map_err(|e| format!("GET {url}: connected to {e}"))?;
    }
    if !resp.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", resp.status()));
    }
    let max = policy.max_bytes;
    let too_big =
        || format!("GET {url}: the image is larger than the server's limit of {max} bytes");
    let announced = resp.content_length();
    if announced.is_some_and(|n| n > max) {
        return Err(too_big());
    }
    progress.1.store(announced.unwrap_or(0), Ordering::Relaxed);
    let mut w = blobs.writer().map_err(|e| e.to_string())?;
    while let Some(chunk) = resp.chunk().await.map_err(fail)? {
        if w.size() + chunk.len() as u64 > max {
            return Err(too_big());
        }
        w.write_all(&chunk).map_err(|e| e.to_string())?;
        progress.0.store(w.size(), Ordering::Relaxed);
    }
    w.finish(None).map_err(|e| e.to_string())
}
