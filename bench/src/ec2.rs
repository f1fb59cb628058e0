//! `corral bench ec2`: the EC2 façade under load, next to the native API
//! doing the same work in the same run.
//!
//! One process holds a whole Corral — store, native API, controllers and
//! `--hosts` node agents on libvirt's `test:///default` driver (simulated
//! hosts) — plus the EC2 façade on its own loopback port. Requests are
//! form POSTs signed with SigV4 exactly as awscli signs them (the façade's
//! own signing code, `sigv4::sign_form_post`), so each one pays the real
//! signature check.
//!
//! Cases, each at `--clients` concurrent clients:
//! - RunInstances (one instance per call) vs native API creates of the
//!   same instances;
//! - DescribeInstances (no filter: the whole project in one answer) with
//!   each of `--present` instances in the project, vs the native API's
//!   list of the same project;
//! - TerminateInstances (one per call) vs native API deletes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use corral_api_types::auth::{Role, UserSpec};
use corral_api_types::{Image, Resource};
use corral_controllers::ControllerOptions;
use corral_test_support::{Backend, Cluster};

use crate::figures::{header, measure, Figures};

pub struct Ec2BenchOptions {
    /// Simulated hosts.
    pub hosts: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// RunInstances (and native creates, and terminates) per case.
    pub runs: usize,
    /// Instance counts present for the DescribeInstances cases.
    pub present: Vec<usize>,
    /// DescribeInstances (and native lists) per case.
    pub describes: usize,
    /// etcd instead of the embedded store.
    pub etcd: bool,
}

/// A signing EC2 client for one access key.
#[derive(Clone)]
pub(super) struct Ec2Client {
    pub(super) http: reqwest::Client,
    pub(super) url: String,
    pub(super) host: String,
    pub(super) key: String,
    pub(super) secret: String,
}

impl Ec2Client {
    /// Calls `action`; returns the XML body of a 200, else an error with
    /// the EC2 error text.
    async fn call(&self, action: &str, params: &[(&str, &str)]) -> Result<impl AsRef<[u8]>> {
        let (status, bytes) = self.send(action, params).await?;
        anyhow::ensure!(
            status.is_success(),
            "{action}: {status} {}",
            String::from_utf8_lossy(bytes.as_ref())
        );
        Ok(bytes)
    }

    /// Sends `action` signed; answers the HTTP status and body, whatever
    /// they are.
    pub(super) async fn send(
        &self,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<(reqwest::StatusCode, impl AsRef<[u8]>)> {
        let resp = self.signed(action, params).send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        Ok((status, bytes))
    }

    /// Calls `action` and reads the answer as it arrives without keeping
    /// it (the timed loop's client should cost little next to the server
    /// on the same cores): answers its length, after checking it is a 200
    /// that ends as the action's complete response document.
    async fn call_streamed(&self, action: &str, params: &[(&str, &str)]) -> Result<usize> {
        let mut resp = self.signed(action, params).send().await?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            anyhow::bail!("{action}: {status} {text}");
        }
        let end = format!("</{action}Response>");
        let (mut len, mut tail) = (0, Vec::with_capacity(2 * end.len()));
        while let Some(chunk) = resp.chunk().await? {
            len += chunk.len();
            tail.extend_from_slice(&chunk[chunk.len().saturating_sub(end.len())..]);
            let extra = tail.len().saturating_sub(end.len());
            tail.drain(..extra);
        }
        anyhow::ensure!(
            tail == end.as_bytes(),
            "{action}: the answer ({len} bytes) does not end with {end}"
        );
        Ok(len)
    }

    /// A form POST of `action`, signed with SigV4 as awscli signs it.
    fn signed(&self, action: &str, params: &[(&str, &str)]) -> reqwest::RequestBuilder {
        let mut body = format!("Action={action}&Version=2016-11-15");
        for (k, v) in params {
            body.push('&');
            body.push_str(&corral_ec2_api::auth::aws_encode(k));
            body.push('=');
            body.push_str(&corral_ec2_api::auth::aws_encode(v));
        }
        let (auth, date) = corral_ec2_api::auth::sigv4::sign_form_post(
            &self.key,
            &self.secret,
            "corral-1",
            &self.host,
            &body,
            chrono::Utc::now(),
        );
        self.http
            .post(&self.url)
            .header("authorization", auth)
            .header("x-amz-date", date)
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(body)
    }
}

/// Text between `<tag>` and `</tag>`, every occurrence.
pub(super) fn all_of<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

fn row(f: &Figures) {
    println!("{}", f.row());
}

fn native_instance(name: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name},
        "spec": {"instanceType": "m1.tiny", "image": "tiny", "nics": [{"network": "default"}]}
    })
}

/// A project with the default network, the image `tiny` and an EC2 user;
/// returns the EC2 client and the image's `ami-` id.
async fn project(
    cluster: &Cluster,
    name: &str,
    ec2_url: &str,
    host: &str,
    clients: usize,
) -> Result<(Ec2Client, String)> {
    for (path, body) in [
        (
            "/v1/projects".to_string(),
            serde_json::json!({"metadata": {"name": name}}),
        ),
        (
            format!("/v1/projects/{name}/networks"),
            serde_json::json!({"metadata": {"name": "default"}, "spec": {"cidr": "172.31.0.0/16", "mode": "isolated"}}),
        ),
        (
            format!("/v1/projects/{name}/images"),
            serde_json::json!({"metadata": {"name": "tiny"}, "spec": {"source": {"upload": true}, "format": "raw"}}),
        ),
    ] {
        let (code, b) = cluster.call(reqwest::Method::POST, &path, Some(body)).await;
        anyhow::ensure!(code == 201, "{path}: {code} {b}");
    }
    let creds = corral_apiserver::auth::create_user(
        &cluster.store,
        &format!("ec2-{name}"),
        UserSpec {
            role: Role::Member,
            project: name.to_string(),
            ..Default::default()
        },
    )
    .await?;
    let img: Image = cluster
        .store
        .get(name, "tiny")
        .await?
        .context("image tiny")?;
    let ami = corral_api_types::ec2::image_id(img.spec.image_type, &img.meta().uid);
    let client = Ec2Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(clients)
            .build()?,
        url: ec2_url.to_string(),
        host: host.to_string(),
        key: creds.access_key_id,
        secret: creds.secret_access_key,
    };
    Ok((client, ami))
}

pub async fn ec2(options: Ec2BenchOptions) -> Result<()> {
    let backend = if options.etcd { "etcd" } else { "embedded" };
    println!(
        "corral bench ec2: {} simulated hosts, {} clients, {} runs, DescribeInstances with {:?} present, {backend} store",
        options.hosts, options.clients, options.runs, options.present
    );
    let mut cluster = Cluster::start(
        if options.etcd {
            Backend::Etcd
        } else {
            Backend::Embedded
        },
        ControllerOptions {
            concurrency: 32,
            ..Default::default()
        },
    )
    .await;
    cluster.agent_options.heartbeat = Duration::from_secs(5);
    cluster.agent_options.resync = Duration::from_secs(120);
    cluster.agent_options.concurrency = 4;
    for n in 0..options.hosts {
        cluster.add_host(&format!("sim-{n:03}")).await;
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let ec2_url = format!("http://{addr}/");
    let host = addr.to_string();
    tokio::spawn(corral_ec2_api::serve(
        corral_ec2_api::Ec2State::new(
            cluster.store.clone(),
            corral_ec2_api::Ec2Config {
                // The façade's throughput is measured, not its per-key
                // request limit (200/s by default).
                rate: corral_api_types::rate::RateLimit {
                    burst: u32::MAX,
                    per_second: 1e9,
                },
                ..Default::default()
            },
        ),
        listener,
        std::future::pending(),
    ));

    let c = options.clients;
    let mut figures: Vec<(Figures, Figures)> = Vec::new();

    // 1. Creates: RunInstances next to native creates.
    let (ec2, ami) = project(&cluster, "run", &ec2_url, &host, c).await?;
    let ids: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let (cl, a, out) = (ec2.clone(), ami.clone(), ids.clone());
    let run = measure("EC2 RunInstances", c, options.runs, move |_, _| {
        let (cl, a, out) = (cl.clone(), a.clone(), out.clone());
        async move {
            let xml = cl
                .call(
                    "RunInstances",
                    &[
                        ("ImageId", &a),
                        ("InstanceType", "m1.tiny"),
                        ("MinCount", "1"),
                        ("MaxCount", "1"),
                    ],
                )
                .await?;
            let xml = String::from_utf8_lossy(xml.as_ref());
            let id = all_of(&xml, "instanceId")
                .first()
                .context("no instanceId")?
                .to_string();
            out.lock().expect("ids").push(id);
            Ok(())
        }
    })
    .await?;
    let (http, base, token) = (
        cluster.http.clone(),
        cluster.base.clone(),
        cluster.admin.clone(),
    );
    let (h, b, t) = (http.clone(), base.clone(), token.clone());
    let create = measure("native create", c, options.runs, move |w, i| {
        let (h, b, t) = (h.clone(), b.clone(), t.clone());
        async move {
            let resp = h
                .post(format!("{b}/v1/projects/run/instances"))
                .bearer_auth(&t)
                .json(&native_instance(&format!("vm-{w}-{i}")))
                .send()
                .await?;
            anyhow::ensure!(resp.status().as_u16() == 201, "create: {}", resp.status());
            Ok(())
        }
    })
    .await?;
    figures.push((run, create));

    // 2. Reads with N instances present (a project per size).
    for &n in &options.present {
        let name = format!("list{n}");
        let (ec2, _) = project(&cluster, &name, &ec2_url, &host, c).await?;
        let (h, b, t, p) = (http.clone(), base.clone(), token.clone(), name.clone());
        // Exactly n: each filler makes its share, the last ones fewer.
        let fillers = 32.min(n.max(1));
        let per = n.div_ceil(fillers);
        measure("(filling)", fillers, n, move |w, i| {
            let (h, b, t, p) = (h.clone(), b.clone(), t.clone(), p.clone());
            async move {
                if w * per + i >= n {
                    return Ok(());
                }
                let resp = h
                    .post(format!("{b}/v1/projects/{p}/instances"))
                    .bearer_auth(&t)
                    .json(&native_instance(&format!("vm-{w}-{i}")))
                    .send()
                    .await?;
                anyhow::ensure!(resp.status().as_u16() == 201, "fill: {}", resp.status());
                Ok(())
            }
        })
        .await?;
        // Let the controllers settle (placement, addresses), so reads are
        // measured on a steady project as a user would see it.
        settle(&cluster, &name, n).await;
        // Untimed: the whole answer parsed, every instance in it. The
        // timed calls then check each answer is a complete document of
        // about that size (nothing is added or removed while they run;
        // a status written meanwhile may change a few bytes).
        let answer = ec2.call("DescribeInstances", &[]).await?;
        let got = all_of(&String::from_utf8_lossy(answer.as_ref()), "instanceId").len();
        anyhow::ensure!(got == n, "DescribeInstances showed {got} of {n}");
        let full = answer.as_ref().len();
        println!("  DescribeInstances with {n} present: {got} instances, {full} bytes");
        let cl = ec2.clone();
        let describe = measure(
            &format!("EC2 DescribeInstances {n}"),
            c,
            options.describes,
            move |_, _| {
                let cl = cl.clone();
                async move {
                    let len = cl.call_streamed("DescribeInstances", &[]).await?;
                    anyhow::ensure!(len > full * 9 / 10, "short answer: {len} of {full} bytes");
                    Ok(())
                }
            },
        )
        .await?;
        let (h, b, t, p) = (http.clone(), base.clone(), token.clone(), name.clone());
        let list = measure(
            &format!("native list {n}"),
            c,
            options.describes,
            move |_, _| {
                let (h, b, t, p) = (h.clone(), b.clone(), t.clone(), p.clone());
                async move {
                    let resp = h
                        .get(format!("{b}/v1/projects/{p}/instances"))
                        .bearer_auth(&t)
                        .send()
                        .await?;
                    anyhow::ensure!(resp.status().is_success(), "list: {}", resp.status());
                    resp.bytes().await?;
                    Ok(())
                }
            },
        )
        .await?;
        figures.push((describe, list));
    }

    // 3. Terminates next to native deletes of the native creates.
    let ids = ids.lock().expect("ids").clone();
    let ids = Arc::new(ids);
    let (cl, all) = (ec2.clone(), ids.clone());
    let per = options.runs.div_ceil(c);
    let terminate = measure("EC2 TerminateInstances", c, ids.len(), move |w, i| {
        let (cl, all) = (cl.clone(), all.clone());
        async move {
            if let Some(id) = all.get(w * per + i) {
                cl.call("TerminateInstances", &[("InstanceId.1", id)])
                    .await?;
            }
            Ok(())
        }
    })
    .await?;
    let (h, b, t) = (http.clone(), base.clone(), token.clone());
    let delete = measure("native delete", c, options.runs, move |w, i| {
        let (h, b, t) = (h.clone(), b.clone(), t.clone());
        async move {
            let resp = h
                .delete(format!("{b}/v1/projects/run/instances/vm-{w}-{i}"))
                .bearer_auth(&t)
                .send()
                .await?;
            anyhow::ensure!(resp.status().is_success(), "delete: {}", resp.status());
            Ok(())
        }
    })
    .await?;
    figures.push((terminate, delete));

    println!();
    println!("{}", header());
    for (e, n) in &figures {
        row(e);
        row(n);
    }
    println!();
    for (e, n) in &figures {
        println!(
            "  {:<28} {:>8.0}/s vs native {:>8.0}/s: ratio {:.2}",
            e.name,
            e.per_sec,
            n.per_sec,
            e.per_sec / n.per_sec
        );
    }
    for (e, _) in &figures {
        let goal = match e.name.strip_prefix("EC2 DescribeInstances ") {
            Some("100") => Some(1000.0),
            Some("1000") => Some(100.0),
            _ => None,
        };
        if let (Some(rate), true) = (goal, c == 10) {
            let met = e.per_sec >= rate && e.p99 < Duration::from_millis(50);
            println!(
                "  goal {}: >= {rate:.0} req/s and p99 < 50 ms at 10 clients: {}",
                e.name,
                if met { "met" } else { "NOT met" }
            );
        }
    }
    Ok(())
}

/// Waits (at most 60 s) until the project's instances are placed.
async fn settle(cluster: &Cluster, project: &str, n: usize) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let placed = cluster
            .store
            .list::<corral_api_types::Instance>(Some(project), Default::default())
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|i| {
                        i.status
                            .as_ref()
                            .is_some_and(|s| s.phase == corral_api_types::InstancePhase::Running)
                    })
                    .count()
            })
            .unwrap_or(0);
        if placed >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("  ({project}: not all Running after 60 s; measuring anyway)");
}

#[cfg(test)]
mod tests {
    use super::all_of;

    #[test]
    fn xml_fields() {
        let x = "<a><instanceId>i-1</instanceId><x/><instanceId>i-2</instanceId></a>";
        assert_eq!(all_of(x, "instanceId"), vec!["i-1", "i-2"]);
        assert!(all_of("<instanceId>open", "instanceId").is_empty());
    }
}
