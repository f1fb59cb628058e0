//! The connection limits every listener serves with: per-peer and total
//! caps close extra connections at accept, a client that never finishes
//! its headers is cut off at the deadline, one that trickles its body is
//! cut off once it falls behind the minimum rate, and each request carries
//! its peer's address.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use corral_tls::{serve, Limits, Listen, Peer};

async fn start(limits: Limits) -> String {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap().to_string();
    let app = axum::Router::new()
        .route(
            "/peer",
            axum::routing::get(
                |axum::Extension(Peer(p)): axum::Extension<Peer>| async move { p.ip().to_string() },
            ),
        )
        .route(
            "/echo",
            axum::routing::put(|body: axum::body::Bytes| async move { body.len().to_string() }),
        );
    tokio::spawn(serve(
        Listen::Plain(tcp),
        app,
        limits,
        std::future::pending(),
    ));
    addr
}

fn get(addr: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /peer HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Whether the server closed `s` (EOF or a reset) within `within`.
fn closed(s: &mut TcpStream, within: Duration) -> bool {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), WouldBlock | TimedOut),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_capped_and_requests_know_their_peer() {
    let addr = start(Limits {
        max_per_peer: 2,
        ..Limits::default()
    })
    .await;
    let a = addr.clone();
    tokio::task::spawn_blocking(move || {
        assert!(
            get(&a).unwrap().ends_with("127.0.0.1"),
            "the Peer extension"
        );
        // Two idle connections fill this peer's share: a third is closed at
        // once; once one goes, there is room again.
        let one = TcpStream::connect(&a).unwrap();
        let _two = TcpStream::connect(&a).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut third = TcpStream::connect(&a).unwrap();
        assert!(
            closed(&mut third, Duration::from_secs(5)),
            "the third connection was kept"
        );
        drop(one);
        std::thread::sleep(Duration::from_millis(200));
        assert!(get(&a).unwrap().starts_with("HTTP/1.0 200"));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_headers_are_cut_off() {
    let addr = start(Limits {
        header_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    tokio::task::spawn_blocking(move || {
        let mut slow = TcpStream::connect(&addr).unwrap();
        slow.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let t = Instant::now();
        assert!(
            closed(&mut slow, Duration::from_secs(10)),
            "a slowloris client was kept"
        );
        assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
        // Others are served meanwhile and after.
        assert!(get(&addr).unwrap().starts_with("HTTP/1.0 200"));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_listener_closes_new_connections() {
    let addr = start(Limits {
        max_connections: 3,
        ..Limits::default()
    })
    .await;
    tokio::task::spawn_blocking(move || {
        let held: Vec<_> = (0..3).map(|_| TcpStream::connect(&addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut extra = TcpStream::connect(&addr).unwrap();
        assert!(closed(&mut extra, Duration::from_secs(5)));
        drop(held);
        std::thread::sleep(Duration::from_millis(200));
        assert!(get(&addr).unwrap().starts_with("HTTP/1.0 200"));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_bodies_are_cut_off_honest_ones_are_not() {
    let addr = start(Limits {
        body_grace: Duration::from_secs(1),
        body_min_rate: 1000,
        ..Limits::default()
    })
    .await;
    tokio::task::spawn_blocking(move || {
        // Announces 100 kB and sends a byte every 200 ms: behind the rate
        // after the grace, so the request fails and the connection goes.
        let mut slow = TcpStream::connect(&addr).unwrap();
        slow.write_all(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            .unwrap();
        let t = Instant::now();
        let mut cut = false;
        while t.elapsed() < Duration::from_secs(15) {
            if slow.write_all(b"x").is_err() {
                cut = true;
                break;
            }
            slow.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = [0u8; 256];
            match slow.read(&mut buf) {
                Ok(0) => {
                    cut = true;
                    break;
                }
                Ok(_) => {
                    // An answer (400) before the body was done: cut off.
                    cut = true;
                    break;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => {
                    cut = true;
                    break;
                }
            }
        }
        assert!(cut, "a trickled body was kept for {:?}", t.elapsed());
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

        // 200 kB sent at once, and 4 kB sent in 4 chunks over 2 s (past
        // the grace but ahead of the rate): both arrive whole.
        let mut fast = TcpStream::connect(&addr).unwrap();
        fast.write_all(b"PUT /echo HTTP/1.0\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
            .unwrap();
        fast.write_all(&vec![b'y'; 200_000]).unwrap();
        let mut out = String::new();
        fast.read_to_string(&mut out).unwrap();
        assert!(out.ends_with("200000"), "{out}");
        let mut steady = TcpStream::connect(&addr).unwrap();
        steady
            .write_all(b"PUT /echo HTTP/1.0\r\nHost: x\r\nContent-Length: 4000\r\n\r\n")
            .unwrap();
        for _ in 0..4 {
            steady.write_all(&[b'z'; 1000]).unwrap();
            std::thread::sleep(Duration::from_millis(500));
        }
        let mut out = String::new();
        steady.read_to_string(&mut out).unwrap();
        assert!(out.ends_with("4000"), "{out}");
    })
    .await
    .unwrap();
}
