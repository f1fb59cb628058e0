//! What a tenant's input may make a server read: files beneath the
//! operator's import directories, and URLs whose addresses lie outside
//! this host and the private networks around it.
//!
//! An Image's `source.path` and `source.url` (and EC2's `ImageLocation`)
//! are written by tenants and acted on by the server, as root, on its own
//! host. Without this module a member could import `/etc/shadow` or the
//! store file and download it back, or make the server fetch
//! `http://127.0.0.1:…` and `http://169.254.169.254/…` (SSRF).
//!
//! Invariants:
//! 1. A path is read only when it lies beneath an import directory, is
//!    reached from it without leaving it (no `..` component; symlinks are
//!    resolved by the kernel with `RESOLVE_BENEATH`, so one that points
//!    out is refused, not followed) and is a regular file. Devices, FIFOs,
//!    sockets and directories are refused before they are opened for
//!    reading. With no import directory nothing is read at all.
//! 2. A URL is fetched only over `http`/`https`, and only from addresses
//!    [`ImportPolicy::address_refusal`] lets through: never loopback,
//!    link-local (the metadata address among them), private, shared
//!    (CGNAT), unique-local, multicast, reserved or documentation ranges,
//!    nor any address of this host (its own listeners), unless the
//!    operator allowed a CIDR (`--image-url-allow`). The check is made on
//!    each address actually connected to (the fetcher's resolver filters
//!    them) and on every redirect hop, so DNS rebinding and redirects to
//!    loopback fail the same way.
//! 3. The same checks run at admission (a clear refusal naming the field)
//!    and again when the bytes are read: the import is the authority, the
//!    admission check is for the user's sake.
//!
//! What it does not do: it does not limit what an operator puts in an
//! import directory (every tenant may import any file there).
//!
//! Slightly over 600 lines: the path rules and the URL rules are one policy
//! (what a tenant may make the server read) with their tests beside them.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// Why a tenant's path or URL is refused. `Display` is the user-facing
/// reason, written to follow the field name.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("importing files from the server host is disabled (the server has no --image-import-dir); upload the bytes instead")]
    NoImportDirs,
    #[error("{0:?} must be an absolute path")]
    NotAbsolute(String),
    #[error("{0:?} must not contain '.' or '..' components")]
    DotComponents(String),
    #[error("{path:?} is outside the image import directories ({dirs}); put the file there or upload it")]
    Outside { path: String, dirs: String },
    #[error("{0:?} leaves the import directory (a symbolic link or '..' points outside it)")]
    Escapes(String),
    #[error("{path:?} is {what}, not a regular file")]
    NotRegular { path: String, what: &'static str },
    #[error("{0:?} does not exist in the import directory")]
    NotFound(String),
    #[error("{path:?} cannot be opened: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("this kernel cannot confine the open to the import directory (openat2 is missing), so nothing is imported")]
    Unsupported,
    #[error("{url:?} is not a valid URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{0:?}: only http:// and https:// URLs are fetched")]
    Scheme(String),
    #[error("{host} is {reason}: the server does not fetch from it")]
    Refused { host: String, reason: &'static str },
}

/// A CIDR block (`10.1.0.0/16`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The server operator's rules for tenant-named sources.
#[derive(Debug, Clone)]
pub struct ImportPolicy {
    dirs: Vec<PathBuf>,
    url_allow: Vec<Cidr>,
    /// The most bytes one URL import may bring in.
    pub max_bytes: u64,
    /// How long one URL import may take, start to end.
    pub fetch_timeout: Duration,
    /// Extra CA certificates (PEM) trusted for `https://` imports.
    pub ca_bundle: Option<PathBuf>,
}

/// `corral up`'s import directory.
pub const DEFAULT_IMPORT_DIR: &str = "/var/lib/corral/import";
/// The default cap on one URL import: 64 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 30;

impl Default for ImportPolicy {
    /// Nothing readable from the host, no private address fetched.
    fn default() -> Self {
        ImportPolicy {
            dirs: Vec::new(),
            url_allow: Vec::new(),
            max_bytes: DEFAULT_MAX_BYTES,
            fetch_timeout: Duration::from_secs(3600),
            ca_bundle: None,
        }
    }
}

impl ImportPolicy {
    /// Import directories are taken as given (made absolute and without
    /// `.`/`..`); they need not exist yet.
    pub fn new(dirs: Vec<PathBuf>, url_allow: Vec<Cidr>) -> Result<ImportPolicy, ImportError> {
        let mut clean = Vec::new();
        for d in dirs {
            let s = d.to_string_lossy().into_owned();
            lexical(&s)?;
            let d = PathBuf::from(s.trim_end_matches('/'));
            let d = if d.as_os_str().is_empty() {
                PathBuf::from("/")
            } else {
                d
            };
            clean.push(d);
        }
        Ok(ImportPolicy {
            dirs: clean,
            url_allow,
            ..Default::default()
        })
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    pub fn url_allow(&self) -> &[Cidr] {
        &self.url_allow
    }

    fn dirs_text(&self) -> String {
        self.dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The import directory `path` lies beneath, and the rest of it.
    fn locate<'p>(&self, path: &'p str) -> Result<(&Path, &'p Path), ImportError> {
        if self.dirs.is_empty() {
            return Err(ImportError::NoImportDirs);
        }
        lexical(path)?;
        let p = Path::new(path);
        for d in &self.dirs {
            if let Ok(rest) = p.strip_prefix(d) {
                if !rest.as_os_str().is_empty() {
                    return Ok((d, rest));
                }
            }
        }
        Err(ImportError::Outside {
            path: path.to_string(),
            dirs: self.dirs_text(),
        })
    }

    /// Admission's check of a tenant's path: beneath an import directory
    /// and, when the file is already there, a regular file reached
    /// without leaving it. A file that does not exist yet is accepted (the
    /// import waits for it).
    pub fn check_path(&self, path: &str) -> Result<(), ImportError> {
        match self.open(path) {
            Ok(_) | Err(ImportError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Opens `path` for reading under the rules above; returns the file
    /// and its size.
    pub fn open(&self, path: &str) -> Result<(File, u64), ImportError> {
        let (dir, rest) = self.locate(path)?;
        let open_err = |e: rustix::io::Errno| match e {
            rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR => {
                ImportError::NotFound(path.to_string())
            }
            rustix::io::Errno::XDEV | rustix::io::Errno::LOOP => {
                ImportError::Escapes(path.to_string())
            }
            rustix::io::Errno::NOSYS => ImportError::Unsupported,
            e => ImportError::Open {
                path: path.to_string(),
                source: e.into(),
            },
        };
        let base = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(open_err)?;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        // First without opening for reading: opening a device or a FIFO
        // can have effects of its own.
        let probe = rustix::fs::openat2(
            base.as_fd(),
            rest,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            resolve,
        )
        .map_err(open_err)?;
        let probed = File::from(probe)
            .metadata()
            .map_err(|e| ImportError::Open {
                path: path.to_string(),
                source: e,
            })?;
        regular(path, &probed)?;
        let fd = rustix::fs::openat2(
            base.as_fd(),
            rest,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
            resolve,
        )
        .map_err(open_err)?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| ImportError::Open {
            path: path.to_string(),
            source: e,
        })?;
        regular(path, &meta)?;
        Ok((file, meta.len()))
    }

    /// Admission's check of a tenant's URL: scheme, syntax and, for a
    /// literal address or `localhost`, the address rules. Names are
    /// checked again, address by address, when fetched.
    pub fn check_url(&self, url: &str) -> Result<(), ImportError> {
        let parsed = url::Url::parse(url).map_err(|e| ImportError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        self.check_parsed_url(&parsed)
    }

    /// [`ImportPolicy::check_url`] of a parsed URL (each redirect hop).
    pub fn check_parsed_url(&self, url: &url::Url) -> Result<(), ImportError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ImportError::Scheme(url.to_string()));
        }
        match url.host() {
            None => Err(ImportError::BadUrl {
                url: url.to_string(),
                reason: "it names no host".into(),
            }),
            Some(url::Host::Ipv4(ip)) => self.check_address(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_address(IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if name == "localhost" || name.ends_with(".localhost") {
                    return Err(ImportError::Refused {
                        host: name,
                        reason: "this host (loopback)",
                    });
                }
                Ok(())
            }
        }
    }

    /// Whether the server may connect to `ip` for a tenant.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), ImportError> {
        match self.address_refusal(ip) {
            None => Ok(()),
            Some(reason) => Err(ImportError::Refused {
                host: ip.to_string(),
                reason,
            }),
        }
    }

    /// Why the server may not connect to `ip` for a tenant, if it may not.
    pub fn address_refusal(&self, ip: IpAddr) -> Option<&'static str> {
        if self.url_allow.iter().any(|c| c.contains(ip)) {
            return None;
        }
        if let Some(reason) = special_range(ip) {
            return Some(reason);
        }
        if is_local_address(ip) {
            return Some("an address of this host");
        }
        None
    }
}

/// `path` is absolute and has no `.`/`..` components.
fn lexical(path: &str) -> Result<(), ImportError> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(ImportError::NotAbsolute(path.to_string()));
    }
    if path.split('/').any(|c| c == "." || c == "..")
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(ImportError::DotComponents(path.to_string()));
    }
    Ok(())
}

fn regular(path: &str, meta: &std::fs::Metadata) -> Result<(), ImportError> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(ImportError::NotRegular {
        path: path.to_string(),
        what,
    })
}

/// An IPv4 address carried in an IPv6 one (mapped, compatible, NAT64,
/// 6to4) is judged as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    let low = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    // ::a.b.c.d (deprecated "compatible"), but not :: and ::1.
    if s[..6] == [0; 6] && u128::from(v6) > 1 {
        return Some(low);
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low);
    }
    // 6to4: 2002:AABB:CCDD::/48.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

/// Ranges no tenant import may reach (RFC 6890's special-purpose
/// registries, the parts that are not the public Internet).
fn special_range(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let reason = match o {
                [0, ..] => "an unspecified address (0.0.0.0/8)",
                [127, ..] => "loopback",
                [10, ..] => "a private address (10.0.0.0/8)",
                [172, b, ..] if (16..32).contains(&b) => "a private address (172.16.0.0/12)",
                [192, 168, ..] => "a private address (192.168.0.0/16)",
                [169, 254, 169, 254] => "the metadata service's address",
                [169, 254, ..] => "link-local",
                [100, b, ..] if (64..128).contains(&b) => "shared address space (100.64.0.0/10)",
                [192, 0, 0, _] => "IETF protocol assignments (192.0.0.0/24)",
                [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "a documentation range",
                [198, b, ..] if b == 18 || b == 19 => "a benchmarking range (198.18.0.0/15)",
                [a, ..] if (224..240).contains(&a) => "multicast",
                [a, ..] if a >= 240 => "reserved (240.0.0.0/4, broadcast)",
                _ => return None,
            };
            Some(reason)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let reason = if v6.is_unspecified() {
                "an unspecified address (::)"
            } else if v6.is_loopback() {
                "loopback"
            } else if s[0] & 0xfe00 == 0xfc00 {
                "a unique-local address (fc00::/7)"
            } else if s[0] & 0xffc0 == 0xfe80 {
                "link-local"
            } else if s[0] & 0xffc0 == 0xfec0 {
                "site-local (fec0::/10)"
            } else if s[0] & 0xff00 == 0xff00 {
                "multicast"
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                "a documentation range"
            } else if s[0] == 0x2001 && s[1] < 0x0200 {
                "IETF protocol assignments (2001::/23, Teredo among them)"
            } else if s[0] == 0x0100 && s[1..4] == [0, 0, 0] {
                "a discard-only range (100::/64)"
            } else {
                return None;
            };
            Some(reason)
        }
    }
}

/// Whether `ip` is assigned to this host: binding to it works only then.
fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn policy(dir: &Path) -> ImportPolicy {
        ImportPolicy::new(vec![dir.to_path_buf()], Vec::new()).unwrap()
    }

    #[test]
    fn paths_beneath_the_import_dir_only() {
        let root = tempfile::tempdir().unwrap();
        let import = root.path().join("import");
        std::fs::create_dir_all(import.join("sub")).unwrap();
        std::fs::write(import.join("sub/ok.img"), b"bytes").unwrap();
        std::fs::write(root.path().join("secret"), b"secret").unwrap();
        symlink(root.path().join("secret"), import.join("out")).unwrap();
        symlink("/etc/passwd", import.join("abs")).unwrap();
        symlink("sub/ok.img", import.join("in")).unwrap();
        symlink("/proc/self/root/etc/passwd", import.join("magic")).unwrap();
        std::fs::create_dir(import.join("dir")).unwrap();
        let p = policy(&import);
        let at = |rel: &str| format!("{}/{rel}", import.display());

        let (f, len) = p.open(&at("sub/ok.img")).unwrap();
        assert_eq!(len, 5);
        drop(f);
        // A link that stays inside is followed.
        assert_eq!(p.open(&at("in")).unwrap().1, 5);
        for (path, want) in [
            (at("out"), "leaves the import directory"),
            (at("abs"), "leaves the import directory"),
            (at("magic"), "leaves the import directory"),
            (at("sub/../../secret"), "'.' or '..'"),
            (at("./sub/ok.img"), "'.' or '..'"),
            (at("dir"), "a directory"),
            (
                "/etc/passwd".to_string(),
                "outside the image import directories",
            ),
            ("relative/x".to_string(), "absolute"),
            (
                import.display().to_string(),
                "outside the image import directories",
            ),
            (format!("{}x/secret", import.display()), "outside"),
            (at("missing"), "does not exist"),
        ] {
            let err = p.open(&path).unwrap_err().to_string();
            assert!(err.contains(want), "{path}: {err}");
        }
        // Admission lets a file that is not there yet through, nothing else.
        p.check_path(&at("missing")).unwrap();
        assert!(p.check_path(&at("out")).is_err());
        let none = ImportPolicy::default();
        assert!(matches!(
            none.check_path(&at("sub/ok.img")),
            Err(ImportError::NoImportDirs)
        ));
    }

    #[test]
    fn devices_and_fifos_are_refused_before_a_read_open() {
        let root = tempfile::tempdir().unwrap();
        let fifo = root.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.map(|s| s.success()).unwrap_or(false) {
            // Opening a FIFO for reading would block: this returns at once.
            let err = policy(root.path())
                .open(&fifo.display().to_string())
                .unwrap_err();
            assert!(err.to_string().contains("a FIFO"), "{err}");
        }
        let dev = ImportPolicy::new(vec!["/dev".into()], Vec::new()).unwrap();
        let err = dev.open("/dev/null").unwrap_err();
        assert!(err.to_string().contains("a device"), "{err}");
    }

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let p = ImportPolicy::default();
        for bad in [
            "http://127.0.0.1:8774/v1/whoami",
            "http://127.1/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/",
            "http://172.20.0.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:7f00:1::]/",
            "http://0.0.0.0/",
            "http://0/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://localhost:8773/",
            "http://LOCALHOST./",
            "http://a.localhost/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
        ] {
            assert!(p.check_url(bad).is_err(), "{bad} was let through");
        }
        for bad in [
            "file:///etc/passwd",
            "ftp://x/",
            "gopher://x/",
            "not a url",
            "http://",
        ] {
            assert!(p.check_url(bad).is_err(), "{bad} was let through");
        }
        for good in [
            "http://93.184.215.14/x.img",
            "https://images.example.com/x.qcow2",
            "http://[2606:4700::1]/x",
        ] {
            p.check_url(good).unwrap();
        }
        let allowed = ImportPolicy::new(Vec::new(), vec!["127.0.0.0/8".parse().unwrap()]).unwrap();
        allowed.check_url("http://127.0.0.1:9/x").unwrap();
        assert!(allowed.check_url("http://169.254.169.254/").is_err());
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let host: Cidr = "fd00::5".parse().unwrap();
        assert!(host.contains("fd00::5".parse().unwrap()));
        assert!(!host.contains("fd00::6".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("ten".parse::<Cidr>().is_err());
    }
}
