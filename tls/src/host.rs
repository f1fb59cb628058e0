//! This host's own addresses, for the names a server certificate covers
//! when the server listens on every address.

use std::net::{IpAddr, Ipv6Addr};

/// The host's local unicast addresses (IPv4 from `/proc/net/fib_trie`,
/// IPv6 from `/proc/net/if_inet6`), link-local ones left out: a client
/// cannot name those without a zone.
pub fn addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/fib_trie") {
        out.extend(ipv4_locals(&text));
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/if_inet6") {
        out.extend(ipv6_locals(&text));
    }
    out.sort();
    out.dedup();
    out
}

fn ipv4_locals(fib_trie: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut last: Option<IpAddr> = None;
    for line in fib_trie.lines() {
        let t = line.trim();
        if let Some(addr) = t.strip_prefix("|-- ") {
            last = addr.trim().parse().ok();
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(ip) = last {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    out
}

fn ipv6_locals(if_inet6: &str) -> Vec<IpAddr> {
    if_inet6
        .lines()
        .filter_map(|l| {
            let hex = l.split_whitespace().next()?;
            let n = u128::from_str_radix(hex, 16).ok()?;
            let ip = Ipv6Addr::from(n);
            let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
            (!link_local).then_some(IpAddr::V6(ip))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernels_tables() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 10.0.0.0/8 2 0 2\n        |-- 10.1.2.3\n           /32 host LOCAL\n        |-- 10.255.255.255\n           /32 link BROADCAST\n";
        assert_eq!(ipv4_locals(trie), vec![IpAddr::from([10, 1, 2, 3])]);
        let v6 = "00000000000000000000000000000001 01 80 10 80       lo\nfe800000000000000000000000000001 02 40 20 80     eth0\nfd000000000000000000000000000002 02 40 00 80     eth0\n";
        let got = ipv6_locals(v6);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.contains(&"::1".parse().unwrap()));
        assert!(got.contains(&"fd00::2".parse().unwrap()));
    }

    #[test]
    fn this_host_has_loopback() {
        assert!(addresses().contains(&IpAddr::from([127, 0, 0, 1])));
    }
}
