//! The abusive clients of `corral bench soak --abuse`, run beside the
//! normal load to show that no client can exhaust the server (issue 17):
//! the normal clients' p99 stays within 2x of a clean run and the
//! server's RSS within the soak's bound.
//!
//! Every abuser is bounded in count and rate (the constants below) and
//! runs on one thread of its own, so it can take at most one core from
//! the server and the normal clients. Each kind connects from a loopback
//! address of its own (127.0.0.2 and up; the normal clients use
//! 127.0.0.1): abusers are other peers, and the server's per-peer limits
//! are what it has against them.
//!
//! - slow headers (slowloris): connections that send a request line and
//!   then a header line every [`DRIP`], never the blank line; reconnected
//!   whenever the server closes them (its header deadline is 15 s);
//! - slow bodies: complete headers announcing a body, then a byte every
//!   [`DRIP`] (unauthenticated and authenticated, native and EC2);
//! - oversized bodies: requests declaring 1 GiB, or 8 MiB, or streaming
//!   chunks past each limit (native body 4 MiB, console 256 KiB, EC2
//!   1 MiB); the abuser sends at most [`LARGE_SEND_CAP`] and stops at the
//!   answer, so it never holds a large body in memory;
//! - junk paths: unauthenticated requests with random methods, paths and
//!   queries, on both listeners;
//! - failing signatures: EC2 calls signed with a wrong secret or an
//!   unknown key.

mod report;
mod wire;

use report::Tally;
pub(crate) use report::{metrics_size, verdict, Normal, Report};
use wire::*;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::soak::Mix;

/// The slow-header peers; each opens [`SLOW_PER_PEER`] connections to each
/// listener: 400 in all.
const SLOW_PEERS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];
const SLOW_PER_PEER: usize = 100;
/// Slow-body connections of each kind.
const SLOW_BODIES: usize = 16;
const SLOW_BODY_PEER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// How often a slow client sends its next small piece.
const DRIP: Duration = Duration::from_secs(2);
const LARGE_PEER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
/// Oversized requests per second, of each kind, at most (one at a time).
const LARGE_PER_SEC: f64 = 2.0;
/// Body bytes one oversized request sends at most, whatever it declares.
const LARGE_SEND_CAP: u64 = 16 << 20;
const JUNK_PEER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// Junk requests per second in all, at most (half to each listener).
const JUNK_PER_SEC: f64 = 200.0;
const BAD_SIG_PEER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 7);
/// Badly signed EC2 calls per second, at most.
const BAD_SIG_PER_SEC: f64 = 50.0;
/// Longer than this without an answer, an oversized request is given up.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection closed sooner than this, unanswered, was refused at
/// accept (a connection cap).
const AT_ONCE: Duration = Duration::from_millis(100);

/// Which listener.
#[derive(Clone, Copy, PartialEq, Eq)]
enum To {
    Api,
    Ec2,
}

/// As whom.
#[derive(Clone, Copy)]
enum Who {
    Nobody,
    Member,
    Node,
}

/// Slow bodies: kind, listener, request line, credentials, length.
#[rustfmt::skip]
const SLOW_BODY_KINDS: [(&str, To, &str, Who, Option<u64>); 3] = [
    ("slow body -> api, no token", To::Api, "POST /v1/apply", Who::Nobody, Some(1 << 20)),
    ("slow body -> api, member", To::Api, "POST /v1/apply", Who::Member, Some(1 << 20)),
    ("slow body -> ec2, unsigned", To::Ec2, "POST /", Who::Nobody, Some(100 << 10)),
];

/// Oversized bodies: kind, listener, request line, credentials, declared
/// length (None: chunks until the answer).
#[rustfmt::skip]
const LARGE_KINDS: [(&str, To, &str, Who, Option<u64>); 6] = [
    ("1 GiB declared -> api, no token", To::Api, "POST /v1/apply", Who::Nobody, Some(1 << 30)),
    ("8 MiB declared -> api, member", To::Api, "POST /v1/apply", Who::Member, Some(8 << 20)),
    ("chunked -> api, member", To::Api, "POST /v1/apply", Who::Member, None),
    ("chunked -> console, node", To::Api, "PUT /v1/projects/soak/instances/abuser-console/console", Who::Node, None),
    ("1 GiB declared -> ec2, unsigned", To::Ec2, "POST /", Who::Nobody, Some(1 << 30)),
    ("chunked -> ec2, unsigned", To::Ec2, "POST /", Who::Nobody, None),
];

/// What the abusers need: the listeners, and the credentials of an
/// abusive tenant and of a node with an instance whose console it may
/// write.
pub(super) struct Abusers {
    api: SocketAddr,
    ec2: SocketAddr,
    ec2_url: String,
    member: String,
    access_key: String,
    node: String,
}

/// A native API call as `token`: the JSON answer of a 2xx, else an error.
async fn call(
    http: &reqwest::Client,
    token: &str,
    method: reqwest::Method,
    url: String,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let mut req = http.request(method, &url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await?;
    let code = r.status();
    let text = r.text().await?;
    anyhow::ensure!(code.is_success(), "{url}: {code} {text}");
    Ok(serde_json::from_str(&text)?)
}

fn socket_addr(url: &str) -> Result<SocketAddr> {
    let Some(hostport) = url.strip_prefix("http://") else {
        bail!("the abusers speak plain HTTP; the soak's server is at {url}");
    };
    hostport
        .parse()
        .with_context(|| format!("{url} is not http://IP:PORT"))
}

/// Makes the abusive tenant (a member of project `soak`), its instance,
/// and a node user for the node that instance lands on.
pub(super) async fn prepare(
    http: &reqwest::Client,
    api: &str,
    ec2: &str,
    admin: &str,
) -> Result<Abusers> {
    let post = reqwest::Method::POST;
    let user = call(
        http,
        admin,
        post.clone(),
        format!("{api}/v1/users"),
        Some(serde_json::json!({"name": "abuser", "role": "member", "project": "soak"})),
    )
    .await?;
    let member = user["token"].as_str().context("token")?.to_string();
    let access_key = user["accessKeyId"].as_str().context("key")?.to_string();
    let instance = format!("{api}/v1/projects/soak/instances/abuser-console");
    let spec = serde_json::json!({"instanceType": "m1.tiny", "image": "tiny", "nics": [{"network": "default"}]});
    let body = serde_json::json!({"metadata": {"name": "abuser-console"}, "spec": spec});
    let url = format!("{api}/v1/projects/soak/instances");
    call(http, &member, post.clone(), url, Some(body)).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let node = loop {
        let i = call(http, &member, reqwest::Method::GET, instance.clone(), None).await?;
        if let Some(n) = i["status"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            break n.to_string();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the abusers' instance was not scheduled within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let body = serde_json::json!({"name": "abuser-node", "role": "node", "nodeName": node});
    let issued = call(http, admin, post, format!("{api}/v1/users"), Some(body)).await?;
    Ok(Abusers {
        api: socket_addr(api)?,
        ec2: socket_addr(ec2)?,
        ec2_url: ec2.to_string(),
        member,
        access_key,
        node: issued["token"].as_str().context("node token")?.to_string(),
    })
}

impl Abusers {
    fn addr(&self, to: To) -> SocketAddr {
        match to {
            To::Api => self.api,
            To::Ec2 => self.ec2,
        }
    }

    fn token(&self, who: Who) -> Option<&str> {
        match who {
            Who::Nobody => None,
            Who::Member => Some(&self.member),
            Who::Node => Some(&self.node),
        }
    }
}

/// The abusers at work on their own thread.
pub(super) struct Running(std::thread::JoinHandle<Result<Report>>);

/// Starts every abuser; they stop at `until`.
pub(super) fn start(abusers: Abusers, until: Instant) -> Running {
    Running(std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let cpu = crate::soak::cpu_secs("/proc/thread-self/stat");
        // Local tasks: one thread, and an exchange's byte count in a Cell.
        let (tally, metrics) = tokio::task::LocalSet::new().block_on(&rt, run(abusers, until))?;
        let kinds = std::mem::take(&mut *tally.0.lock().expect("tally"));
        Ok(Report {
            kinds,
            cpu: crate::soak::cpu_secs("/proc/thread-self/stat") - cpu,
            metrics,
        })
    }))
}

impl Running {
    /// Waits for the abusers to stop; answers what they saw.
    pub(super) async fn finish(self) -> Result<Report> {
        tokio::task::spawn_blocking(move || self.0.join())
            .await?
            .map_err(|_| anyhow!("an abuser panicked"))?
    }
}

/// Runs every abuser until `until`; answers what they saw and `/metrics`
/// (bytes, series) at the start, halfway and at the end.
async fn run(a: Abusers, until: Instant) -> Result<(Tally, [(usize, usize); 3])> {
    let (http, api) = (reqwest::Client::new(), format!("http://{}", a.api));
    let metrics_start = metrics_size(&http, &api).await?;
    let halfway = {
        let (http, api) = (http.clone(), api.clone());
        let at = Instant::now() + until.saturating_duration_since(Instant::now()) / 2;
        tokio::task::spawn_local(async move {
            tokio::time::sleep_until(at.into()).await;
            metrics_size(&http, &api).await
        })
    };
    let report = Tally::default();
    let mut tasks = tokio::task::JoinSet::new();
    let rep = || report.clone();

    let mut raw = |kind, src, dst, plan, per_sec| {
        tasks.spawn_local(keep_sending(rep(), kind, src, dst, plan, per_sec, until));
    };
    for src in SLOW_PEERS {
        for (kind, to) in [
            ("slow headers -> api", To::Api),
            ("slow headers -> ec2", To::Ec2),
        ] {
            for _ in 0..SLOW_PER_PEER {
                raw(kind, src, a.addr(to), Plan::slow_head(a.addr(to)), None);
            }
        }
    }
    for (kind, to, line, who, len) in SLOW_BODY_KINDS {
        for _ in 0..SLOW_BODIES {
            let plan = Plan::body(to, line, a.addr(to), a.token(who), len, true);
            raw(kind, SLOW_BODY_PEER, a.addr(to), plan, None);
        }
    }
    for (kind, to, line, who, declared) in LARGE_KINDS {
        let plan = Plan::body(to, line, a.addr(to), a.token(who), declared, false);
        raw(kind, LARGE_PEER, a.addr(to), plan, Some(LARGE_PER_SEC));
    }

    let junk_http = reqwest::Client::builder()
        .local_address(IpAddr::V4(JUNK_PEER))
        .timeout(Duration::from_secs(10))
        .build()?;
    for (i, (kind, base)) in [
        ("junk paths -> api", format!("http://{}", a.api)),
        ("junk paths -> ec2", format!("http://{}", a.ec2)),
    ]
    .into_iter()
    .enumerate()
    {
        let (http, report) = (junk_http.clone(), rep());
        let mut rng = Mix::new(0xbad + i as u64);
        tasks.spawn_local(async move {
            paced(JUNK_PER_SEC / 2.0, until, || {
                let (method, path) = junk_request(&mut rng);
                let req = http.request(method, format!("{base}{path}"));
                let report = report.clone();
                async move {
                    let outcome = match req.send().await {
                        Ok(r) => {
                            let code = r.status().as_u16();
                            let _ = r.bytes().await;
                            format!("answered {code}")
                        }
                        Err(e) if e.is_timeout() => "timed out".into(),
                        Err(_) => "failed".into(),
                    };
                    report.record(kind, outcome);
                }
            })
            .await
        });
    }

    let sig_http = reqwest::Client::builder()
        .local_address(IpAddr::V4(BAD_SIG_PEER))
        .timeout(Duration::from_secs(10))
        .build()?;
    let signer = |key: &str| crate::ec2::Ec2Client {
        http: sig_http.clone(),
        url: a.ec2_url.clone(),
        host: a.ec2.to_string(),
        key: key.to_string(),
        secret: "not-the-secret".into(),
    };
    let clients = [signer(&a.access_key), signer("AKIAUNKNOWNKEY000000")];
    let report_sig = rep();
    tasks.spawn_local(async move {
        let mut n = 0usize;
        paced(BAD_SIG_PER_SEC, until, || {
            n += 1;
            let c = clients[n % 2].clone();
            let report = report_sig.clone();
            async move {
                let outcome = match c.send("DescribeInstances", &[]).await {
                    Ok((status, body)) => {
                        let xml = String::from_utf8_lossy(body.as_ref()).into_owned();
                        let code = crate::ec2::all_of(&xml, "Code")
                            .first()
                            .copied()
                            .unwrap_or("")
                            .to_string();
                        format!("{} {code}", status.as_u16())
                    }
                    Err(_) => "failed".into(),
                };
                report.record("bad signatures -> ec2", outcome);
            }
        })
        .await
    });

    while tasks.join_next().await.is_some() {}
    let metrics = [
        metrics_start,
        halfway.await??,
        metrics_size(&http, &api).await?,
    ];
    Ok((report, metrics))
}
