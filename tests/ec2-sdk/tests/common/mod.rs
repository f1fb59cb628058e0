//! Helpers shared by the SDK suites.
#![allow(dead_code)] // each suite uses its own subset

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::Filter;
use aws_sdk_ec2::Client;
use corral_api_types::{Instance, InstancePhase, InstanceStatus};
use corral_ec2_api::testing::{set_status, Keys, TestServer};

/// The SDK as a user configures it for Corral: the endpoint over TLS,
/// trusting the server's CA (what `AWS_CA_BUNDLE` gives other SDKs).
pub fn client(s: &TestServer, k: &Keys) -> Client {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    let trust = TrustStore::empty()
        .with_native_roots(false)
        .with_pem_certificate(s.ca_pem.as_bytes());
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(
            TlsContext::builder()
                .with_trust_store(trust)
                .build()
                .expect("TLS context"),
        )
        .build_https();
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new("corral-1"))
        .endpoint_url(&s.url)
        .credentials_provider(Credentials::new(&k.id, &k.secret, None, None, "test"))
        .build();
    Client::from_conf(conf)
}

pub fn code<E: ProvideErrorMetadata>(r: Result<impl std::fmt::Debug, E>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code().unwrap_or("<none>").to_string(),
    }
}

pub fn filter(name: &str, values: &[&str]) -> Filter {
    let mut f = Filter::builder().name(name);
    for v in values {
        f = f.values(*v);
    }
    f.build()
}

pub async fn set_phase(s: &TestServer, project: &str, id: &str, phase: InstancePhase) {
    set_status::<Instance>(
        &s.store,
        project,
        id,
        InstanceStatus {
            phase,
            ..Default::default()
        },
    )
    .await;
}
