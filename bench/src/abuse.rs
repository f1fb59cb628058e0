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

use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::figures::percentile;
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

/// What one kind of abuser saw.
#[derive(Default)]
struct KindReport {
    outcomes: BTreeMap<String, usize>,
    /// How long the server kept each connection it closed.
    held: Vec<Duration>,
    /// Body bytes sent before each answer or close.
    sent: Vec<u64>,
}

/// What the abusers see, by kind, as they go.
#[derive(Default, Clone)]
struct Tally(Arc<Mutex<BTreeMap<&'static str, KindReport>>>);

/// What the abusers saw, by kind, the CPU time they took, and `/metrics`
/// (bytes, series) when they started, halfway and at the end.
pub(super) struct Report {
    kinds: BTreeMap<&'static str, KindReport>,
    cpu: f64,
    metrics: [(usize, usize); 3],
}

impl Tally {
    fn record(&self, kind: &'static str, outcome: String) {
        let mut r = self.0.lock().expect("report");
        *r.entry(kind)
            .or_default()
            .outcomes
            .entry(outcome)
            .or_default() += 1;
    }

    fn record_exchange(&self, kind: &'static str, e: &Exchange) {
        let outcome = match (&e.failed, e.answer) {
            (Some(why), _) => why.clone(),
            (None, Some(code)) => format!("answered {code}"),
            (None, None) if !e.closed => "open at the end".into(),
            (None, None) if e.held < AT_ONCE => "closed at once".into(),
            (None, None) => "closed by the server".into(),
        };
        let mut r = self.0.lock().expect("report");
        let k = r.entry(kind).or_default();
        *k.outcomes.entry(outcome).or_default() += 1;
        if e.failed.is_none() && e.answer.is_none() && e.closed {
            k.held.push(e.held);
        }
        if e.sent > 0 {
            k.sent.push(e.sent);
        }
    }
}

impl Report {
    pub(super) fn print(&self) {
        println!(
            "  abusers (127.0.0.2-7, one thread, until the run's end; they used {:.1} s of CPU):",
            self.cpu
        );
        for (kind, k) in &self.kinds {
            let tries: usize = k.outcomes.values().sum();
            let outcomes: Vec<String> = k
                .outcomes
                .iter()
                .map(|(o, n)| format!("{o} x{n}"))
                .collect();
            let mut line = format!("    {kind:<34} {tries:>6}: {}", outcomes.join(", "));
            if !k.held.is_empty() {
                let mut h = k.held.clone();
                h.sort_unstable();
                line += &format!(
                    "; closed after p50 {:.1} s, max {:.1} s",
                    percentile(&h, 0.5).as_secs_f64(),
                    h[h.len() - 1].as_secs_f64()
                );
            }
            if !k.sent.is_empty() {
                let mut s = k.sent.clone();
                s.sort_unstable();
                line += &format!(
                    "; body written p50 {}, max {}",
                    bytes(s[s.len() / 2]),
                    bytes(s[s.len() - 1])
                );
            }
            println!("{line}");
        }
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..0x10_0000 => format!("{} KiB", n >> 10),
        _ => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
    }
}

/// One raw HTTP/1.1 request, as the abuser sends it.
struct Plan {
    /// The request line and header lines, without the blank line.
    head: String,
    /// Whether the blank line ending the headers is sent (a slowloris
    /// never sends it).
    end_head: bool,
    /// Body bytes to send at most.
    body: u64,
    chunked: bool,
    /// Send one small piece every `DRIP` instead of as fast as it goes.
    slow: bool,
}

/// How one request went.
#[derive(Default)]
struct Exchange {
    /// The status the server answered with.
    answer: Option<u16>,
    /// The server closed the connection (with or without an answer).
    closed: bool,
    sent: u64,
    held: Duration,
    failed: Option<String>,
}

async fn connect(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // A small send buffer: what was written is then close to what the
    // server took (loopback buffers otherwise hold megabytes).
    socket.set_send_buffer_size(64 << 10)?;
    socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(dst))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

/// The status code of an HTTP/1 response's first line, once it is in.
fn status_of(got: &[u8]) -> Option<u16> {
    let line = got
        .split(|b| *b == b'\n')
        .next()
        .filter(|_| got.contains(&b'\n'))?;
    std::str::from_utf8(line)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// Sends `plan` from `src` to `dst` until the server answers or closes,
/// `until`, or (for a request that is not slow) [`EXCHANGE_TIMEOUT`].
async fn exchange(src: Ipv4Addr, dst: SocketAddr, plan: &Plan, until: Instant) -> Exchange {
    let started = Instant::now();
    let stream = match connect(src, dst).await {
        Ok(s) => s,
        Err(e) => {
            return Exchange {
                failed: Some(format!("connect failed ({})", e.kind())),
                ..Exchange::default()
            }
        }
    };
    let (mut rd, mut wr) = stream.into_split();
    let read = async move {
        let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return status_of(&got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if let Some(code) = status_of(&got) {
                return Some(code);
            }
            if got.len() > 64 << 10 {
                return None;
            }
        }
    };
    tokio::pin!(read);
    let sent = Cell::new(0u64);
    let write = async {
        wr.write_all(plan.head.as_bytes()).await?;
        if plan.end_head {
            wr.write_all(b"\r\n").await?;
        }
        let filler = vec![b'x'; 64 << 10];
        let mut drips = 0u64;
        while sent.get() < plan.body || (plan.slow && !plan.end_head) {
            if plan.slow {
                tokio::time::sleep(DRIP).await;
            }
            if !plan.end_head {
                drips += 1;
                wr.write_all(format!("X-Drip-{drips}: x\r\n").as_bytes())
                    .await?;
                continue;
            }
            let n = if plan.slow { 1 } else { 64 << 10 };
            let n = n.min(plan.body - sent.get()) as usize;
            if plan.chunked {
                wr.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            }
            wr.write_all(&filler[..n]).await?;
            if plan.chunked {
                wr.write_all(b"\r\n").await?;
            }
            sent.set(sent.get() + n as u64);
        }
        if plan.chunked {
            wr.write_all(b"0\r\n\r\n").await?;
        }
        // All sent: wait for the answer.
        std::future::pending::<()>().await;
        Ok::<(), std::io::Error>(())
    };
    let end = if plan.slow {
        until
    } else {
        until.min(started + EXCHANGE_TIMEOUT)
    };
    let (answer, closed) = tokio::select! {
        a = &mut read => (a, true),
        _ = write => {
            // The server stopped reading: its answer may be in already.
            match tokio::time::timeout(Duration::from_secs(1), &mut read).await {
                Ok(a) => (a, true),
                Err(_) => (None, true),
            }
        }
        _ = tokio::time::sleep_until(end.into()) => (None, false),
    };
    Exchange {
        answer,
        closed,
        sent: sent.get(),
        held: started.elapsed(),
        failed: None,
    }
}

/// Sends `plan` over and over, a new connection each time, until `until`.
async fn keep_sending(
    report: Tally,
    kind: &'static str,
    src: Ipv4Addr,
    dst: SocketAddr,
    plan: Plan,
    per_sec: Option<f64>,
    until: Instant,
) {
    while Instant::now() < until {
        let t0 = Instant::now();
        let e = exchange(src, dst, &plan, until).await;
        report.record_exchange(kind, &e);
        // A paced kind keeps its rate; a slow one reconnects at once,
        // unless it was refused at once.
        let pause = match per_sec {
            Some(r) => Duration::from_secs_f64(1.0 / r).saturating_sub(t0.elapsed()),
            None if e.held < AT_ONCE => Duration::from_millis(250),
            None => Duration::ZERO,
        };
        tokio::time::sleep(pause).await;
    }
}

impl Plan {
    /// A request line and a header line every [`DRIP`], never ending.
    fn slow_head(dst: SocketAddr) -> Plan {
        Plan {
            head: format!("GET /v1/projects HTTP/1.1\r\nHost: {dst}\r\n"),
            end_head: false,
            body: 0,
            chunked: false,
            slow: true,
        }
    }

    /// `line` ("METHOD PATH") with a body of `declared` bytes (or chunked,
    /// without), as `token`: a byte every [`DRIP`] if `slow`, else as fast
    /// as it goes, up to [`LARGE_SEND_CAP`].
    fn body(
        to: To,
        line: &str,
        dst: SocketAddr,
        token: Option<&str>,
        declared: Option<u64>,
        slow: bool,
    ) -> Plan {
        let mut head = format!("{line} HTTP/1.1\r\nHost: {dst}\r\n");
        head += match declared {
            Some(n) => format!("Content-Length: {n}\r\n"),
            None => "Transfer-Encoding: chunked\r\n".into(),
        }
        .as_str();
        head += if to == To::Ec2 {
            "Content-Type: application/x-www-form-urlencoded\r\n"
        } else {
            "Content-Type: application/json\r\n"
        };
        if let Some(t) = token {
            head += &format!("Authorization: Bearer {t}\r\n");
        }
        Plan {
            head,
            end_head: true,
            body: declared.unwrap_or(u64::MAX).min(LARGE_SEND_CAP),
            chunked: declared.is_none(),
            slow,
        }
    }
}

/// Calls `op` at `per_sec` until `until` (one at a time).
async fn paced<F, Fut>(per_sec: f64, until: Instant, mut op: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until {
        tick.tick().await;
        if Instant::now() >= until {
            break;
        }
        op().await;
    }
}

/// A random path, method and query, bounded in length.
fn junk_request(rng: &mut Mix) -> (reqwest::Method, String) {
    const METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    const WORDS: [&str; 8] = [
        "v1",
        "projects",
        "instances",
        "status",
        "..",
        "%ff%00",
        "metrics",
        "x",
    ];
    let method =
        reqwest::Method::from_bytes(METHODS[rng.below(6) as usize].as_bytes()).expect("a method");
    let mut path = String::new();
    let depth = 1 + rng.below(8);
    for _ in 0..depth {
        path.push('/');
        match rng.below(3) {
            0 => path.push_str(WORDS[rng.below(8) as usize]),
            1 => path.push_str(&format!("{:x}", rng.below(u64::MAX))),
            _ => path.push_str(&"a".repeat(1 + rng.below(2048) as usize)),
        }
    }
    if rng.below(2) == 0 {
        path.push_str(&format!(
            "?watch={}&limit=-{}&{:x}=1",
            rng.below(3),
            rng.below(9),
            rng.below(1 << 40)
        ));
    }
    (method, path)
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

/// The size of the server's `/metrics` page: bytes and series (sample
/// lines). Junk paths must not add series: every label is from a fixed
/// set.
pub(super) async fn metrics_size(http: &reqwest::Client, api: &str) -> Result<(usize, usize)> {
    let text = http
        .get(format!("{api}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let series = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    Ok((text.len(), series))
}

/// The normal clients' figures in one run.
pub(super) struct Normal {
    /// p50 and p99 by operation kind.
    pub(super) latency: BTreeMap<&'static str, [Duration; 2]>,
    pub(super) per_sec: f64,
}

/// Prints the normal clients' figures clean and beside the abusers, the
/// RSS against `bound` and the `/metrics` sizes; answers whether the
/// target held (every p99 within 2x clean, the RSS peak within the bound).
pub(super) fn verdict(
    [clean, abused]: [&Normal; 2],
    // The clean run's peak RSS and the abused run's, MiB.
    [clean_peak, rss_peak]: [u64; 2],
    bound: u64,
    clean_metrics: (usize, usize),
    report: &Report,
) -> bool {
    println!(
        "  normal clients, clean and beside the abusers: {:.0} and {:.0} ops/s (closed loop); target: p99 at most 2x clean",
        clean.per_sec, abused.per_sec
    );
    println!(
        "    {:<16} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7}",
        "op", "p50 ms", "abused", "ratio", "p99 ms", "abused", "ratio"
    );
    let mut p99_held = true;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (op, [p50, p99]) in &clean.latency {
        let Some([a50, a99]) = abused.latency.get(op) else {
            continue;
        };
        let ratio = ms(*a99) / ms(*p99).max(1e-3);
        p99_held &= ratio <= 2.0;
        println!(
            "    {op:<16} {:>9.1} {:>9.1} {:>7.2} {:>9.1} {:>9.1} {ratio:>7.2}{}",
            ms(*p50),
            ms(*a50),
            ms(*a50) / ms(*p50).max(1e-3),
            ms(*p99),
            ms(*a99),
            if ratio > 2.0 { "  p99 over 2x" } else { "" }
        );
    }
    let rss_held = rss_peak <= bound;
    println!(
        "  server RSS beside the abusers: peak {rss_peak} MiB (the clean run's {clean_peak}), bound {bound} MiB (from the clean run's warm RSS): {}",
        if rss_held { "within" } else { "OVER" }
    );
    let (m0, [m1, m2, m3]) = (clean_metrics, report.metrics);
    println!(
        "  /metrics bytes (series): {} ({}) at the clean run's end; beside the abusers {} ({}) at the start, {} ({}) halfway, {} ({}) at the end",
        m0.0, m0.1, m1.0, m1.1, m2.0, m2.1, m3.0, m3.1
    );
    let held = p99_held && rss_held;
    println!(
        "  target (every p99 within 2x clean, RSS peak within the bound): {}",
        if held { "held" } else { "NOT held" }
    );
    held
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_read_once_its_line_is_complete() {
        assert_eq!(status_of(b""), None);
        assert_eq!(status_of(b"HTTP/1.1 413 Payload"), None);
        assert_eq!(status_of(b"HTTP/1.1 413 Payload Too Large\r\n"), Some(413));
        assert_eq!(status_of(b"garbage\r\n"), None);
    }

    #[test]
    fn a_body_plan_declares_its_length_or_chunks_and_caps_what_it_sends() {
        let dst: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let p = Plan::body(
            To::Api,
            "POST /v1/apply",
            dst,
            Some("t"),
            Some(1 << 30),
            false,
        );
        assert!(p.head.contains("Content-Length: 1073741824\r\n"));
        assert!(p.head.contains("Authorization: Bearer t\r\n"));
        assert_eq!(
            (p.body, p.chunked, p.end_head),
            (LARGE_SEND_CAP, false, true)
        );
        let p = Plan::body(To::Ec2, "POST /", dst, None, None, false);
        assert!(p.head.contains("Transfer-Encoding: chunked\r\n"));
        assert!(p.head.contains("x-www-form-urlencoded"));
        assert!(!p.head.contains("Authorization"));
        assert!(p.chunked);
    }

    #[test]
    fn junk_paths_are_bounded() {
        let mut rng = Mix::new(7);
        for _ in 0..1000 {
            let (_, path) = junk_request(&mut rng);
            assert!(
                path.starts_with('/') && path.len() < 20_000,
                "{}",
                path.len()
            );
        }
    }
}
