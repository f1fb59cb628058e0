//! Learning a server's CA from a pinned hash, as `kubeadm join
//! --discovery-token-ca-cert-hash` does: the agent is given only the URL
//! and `sha256:<hex>` of the CA certificate; it takes the CA from the
//! server's own chain only if its hash matches, and the server's
//! certificate must then verify against that CA for the URL's host.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::pki::{der_hash, to_pem};
use crate::TlsError;

/// Checks the form of a pin: `sha256:` and 64 hex digits.
pub fn parse_pin(pin: &str) -> Result<String, TlsError> {
    let hex = pin
        .strip_prefix("sha256:")
        .ok_or_else(|| TlsError::Pin(pin.to_string()))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TlsError::Pin(pin.to_string()));
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// Connects to `server` (an `https://` URL) and answers the PEM of the CA
/// in its chain whose hash is `pin`, once the server's certificate has
/// verified against it.
pub async fn fetch_pinned_ca(server: &str, pin: &str) -> Result<String, TlsError> {
    let pin = parse_pin(pin)?;
    let url =
        url::Url::parse(server).map_err(|e| TlsError::Url(server.to_string(), e.to_string()))?;
    if url.scheme() != "https" {
        return Err(TlsError::Url(
            server.to_string(),
            "a pinned CA needs an https:// URL".to_string(),
        ));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(TlsError::Url(server.to_string(), "no host".to_string())),
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let name = ServerName::try_from(host.clone())
        .map_err(|e| TlsError::Url(server.to_string(), e.to_string()))?;

    let verifier = Arc::new(PinnedCa {
        pin: pin.clone(),
        found: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let target = format!("{}:{port}", url.host_str().unwrap_or(&host));
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(&target)
            .await
            .map_err(|e| TlsError::Connect(server.to_string(), e.to_string()))?;
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| TlsError::Handshake(server.to_string(), e.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(15), connect)
        .await
        .map_err(|_| TlsError::Connect(server.to_string(), "timed out".to_string()))??;
    let der = verifier
        .found
        .lock()
        .expect("pin lock")
        .take()
        .ok_or(TlsError::PinMismatch(pin))?;
    Ok(to_pem(&der))
}

#[derive(Debug)]
struct PinnedCa {
    pin: String,
    found: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = std::iter::once(end_entity)
            .chain(intermediates)
            .find(|c| der_hash(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "no certificate the server presented has the pinned hash {}",
                    self.pin
                ))
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA: {e}")))?;
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::provider(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let rest: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| der_hash(c) != self.pin)
            .cloned()
            .collect();
        let verified = webpki.verify_server_cert(end_entity, &rest, server_name, ocsp, now)?;
        *self.found.lock().expect("pin lock") = Some(ca.clone().into_owned());
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &crate::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &crate::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crate::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
