//! An in-test TCP proxy in front of one upstream address. A test can cut
//! it (every open connection dropped, new ones refused: nothing listens on
//! its port), stall it (connections stay open and accepted, no byte moves:
//! a blackhole) and restore it; and it can trickle what flows back to the
//! client (bytes per second), to catch a download in the middle.
//!
//! Plain std threads, so any test (async or not) can use it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    /// None while cut: the port refuses connections.
    listener: Mutex<Option<TcpListener>>,
    /// Both sockets of every open connection, to drop them on a cut.
    conns: Mutex<HashMap<u64, [TcpStream; 2]>>,
    next: AtomicU64,
    /// Bytes per second back to the client; 0 is no limit.
    rate: AtomicU64,
    /// While set, no byte moves either way (a blackhole).
    stalled: AtomicBool,
    stop: AtomicBool,
    accepted: AtomicU64,
}

impl Proxy {
    /// A proxy on a free loopback port in front of `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a proxy port");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            listener: Mutex::new(Some(listener)),
            conns: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
        });
        let s = shared.clone();
        let acceptor = std::thread::spawn(move || accept_loop(s));
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    /// Limits what flows back to clients to `bytes_per_sec` (0: none).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.shared.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Drops every open connection and stops listening: new connections
    /// are refused until [`Proxy::restore`].
    pub fn cut(&self) {
        drop(self.shared.listener.lock().unwrap().take());
        self.shared.drop_all();
    }

    /// Keeps accepting and holding connections but moves no byte (a
    /// blackhole), until [`Proxy::restore`].
    pub fn stall(&self) {
        self.shared.stalled.store(true, Ordering::SeqCst);
    }

    /// Listens again on the same port and moves bytes again. Connections
    /// held by a stall are dropped, not flushed: what they buffered is
    /// lost, as when a partition outlasts TCP's patience.
    pub fn restore(&self) {
        if self.shared.stalled.swap(false, Ordering::SeqCst) {
            self.shared.drop_all();
        }
        let mut l = self.shared.listener.lock().unwrap();
        if l.is_none() {
            let listener = TcpListener::bind(self.addr).expect("the proxy's port again");
            listener.set_nonblocking(true).unwrap();
            *l = Some(listener);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn drop_all(&self) {
        for (_, [a, b]) in self.conns.lock().unwrap().drain() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(s: Arc<Shared>) {
    while !s.stop.load(Ordering::SeqCst) {
        // Accepting and registering happen under the listener's lock, so a
        // cut never misses a connection being set up.
        let guard = s.listener.lock().unwrap();
        let accepted = guard.as_ref().map(|l| l.accept());
        let Some(Ok((client, _))) = accepted else {
            drop(guard);
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        let Ok(server) = TcpStream::connect(s.upstream) else {
            continue;
        };
        client.set_nonblocking(false).unwrap();
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        s.accepted.fetch_add(1, Ordering::SeqCst);
        let id = s.next.fetch_add(1, Ordering::SeqCst);
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        s.conns.lock().unwrap().insert(id, [c2, s2]);
        drop(guard);
        let (c3, s3) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let up = s.clone();
        std::thread::spawn(move || pump(&up, id, client, server, false));
        let down = s.clone();
        std::thread::spawn(move || pump(&down, id, s3, c3, true));
    }
}

/// Copies `from` to `to` until either ends; `back` is the direction to
/// the client (the one the rate limits).
fn pump(s: &Shared, id: u64, mut from: TcpStream, mut to: TcpStream, back: bool) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        while s.stalled.load(Ordering::SeqCst) {
            if s.stop.load(Ordering::SeqCst) || !s.conns.lock().unwrap().contains_key(&id) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let rate = if back {
            s.rate.load(Ordering::SeqCst)
        } else {
            0
        };
        let max = if rate == 0 {
            buf.len()
        } else {
            ((rate / 20) as usize).clamp(1, buf.len())
        };
        let n = match from.read(&mut buf[..max]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if s.stalled.load(Ordering::SeqCst) {
            // Bytes read as a stall began are held, as a blackhole would.
            while s.stalled.load(Ordering::SeqCst) {
                if !s.conns.lock().unwrap().contains_key(&id) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if rate > 0 {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    s.conns.lock().unwrap().remove(&id);
}
