//! The server's certificates: a CA made once per data directory, a server
//! certificate issued by it at every start for the names the server answers
//! to, or the operator's own files.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::TlsError;

/// How long a CA made here is valid.
const CA_DAYS: i64 = 3650;
/// How long a server certificate is valid; it is issued again at every
/// start, so a server restarted at least once a year never lapses.
const SERVER_DAYS: i64 = 365;

/// The names a server certificate covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectNames {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl SubjectNames {
    /// `localhost`, loopback, this host's name and addresses, the listen
    /// addresses when they are specific, and the operator's `extra` names
    /// (DNS names or IP addresses).
    pub fn for_host(listen: &[IpAddr], extra: &[String]) -> SubjectNames {
        let mut names = SubjectNames {
            dns: vec!["localhost".to_string()],
            ips: vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            ],
        };
        if let Some(h) = hostname() {
            names.add(&h);
        }
        let any = listen.iter().any(|ip| ip.is_unspecified());
        for ip in listen.iter().filter(|ip| !ip.is_unspecified()) {
            names.add_ip(*ip);
        }
        if any {
            for ip in crate::host::addresses() {
                names.add_ip(ip);
            }
        }
        for e in extra {
            names.add(e);
        }
        names
    }

    fn add(&mut self, name: &str) {
        let name = name.trim().trim_end_matches('.');
        if name.is_empty() {
            return;
        }
        match name.parse::<IpAddr>() {
            Ok(ip) => self.add_ip(ip),
            Err(_) => {
                let lower = name.to_ascii_lowercase();
                if !self.dns.contains(&lower) {
                    self.dns.push(lower);
                }
            }
        }
    }

    fn add_ip(&mut self, ip: IpAddr) {
        if !self.ips.contains(&ip) {
            self.ips.push(ip);
        }
    }

    fn sans(&self) -> Result<Vec<SanType>, TlsError> {
        let mut out = Vec::new();
        for d in &self.dns {
            let name = d
                .clone()
                .try_into()
                .map_err(|_| TlsError::Name(d.clone()))?;
            out.push(SanType::DnsName(name));
        }
        out.extend(self.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        Ok(out)
    }
}

fn hostname() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()?;
    let h = raw.trim();
    (!h.is_empty()).then(|| h.to_string())
}

/// What a server presents and what its clients must trust.
#[derive(Clone)]
pub struct ServerIdentity {
    /// The CA clients trust, PEM (what the client files carry).
    pub ca_pem: String,
    /// `sha256:<hex>` of the CA certificate (what `corral agent
    /// --server-ca-hash` pins).
    pub ca_hash: String,
    /// Where that PEM is on disk.
    pub ca_file: PathBuf,
    /// The server's certificate chain and key.
    pub config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("ca_hash", &self.ca_hash)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// `sha256:<hex>` of the first certificate in `pem`.
pub fn ca_hash(pem: &str) -> Result<String, TlsError> {
    let der = first_cert(pem.as_bytes(), Path::new("the CA"))?;
    Ok(der_hash(&der))
}

pub(crate) fn der_hash(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// Every certificate of a PEM bundle.
pub fn certs_from_pem(pem: &[u8], what: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(what.to_path_buf(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(
            what.to_path_buf(),
            "no CERTIFICATE block".to_string(),
        ));
    }
    Ok(certs)
}

fn first_cert(pem: &[u8], what: &Path) -> Result<CertificateDer<'static>, TlsError> {
    Ok(certs_from_pem(pem, what)?.remove(0))
}

/// DER to PEM.
pub fn to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|e| TlsError::Io(path.to_path_buf(), e))
}

/// Writes `text` to `path` (mode `mode`) through a temporary file, so a
/// crash never leaves half a key.
fn write(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let io = |e| TlsError::Io(path.to_path_buf(), e);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The CA's subject: fixed text and a digest of its key, so two servers'
/// CAs never share a name and the issuer can be rebuilt from the key alone.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let mut params = CertificateParams::default();
    let id = hex::encode(&Sha256::digest(key.public_key_raw())[..6]);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Corral");
    dn.push(DnType::CommonName, format!("Corral CA {id}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
    // An hour of slack for clocks a little behind ours.
    params.not_before = now - std::time::Duration::from_secs(3600);
    params.not_after = now + std::time::Duration::from_secs(days as u64 * 86_400);
}

/// Loads the CA under `dir` (`ca.crt`, `ca.key`), making it on first use,
/// then issues a fresh server certificate for `names` (`server.crt`,
/// `server.key`, kept for the operator's tools; the server uses the one in
/// memory).
pub fn load_or_create(dir: &Path, names: &SubjectNames) -> Result<ServerIdentity, TlsError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| TlsError::Io(dir.to_path_buf(), e))?;
    let ca_crt = dir.join("ca.crt");
    let ca_key_file = dir.join("ca.key");
    let (ca_key, ca_pem) = if ca_key_file.exists() && ca_crt.exists() {
        let key = KeyPair::from_pem(&read(&ca_key_file)?)
            .map_err(|e| TlsError::Key(ca_key_file.clone(), e.to_string()))?;
        (key, read(&ca_crt)?)
    } else {
        let key = KeyPair::generate().map_err(TlsError::Generate)?;
        let mut params = ca_params(&key);
        validity(&mut params, CA_DAYS);
        let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
        write(&ca_key_file, &key.serialize_pem(), 0o600)?;
        write(&ca_crt, &cert.pem(), 0o644)?;
        tracing::info!(dir = %dir.display(), "made a new CA for this server");
        (key, cert.pem())
    };
    let ca_der = first_cert(ca_pem.as_bytes(), &ca_crt)?;

    let issuer = Issuer::new(ca_params(&ca_key), &ca_key);
    let key = KeyPair::generate().map_err(TlsError::Generate)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Corral");
    dn.push(DnType::CommonName, "corral server");
    params.distinguished_name = dn;
    params.subject_alt_names = names.sans()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, SERVER_DAYS);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(TlsError::Generate)?;
    write(&dir.join("server.key"), &key.serialize_pem(), 0o600)?;
    write(&dir.join("server.crt"), &cert.pem(), 0o644)?;

    let chain = vec![cert.der().clone(), ca_der.clone()];
    let private = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
        .map_err(|e| TlsError::Key(dir.join("server.key"), e.to_string()))?;
    Ok(ServerIdentity {
        ca_hash: der_hash(&ca_der),
        ca_pem,
        ca_file: ca_crt,
        config: server_config(chain, private)?,
    })
}

/// The operator's own certificate chain and key; `ca` is what clients are
/// told to trust (default: the last certificate of the chain).
pub fn from_files(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<ServerIdentity, TlsError> {
    let chain = certs_from_pem(read(cert)?.as_bytes(), cert)?;
    let private = PrivateKeyDer::from_pem_slice(read(key)?.as_bytes())
        .map_err(|e| TlsError::Key(key.to_path_buf(), e.to_string()))?;
    let (ca_pem, ca_file) = match ca {
        Some(ca) => (read(ca)?, ca.to_path_buf()),
        None => (
            to_pem(chain.last().expect("certs_from_pem is never empty")),
            cert.to_path_buf(),
        ),
    };
    let ca_der = first_cert(ca_pem.as_bytes(), &ca_file)?;
    Ok(ServerIdentity {
        ca_hash: der_hash(&ca_der),
        ca_pem,
        ca_file,
        config: server_config(chain, private)?,
    })
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Rustls)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_server_certs_chain_to_it() {
        use rustls::client::danger::ServerCertVerifier;
        let dir = tempfile::tempdir().unwrap();
        let names =
            SubjectNames::for_host(&[IpAddr::from([127, 0, 0, 1])], &["corral.example".into()]);
        assert!(names.dns.contains(&"corral.example".to_string()));
        let a = load_or_create(dir.path(), &names).unwrap();
        let b = load_or_create(dir.path(), &names).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem, "the CA is kept across starts");
        assert_eq!(a.ca_hash, b.ca_hash);
        assert!(a.ca_hash.starts_with("sha256:") && a.ca_hash.len() == 7 + 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the CA key is private");

        // The server certificate verifies against the CA for its names.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(first_cert(a.ca_pem.as_bytes(), Path::new("ca")).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::provider(),
        )
        .build()
        .unwrap();
        let server = certs_from_pem(
            read(&dir.path().join("server.crt")).unwrap().as_bytes(),
            Path::new("s"),
        )
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        for name in ["localhost", "127.0.0.1", "corral.example"] {
            let sn = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&server[0], &[], &sn, &[], now)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls::pki_types::ServerName::try_from("elsewhere.example").unwrap();
        assert!(verifier
            .verify_server_cert(&server[0], &[], &other, &[], now)
            .is_err());
    }

    #[test]
    fn bad_operator_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "not pem").unwrap();
        let err = from_files(&cert, &cert, None).unwrap_err().to_string();
        assert!(err.contains("c.pem"), "{err}");
    }
}
