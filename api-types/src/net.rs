//! Small, dependency-free parsers for the network syntax the model uses:
//! IPv4 addresses and CIDR blocks, IPv6 CIDR blocks (security group
//! peers: Corral gives guests IPv4 addresses only), and MAC addresses.
//! The network controller (IPAM) uses [`Ipv4Cidr`] for its arithmetic
//! too, and the node agent [`IpCidr`] to tell a peer's family, so there
//! is one parser of each.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 network in CIDR notation (`10.42.0.0/24`), host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

/// Why a CIDR string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("must be an IPv4 CIDR block like 10.0.0.0/24")]
    Syntax,
    #[error("prefix length must be between 0 and 32")]
    Prefix,
    #[error("host bits must be zero (did you mean {0}?)")]
    HostBits(Ipv4Cidr),
}

impl Ipv4Cidr {
    /// A block from an address and a prefix length; fails if the prefix is
    /// over 32 or the address has host bits set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, CidrError> {
        if prefix > 32 {
            return Err(CidrError::Prefix);
        }
        let network = Ipv4Addr::from(u32::from(addr) & mask(prefix));
        let cidr = Ipv4Cidr { network, prefix };
        if network != addr {
            return Err(CidrError::HostBits(cidr));
        }
        Ok(cidr)
    }

    /// The network address (`10.42.0.0` for `10.42.0.0/24`).
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length (`24` for `10.42.0.0/24`).
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask (`255.255.255.0` for a /24).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    /// The last address of the block (the broadcast address for prefixes
    /// up to /30).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix))
    }

    /// Whether `ip` lies inside the block (network and broadcast included).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    /// Whether `ip` is a usable host address: inside the block and, for
    /// prefixes up to /30, neither the network nor the broadcast address.
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && (self.prefix >= 31 || (ip != self.network && ip != self.broadcast()))
    }

    /// First usable host address (the conventional gateway).
    pub fn first_host(&self) -> Ipv4Addr {
        if self.prefix >= 31 {
            self.network
        } else {
            Ipv4Addr::from(u32::from(self.network) + 1)
        }
    }

    /// Last usable host address.
    pub fn last_host(&self) -> Ipv4Addr {
        if self.prefix >= 31 {
            self.broadcast()
        } else {
            Ipv4Addr::from(u32::from(self.broadcast()) - 1)
        }
    }

    /// Number of usable host addresses.
    pub fn host_count(&self) -> u64 {
        let size = 1u64 << (32 - u32::from(self.prefix));
        if self.prefix >= 31 {
            size
        } else {
            size - 2
        }
    }

    /// Parses `a.b.c.d/p` but, unlike [`FromStr`], does not insist on zero
    /// host bits: returns the address as written and the prefix.
    pub fn parse_any(s: &str) -> Result<(Ipv4Addr, u8), CidrError> {
        let (addr, prefix) = s.split_once('/').ok_or(CidrError::Syntax)?;
        let addr = parse_ipv4(addr).ok_or(CidrError::Syntax)?;
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrError::Syntax);
        }
        let prefix: u8 = prefix.parse().map_err(|_| CidrError::Syntax)?;
        if prefix > 32 {
            return Err(CidrError::Prefix);
        }
        Ok((addr, prefix))
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = Ipv4Cidr::parse_any(s)?;
        Ipv4Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// An IPv6 network in CIDR notation (`2001:db8::/32`), host bits zero.
/// Any spelling `std::net::Ipv6Addr` reads is accepted (`2001:DB8::/32`
/// is the same block); it displays in the RFC 5952 form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Cidr {
    network: Ipv6Addr,
    prefix: u8,
}

/// Why an IPv6 CIDR string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ipv6CidrError {
    #[error("must be an IPv6 CIDR block like 2001:db8::/32")]
    Syntax,
    #[error("prefix length must be between 0 and 128")]
    Prefix,
    #[error("host bits must be zero (did you mean {0}?)")]
    HostBits(Ipv6Cidr),
}

impl Ipv6Cidr {
    /// A block from an address and a prefix length; fails if the prefix is
    /// over 128 or the address has host bits set.
    pub fn new(addr: Ipv6Addr, prefix: u8) -> Result<Self, Ipv6CidrError> {
        if prefix > 128 {
            return Err(Ipv6CidrError::Prefix);
        }
        let mask = if prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(prefix))
        };
        let network = Ipv6Addr::from(u128::from(addr) & mask);
        let cidr = Ipv6Cidr { network, prefix };
        if network != addr {
            return Err(Ipv6CidrError::HostBits(cidr));
        }
        Ok(cidr)
    }

    /// The network address (`2001:db8::` for `2001:db8::/32`).
    pub fn network(&self) -> Ipv6Addr {
        self.network
    }

    /// The prefix length (`32` for `2001:db8::/32`).
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl FromStr for Ipv6Cidr {
    type Err = Ipv6CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s.split_once('/').ok_or(Ipv6CidrError::Syntax)?;
        let addr = Ipv6Addr::from_str(addr).map_err(|_| Ipv6CidrError::Syntax)?;
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Ipv6CidrError::Syntax);
        }
        if prefix.len() > 1 && prefix.starts_with('0') {
            return Err(Ipv6CidrError::Syntax);
        }
        let prefix: u8 = prefix.parse().map_err(|_| Ipv6CidrError::Prefix)?;
        Ipv6Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A CIDR block of either family: what a security group rule's `cidr`
/// names. Written with a `:` it is IPv6, else IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpCidr {
    V4(Ipv4Cidr),
    V6(Ipv6Cidr),
}

/// Why a CIDR block of either family was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpCidrError {
    #[error(transparent)]
    V4(#[from] CidrError),
    #[error(transparent)]
    V6(#[from] Ipv6CidrError),
}

impl IpCidr {
    pub fn is_ipv6(&self) -> bool {
        matches!(self, IpCidr::V6(_))
    }
}

/// Whether `s` is written as an IPv6 block (it has a `:`), valid or not:
/// how [`IpCidr`] tells the families apart.
pub fn spelled_ipv6(s: &str) -> bool {
    s.contains(':')
}

impl FromStr for IpCidr {
    type Err = IpCidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if spelled_ipv6(s) {
            Ok(IpCidr::V6(s.parse()?))
        } else {
            Ok(IpCidr::V4(s.parse()?))
        }
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpCidr::V4(c) => c.fmt(f),
            IpCidr::V6(c) => c.fmt(f),
        }
    }
}

/// Parses a dotted-quad IPv4 address (`10.0.0.1`); no leading zeros, no
/// shorthand forms.
pub fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    Ipv4Addr::from_str(s).ok()
}

/// Parses a MAC address written as six colon-separated hex octets
/// (`52:54:00:12:34:56`, either case).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for slot in &mut out {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *slot = u8::from_str_radix(part, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

/// A MAC a NIC may use: not multicast/broadcast (low bit of the first octet
/// clear) and not all zeros.
pub fn is_unicast_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac.iter().any(|&b| b != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_computes() {
        let c: Ipv4Cidr = "10.42.0.0/24".parse().unwrap();
        assert_eq!(c.network(), Ipv4Addr::new(10, 42, 0, 0));
        assert_eq!(c.prefix(), 24);
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 42, 0, 255));
        assert_eq!(c.first_host(), Ipv4Addr::new(10, 42, 0, 1));
        assert_eq!(c.last_host(), Ipv4Addr::new(10, 42, 0, 254));
        assert_eq!(c.host_count(), 254);
        assert!(c.contains(Ipv4Addr::new(10, 42, 0, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 42, 1, 1)));
        assert!(c.is_host(Ipv4Addr::new(10, 42, 0, 1)));
        assert!(!c.is_host(Ipv4Addr::new(10, 42, 0, 0)));
        assert!(!c.is_host(Ipv4Addr::new(10, 42, 0, 255)));
        assert_eq!(c.to_string(), "10.42.0.0/24");

        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(8, 8, 8, 8)));
        let one: Ipv4Cidr = "192.0.2.7/32".parse().unwrap();
        assert_eq!(one.host_count(), 1);
        assert_eq!(one.first_host(), Ipv4Addr::new(192, 0, 2, 7));
    }

    #[test]
    fn cidr_rejects_bad_input() {
        assert_eq!(
            "10.42.0.1/24".parse::<Ipv4Cidr>(),
            Err(CidrError::HostBits("10.42.0.0/24".parse().unwrap()))
        );
        for bad in [
            "10.42.0.0",
            "10.42.0.0/",
            "10.42.0/24",
            "10.42.0.0/+4",
            "10.42.0.0/024",
            "010.42.0.0/24",
            "10.42.0.256/24",
            "x/24",
            "10.42.0.0/24/1",
        ] {
            assert_eq!(bad.parse::<Ipv4Cidr>(), Err(CidrError::Syntax), "{bad}");
        }
        assert_eq!("10.0.0.0/33".parse::<Ipv4Cidr>(), Err(CidrError::Prefix));
    }

    #[test]
    fn ipv6_cidr_parses_any_spelling_with_zero_host_bits() {
        let c: Ipv6Cidr = "2001:DB8:0:0::/32".parse().unwrap();
        assert_eq!(c.to_string(), "2001:db8::/32");
        assert_eq!(c, "2001:db8::/32".parse().unwrap());
        assert_eq!(c.prefix(), 32);
        assert_eq!("::/0".parse::<Ipv6Cidr>().unwrap().to_string(), "::/0");
        assert_eq!(
            "fe80::1/128".parse::<Ipv6Cidr>().unwrap().network(),
            "fe80::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            "2001:db8::1/64".parse::<Ipv6Cidr>(),
            Err(Ipv6CidrError::HostBits("2001:db8::/64".parse().unwrap()))
        );
        assert_eq!(
            Ipv6CidrError::HostBits("2001:db8::/64".parse().unwrap()).to_string(),
            "host bits must be zero (did you mean 2001:db8::/64?)"
        );
        assert_eq!("::/129".parse::<Ipv6Cidr>(), Err(Ipv6CidrError::Prefix));
        assert_eq!("::/999".parse::<Ipv6Cidr>(), Err(Ipv6CidrError::Prefix));
        for bad in [
            "::",
            "::/",
            "::/+1",
            "::/01",
            "::/1/2",
            "fe80::%eth0/64",
            "10.0.0.0/8",
            "x/8",
            "2001:db8:::/32",
            "::/1000",
        ] {
            assert_eq!(bad.parse::<Ipv6Cidr>(), Err(Ipv6CidrError::Syntax), "{bad}");
        }
    }

    #[test]
    fn ip_cidr_tells_the_family_by_its_spelling() {
        assert!("::/0".parse::<IpCidr>().unwrap().is_ipv6());
        assert!(!"0.0.0.0/0".parse::<IpCidr>().unwrap().is_ipv6());
        assert_eq!(
            "10.0.0.1/8".parse::<IpCidr>(),
            Err(IpCidrError::V4(CidrError::HostBits(
                "10.0.0.0/8".parse().unwrap()
            )))
        );
        assert_eq!(
            "1::/x".parse::<IpCidr>(),
            Err(IpCidrError::V6(Ipv6CidrError::Syntax))
        );
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("52:54:00:AB:cd:0f"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 0x0f])
        );
        assert!(is_unicast_mac(&parse_mac("52:54:00:00:00:01").unwrap()));
        assert!(!is_unicast_mac(&parse_mac("01:00:5e:00:00:01").unwrap()));
        assert!(!is_unicast_mac(&parse_mac("ff:ff:ff:ff:ff:ff").unwrap()));
        assert!(!is_unicast_mac(&parse_mac("00:00:00:00:00:00").unwrap()));
        for bad in [
            "52:54:00:00:00",
            "52-54-00-00-00-01",
            "52:54:00:00:00:01:02",
            "5:54:00:00:00:01",
            "zz:54:00:00:00:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
