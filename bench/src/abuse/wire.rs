//! The abusers' side of the wire: raw TCP from a chosen loopback address,
//! request heads written by hand (slow, oversized, chunked), the first
//! status line read back, pacing, and random junk requests.

use std::cell::Cell;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::soak::Mix;

use super::*;

/// One raw HTTP/1.1 request, as the abuser sends it.
pub(super) struct Plan {
    /// The request line and header lines, without the blank line.
    pub(super) head: String,
    /// Whether the blank line ending the headers is sent (a slowloris
    /// never sends it).
    pub(super) end_head: bool,
    /// Body bytes to send at most.
    pub(super) body: u64,
    pub(super) chunked: bool,
    /// Send one small piece every `DRIP` instead of as fast as it goes.
    pub(super) slow: bool,
}

/// How one request went.
#[derive(Default)]
pub(super) struct Exchange {
    /// The status the server answered with.
    pub(super) answer: Option<u16>,
    /// The server closed the connection (with or without an answer).
    pub(super) closed: bool,
    pub(super) sent: u64,
    pub(super) held: Duration,
    pub(super) failed: Option<String>,
}

pub(super) async fn connect(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
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
pub(super) fn status_of(got: &[u8]) -> Option<u16> {
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
pub(super) async fn exchange(
    src: Ipv4Addr,
    dst: SocketAddr,
    plan: &Plan,
    until: Instant,
) -> Exchange {
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
pub(super) async fn keep_sending(
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
    pub(super) fn slow_head(dst: SocketAddr) -> Plan {
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
    pub(super) fn body(
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
pub(super) async fn paced<F, Fut>(per_sec: f64, until: Instant, mut op: F)
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
pub(super) fn junk_request(rng: &mut Mix) -> (reqwest::Method, String) {
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
