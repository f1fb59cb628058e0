//! Helpers shared by the SDK suites.
#![allow(dead_code)] // each suite uses its own subset

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;
use aws_sdk_ec2::types::{Filter, IpPermission, IpRange, Subnet};
use aws_sdk_ec2::Client;
use corral_api_types::{
    Image, Instance, InstancePhase, InstanceStatus, Network, NetworkSpec, Resource,
};
use corral_ec2_api::testing::{seed_project, set_status, start, Keys, TestServer};
use corral_store::ResourceStore;

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

/// A server with project `default` seeded (see `seed_project`), the
/// admin's client, and the seeded image's `ami-` id.
pub async fn start_seeded() -> (TestServer, Client, String) {
    let s = start().await;
    let image = seed_project(&s.store, "default").await;
    let ec2 = client(&s, &s.admin);
    (s, ec2, image)
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

/// One rule: `protocol` ports `from`..=`to` for `cidr`.
pub fn permission(protocol: &str, from: i32, to: i32, cidr: &str) -> IpPermission {
    IpPermission::builder()
        .ip_protocol(protocol)
        .from_port(from)
        .to_port(to)
        .ip_ranges(IpRange::builder().cidr_ip(cidr).build())
        .build()
}

/// RunInstances of one instance of `image`, to add to and send.
pub fn launch(ec2: &Client, image: &str) -> RunInstancesFluentBuilder {
    ec2.run_instances()
        .image_id(image)
        .min_count(1)
        .max_count(1)
}

/// Runs one instance of `image`: its id.
pub async fn run_one(ec2: &Client, image: &str) -> String {
    let out = launch(ec2, image).send().await.unwrap();
    out.instances()[0].instance_id().unwrap().to_string()
}

/// A 1 GiB volume in `corral-1a`: its id.
pub async fn create_volume(ec2: &Client) -> String {
    let out = ec2
        .create_volume()
        .availability_zone("corral-1a")
        .size(1)
        .send()
        .await
        .unwrap();
    out.volume_id().unwrap().to_string()
}

/// A security group, in `vpc` if given: its id.
pub async fn create_group(
    ec2: &Client,
    name: &str,
    description: &str,
    vpc: Option<&str>,
) -> String {
    let out = ec2
        .create_security_group()
        .group_name(name)
        .description(description)
        .set_vpc_id(vpc.map(str::to_string))
        .send()
        .await
        .unwrap();
    out.group_id().unwrap().to_string()
}

/// A VPC of `cidr`: its id.
pub async fn create_vpc(ec2: &Client, cidr: &str) -> String {
    let out = ec2.create_vpc().cidr_block(cidr).send().await.unwrap();
    out.vpc().unwrap().vpc_id().unwrap().to_string()
}

/// A subnet of `cidr` in `vpc`, as CreateSubnet answers it.
pub async fn create_subnet(ec2: &Client, vpc: &str, cidr: &str) -> Subnet {
    let out = ec2
        .create_subnet()
        .vpc_id(vpc)
        .cidr_block(cidr)
        .send()
        .await
        .unwrap();
    out.subnet().unwrap().clone()
}

/// The id of the project's default VPC.
pub async fn default_vpc(ec2: &Client) -> String {
    let out = ec2
        .describe_vpcs()
        .filters(filter("is-default", &["true"]))
        .send()
        .await
        .unwrap();
    out.vpcs()[0].vpc_id().unwrap().to_string()
}

/// A Network `name` of `cidr` in `project`, not yet stored.
pub fn network(project: &str, name: &str, cidr: &str) -> Network {
    let spec = NetworkSpec {
        cidr: cidr.into(),
        ..Default::default()
    };
    Network::new(project, name, spec)
}

/// Stores a Network `name` of `cidr` in `project` (`public` is the
/// project's address pool).
pub async fn create_network(store: &ResourceStore, project: &str, name: &str, cidr: &str) {
    store.create(&network(project, name, cidr)).await.unwrap();
}

/// Stores a machine Image `name` in `project`, its source
/// `https://example.com/<name>.img`: its `ami-` id.
pub async fn create_image(store: &ResourceStore, project: &str, name: &str) -> String {
    let mut img = Image::new(project, name, Default::default());
    img.spec.source.url = Some(format!("https://example.com/{name}.img"));
    let img = store.create(&img).await.unwrap();
    corral_api_types::ec2::image_id(img.spec.image_type, &img.meta().uid)
}

/// Every `K` in `project`, as stored.
pub async fn objects<K: Resource>(store: &ResourceStore, project: &str) -> Vec<K> {
    store
        .list::<K>(Some(project), Default::default())
        .await
        .unwrap()
        .items
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
