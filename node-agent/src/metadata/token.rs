//! IMDSv2 tokens: stateless, an HMAC under a random key over the
//! connection's two addresses, the instance id and the expiry (measured
//! on the monotonic clock). Nothing is stored per token.

use std::net::Ipv4Addr;
use std::time::Instant;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Longer tokens cannot be ours; refused before decoding.
const MAX_TOKEN_CHARS: usize = 128;

// ---------------------------------------------------------------------------
// IMDSv2 tokens.

/// Why a token was refused (logged, never shown to the guest).
#[derive(Debug, thiserror::Error)]
pub(super) enum TokenError {
    #[error("token is not one of ours")]
    Malformed,
    #[error("token was not issued to this instance by this agent")]
    Forged,
    #[error("token has expired")]
    Expired,
}

/// Token layout before base64url: format byte, expiry (ms on the key's
/// monotonic clock, big-endian u64), HMAC-SHA256 tag.
const TOKEN_FORMAT: u8 = 1;
const TOKEN_BYTES: usize = 1 + 8 + 32;

pub(super) struct TokenKey {
    key: [u8; 32],
    epoch: Instant,
}

impl TokenKey {
    pub(super) fn random() -> Self {
        Self {
            key: rand::random(),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn mac(&self, local: Ipv4Addr, peer: Ipv4Addr, instance_id: &str, expiry: u64) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        m.update(b"corral-imds-token\0");
        m.update(&local.octets());
        m.update(&peer.octets());
        m.update(&(instance_id.len() as u64).to_be_bytes());
        m.update(instance_id.as_bytes());
        m.update(&expiry.to_be_bytes());
        m
    }

    pub(super) fn issue(
        &self,
        local: Ipv4Addr,
        peer: Ipv4Addr,
        instance_id: &str,
        ttl: u32,
    ) -> String {
        let expiry = self.now_ms().saturating_add(u64::from(ttl) * 1000);
        let tag = self
            .mac(local, peer, instance_id, expiry)
            .finalize()
            .into_bytes();
        let mut raw = Vec::with_capacity(TOKEN_BYTES);
        raw.push(TOKEN_FORMAT);
        raw.extend_from_slice(&expiry.to_be_bytes());
        raw.extend_from_slice(&tag);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    pub(super) fn verify(
        &self,
        token: &str,
        local: Ipv4Addr,
        peer: Ipv4Addr,
        instance_id: &str,
    ) -> Result<(), TokenError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Malformed)?;
        if raw.len() != TOKEN_BYTES || raw[0] != TOKEN_FORMAT {
            return Err(TokenError::Malformed);
        }
        let (expiry, tag) = raw[1..].split_at(8);
        let expiry_bytes: [u8; 8] = expiry.try_into().map_err(|_| TokenError::Malformed)?;
        let expiry = u64::from_be_bytes(expiry_bytes);
        self.mac(local, peer, instance_id, expiry)
            .verify_slice(tag)
            .map_err(|_| TokenError::Forged)?;
        if self.now_ms() >= expiry {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_pair_instance_and_expiry() {
        let k = TokenKey::random();
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 5));
        let t = k.issue(a, b, "i-1", 60);
        assert!(k.verify(&t, a, b, "i-1").is_ok());
        assert!(matches!(k.verify(&t, a, b, "i-2"), Err(TokenError::Forged)));
        assert!(matches!(k.verify(&t, b, a, "i-1"), Err(TokenError::Forged)));
        assert!(matches!(
            TokenKey::random().verify(&t, a, b, "i-1"),
            Err(TokenError::Forged)
        ));
        assert!(matches!(
            k.verify("x", a, b, "i-1"),
            Err(TokenError::Malformed)
        ));
        assert!(matches!(
            k.verify(&"A".repeat(55), a, b, "i-1"),
            Err(TokenError::Malformed)
        ));
    }
}
