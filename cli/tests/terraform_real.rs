//! The real terraform (1.11) with the real hashicorp/aws provider (5.100.0)
//! against a real `corral up` — its EC2 façade, its controllers and its
//! node agent on a simulated host: a configuration with a VPC, a subnet in
//! a named zone, a security group (ingress tcp/22 and the provider's
//! default egress handling), a key pair, an instance in that zone, an EBS
//! volume attached to it and an Elastic IP on it. `terraform apply` makes
//! it, a second `terraform plan -detailed-exitcode` must show no changes,
//! and `terraform destroy` must leave nothing of it in the project.
//!
//! Corral has no internet gateways or route tables (a Network is a VPC
//! with one subnet), so `aws_internet_gateway`, `aws_route_table` and
//! `aws_route_table_association` are not in the configuration.
//!
//! There is no registry to download from: terraform installs the provider
//! from the filesystem mirror at `/opt/tf-plugins` (or `$TF_PLUGIN_MIRROR`)
//! through a CLI config file of its own. `terraform` on PATH (or
//! `$TERRAFORM`) and the mirror are required: a missing one fails the
//! test with where they are expected.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{write, Out, Server};

const PROVIDER_VERSION: &str = "5.100.0";

/// Environment of the test run that must not reach terraform or its
/// provider, beyond `common::AWS_ENV` (terraform's own): everything comes from the configuration this test writes.
const LEAKS: &[&str] = &[
    "TF_CLI_CONFIG_FILE",
    "TF_PLUGIN_CACHE_DIR",
    "TF_DATA_DIR",
    "TF_WORKSPACE",
    "TF_INPUT",
];

fn terraform_bin() -> String {
    std::env::var("TERRAFORM").unwrap_or_else(|_| "terraform".into())
}

fn mirror() -> PathBuf {
    std::env::var_os("TF_PLUGIN_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/tf-plugins"))
}

/// terraform and the provider in the mirror, or a failure saying where
/// they are expected.
fn need_terraform() {
    let bin = terraform_bin();
    let out = Command::new(&bin).arg("version").output();
    let ok = out.as_ref().map(|o| o.status.success()).unwrap_or(false);
    assert!(
        ok,
        "`{bin} version` failed ({out:?}): terraform >= 1.5 must be on PATH \
         (e.g. /usr/local/bin/terraform) or named by $TERRAFORM"
    );
    let dir = mirror()
        .join("registry.terraform.io/hashicorp/aws")
        .join(PROVIDER_VERSION)
        .join("linux_amd64");
    let has_provider = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("terraform-provider-aws")
            })
        })
        .unwrap_or(false);
    assert!(
        has_provider,
        "no terraform-provider-aws in {}: the hashicorp/aws {PROVIDER_VERSION} provider must be \
         in a filesystem mirror at /opt/tf-plugins (or $TF_PLUGIN_MIRROR), laid out as \
         registry.terraform.io/hashicorp/aws/{PROVIDER_VERSION}/linux_amd64/terraform-provider-aws_*",
        dir.display()
    );
}

/// The `export NAME='value'` lines of an rc file.
fn rc_vars(rc: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(rc).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(v)
                .replace(r"'\''", "'");
            (k.to_string(), v)
        })
        .collect()
}

/// Project `tf` with the network `default` and the image `tiny`, and user
/// `tess`'s rc file.
fn setup(s: &Server, dir: &Path) -> PathBuf {
    s.corral(&["project", "create", "tf"]).ok();
    s.corral(&["user", "create", "tess", "--project", "tf"])
        .ok();
    let rc = dir.join("tess.rc");
    s.corral(&["credentials", "--user", "tess", "-o", rc.to_str().unwrap()])
        .ok();
    let manifests = write(
        dir,
        "tf.yaml",
        "apiVersion: corral/v1\nkind: Network\nmetadata: {name: default, project: tf}\n\
         spec: {cidr: 172.31.0.0/16}\n---\n\
         apiVersion: corral/v1\nkind: Image\nmetadata: {name: tiny, project: tf}\n\
         spec: {source: {upload: true}, format: raw}\n",
    );
    s.corral(&["apply", "-f", manifests.to_str().unwrap()]).ok();
    rc
}

const PUBLIC_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIDDMzm7kr4xr90nxuozkdJRreSNqcwAy2KnpvcJp8Uv tf";

/// The configuration: everything the acceptance point names that Corral
/// has (no internet gateway, no route tables).
fn main_tf(region: &str, zone: &str, endpoint: &str, ak: &str, sk: &str, ca: &str) -> String {
    format!(
        r#"terraform {{
  required_providers {{
    aws = {{
      source  = "hashicorp/aws"
      version = "{PROVIDER_VERSION}"
    }}
  }}
}}

provider "aws" {{
  region                      = "{region}"
  access_key                  = "{ak}"
  secret_key                  = "{sk}"
  custom_ca_bundle            = "{ca}"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  max_retries                 = 2
  endpoints {{
    ec2 = "{endpoint}"
  }}
}}

data "aws_ami" "tiny" {{
  owners = ["self"]
  filter {{
    name   = "name"
    values = ["tiny"]
  }}
}}

resource "aws_vpc" "main" {{
  cidr_block = "10.20.0.0/16"
  tags = {{
    Name = "tf-vpc"
  }}
}}

resource "aws_subnet" "main" {{
  vpc_id            = aws_vpc.main.id
  cidr_block        = "10.20.1.0/24"
  availability_zone = "{zone}"
  tags = {{
    Name = "tf-subnet"
  }}
  timeouts {{
    create = "1m"
    delete = "1m"
  }}
}}

resource "aws_security_group" "ssh" {{
  name        = "tf-ssh"
  description = "ssh in"
  vpc_id      = aws_vpc.main.id

  ingress {{
    from_port   = 22
    to_port     = 22
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }}
  timeouts {{
    create = "1m"
    delete = "1m"
  }}
}}

resource "aws_key_pair" "me" {{
  key_name   = "tf-key"
  public_key = "{PUBLIC_KEY}"
}}

resource "aws_instance" "web" {{
  ami                    = data.aws_ami.tiny.id
  instance_type          = "m1.tiny"
  subnet_id              = aws_subnet.main.id
  vpc_security_group_ids = [aws_security_group.ssh.id]
  key_name               = aws_key_pair.me.key_name
  availability_zone      = "{zone}"
  tags = {{
    Name = "tf-web"
  }}
  timeouts {{
    create = "3m"
    update = "3m"
    delete = "3m"
  }}
}}

resource "aws_ebs_volume" "data" {{
  availability_zone = "{zone}"
  size              = 1
  tags = {{
    Name = "tf-data"
  }}
  timeouts {{
    create = "3m"
    delete = "3m"
  }}
}}

resource "aws_volume_attachment" "data" {{
  device_name = "/dev/sdf"
  volume_id   = aws_ebs_volume.data.id
  instance_id = aws_instance.web.id
  timeouts {{
    create = "3m"
    delete = "3m"
  }}
}}

resource "aws_eip" "web" {{
  domain   = "vpc"
  instance = aws_instance.web.id
}}

output "vpc" {{
  value = aws_vpc.main.id
}}
output "instance" {{
  value = aws_instance.web.id
}}
output "volume" {{
  value = aws_ebs_volume.data.id
}}
output "eip" {{
  value = aws_eip.web.public_ip
}}
"#
    )
}

/// `terraform ARGS` in `dir` with its own CLI config (the mirror only).
fn terraform(s: &Server, dir: &Path, args: &[&str]) -> Out {
    let mut c = Command::new(terraform_bin());
    for v in common::AWS_ENV.iter().chain(LEAKS) {
        c.env_remove(v);
    }
    c.args(args)
        .current_dir(dir)
        .env("HOME", &s.home)
        .env("TF_CLI_CONFIG_FILE", dir.join("terraform.rc"))
        .env("TF_IN_AUTOMATION", "1")
        .env("TF_INPUT", "0")
        .env("CHECKPOINT_DISABLE", "1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("TF_LOG", "DEBUG")
        .env("TF_LOG_PATH", dir.join("terraform.log"))
        .stdin(Stdio::null());
    let started = Instant::now();
    let out = Out::from(c.output().expect("running terraform"));
    eprintln!(
        "terraform {} -> {} in {:?}",
        args.join(" "),
        out.code,
        started.elapsed()
    );
    out
}

/// The last EC2 calls of terraform's debug log, for a failure message.
fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("terraform.log")).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("[ERROR]") || l.contains("api error"))
        .map(|l| match l.char_indices().nth(600) {
            Some((at, _)) => &l[..at],
            None => l,
        })
        .collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[track_caller]
fn must(out: &Out, dir: &Path, what: &str) {
    assert_eq!(
        out.code,
        0,
        "{what} failed:\n{}\n{}\n--- log ---\n{}",
        out.stdout,
        out.stderr,
        log_tail(dir)
    );
}

/// Names of the project's objects of one kind, but for deleted ones (a
/// terminated instance stays visible to EC2 for a while, as on AWS, with
/// its deletion under way).
fn names_of(s: &Server, plural: &str) -> Vec<String> {
    let mut list = s.corral(&["get", plural, "-p", "tf", "-o", "json"]).json();
    if let Some(items) = list["items"].as_array_mut() {
        items.retain(|i| i["metadata"]["deletionTimestamp"].is_null());
    }
    common::names(&list)
}

#[test]
fn terraform_applies_plans_nothing_and_destroys_through_corral_up() {
    need_terraform();
    let s = Server::start();
    let dir = s.scratch("terraform");
    let rc = setup(&s, &dir);
    let vars = rc_vars(&rc);
    let get = |k: &str| {
        vars.get(k)
            .unwrap_or_else(|| panic!("no {k} in {}", rc.display()))
            .clone()
    };
    let region = get("AWS_REGION");
    let endpoint = get("AWS_ENDPOINT_URL_EC2");
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let zone = format!("{region}a");

    // (`before[1]` is the security groups.)
    let before: Vec<(&str, Vec<String>)> = [
        "networks",
        "securitygroups",
        "keypairs",
        "images",
        "volumes",
        "snapshots",
        "instances",
        "addresses",
    ]
    .into_iter()
    .map(|p| (p, names_of(&s, p)))
    .collect();

    write(
        &dir,
        "terraform.rc",
        &format!(
            "provider_installation {{\n  filesystem_mirror {{\n    path    = \"{}\"\n    \
             include = [\"registry.terraform.io/hashicorp/aws\"]\n  }}\n}}\n",
            mirror().display()
        ),
    );
    write(
        &dir,
        "main.tf",
        &main_tf(
            &region,
            &zone,
            &endpoint,
            &get("AWS_ACCESS_KEY_ID"),
            &get("AWS_SECRET_ACCESS_KEY"),
            &get("AWS_CA_BUNDLE"),
        ),
    );

    let init = terraform(&s, &dir, &["init", "-no-color"]);
    must(&init, &dir, "terraform init");
    assert!(
        init.stdout
            .contains(&format!("hashicorp/aws v{PROVIDER_VERSION}")),
        "{init:#?}"
    );

    let apply = terraform(&s, &dir, &["apply", "-auto-approve", "-no-color"]);
    must(&apply, &dir, "terraform apply");
    assert!(
        apply.stdout.contains("Apply complete! Resources: 8 added"),
        "{}",
        apply.stdout
    );
    let outputs = terraform(&s, &dir, &["output", "-json"]);
    must(&outputs, &dir, "terraform output");
    let outputs = outputs.json();
    let instance = outputs["instance"]["value"].as_str().unwrap().to_string();
    assert!(instance.starts_with("i-"), "{outputs}");

    // What terraform made is what Corral has.
    let inst = s
        .corral(&["get", "instances", "-p", "tf", "-o", "json"])
        .json();
    assert_eq!(inst["items"].as_array().map(Vec::len), Some(1), "{inst}");
    assert!(names_of(&s, "keypairs").contains(&"tf-key".to_string()));
    assert_eq!(names_of(&s, "volumes").len(), 1);
    assert_eq!(names_of(&s, "addresses").len(), 1);
    assert_eq!(names_of(&s, "networks").len(), 2);

    let plan = terraform(
        &s,
        &dir,
        &["plan", "-detailed-exitcode", "-no-color", "-input=false"],
    );
    assert_eq!(
        plan.code,
        0,
        "a second plan must show no changes (exit 0; 2 is changes):\n{}\n{}\n--- log ---\n{}",
        plan.stdout,
        plan.stderr,
        log_tail(&dir)
    );
    assert!(plan.stdout.contains("No changes."), "{}", plan.stdout);

    let destroy = terraform(&s, &dir, &["destroy", "-auto-approve", "-no-color"]);
    must(&destroy, &dir, "terraform destroy");
    assert!(
        destroy
            .stdout
            .contains("Destroy complete! Resources: 8 destroyed"),
        "{}",
        destroy.stdout
    );

    // Nothing of it is left: every kind is back to what the test made,
    // plus the default VPC's (the Network `default`'s) own security group,
    // which the façade makes when EC2 first looks at that VPC.
    let groups = s
        .corral(&["get", "securitygroups", "-p", "tf", "-o", "json"])
        .json();
    for g in groups["items"].as_array().into_iter().flatten() {
        let name = g["metadata"]["name"].as_str().unwrap_or_default();
        if before[1].1.iter().any(|n| n == name) {
            continue;
        }
        let ann = &g["metadata"]["annotations"];
        assert!(
            name == "default"
                && ann["ec2.corral/default-group"].is_string()
                && ann["ec2.corral/vpc-id"].is_string()
                && ann["ec2.corral/vpc-id"] != outputs["vpc"]["value"],
            "a security group left after destroy that is not the default VPC's own: {g}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (plural, was) in &before {
        let mut was = was.clone();
        if *plural == "securitygroups" {
            was.push("default".into());
            was.sort();
            was.dedup();
        }
        loop {
            let now = names_of(&s, plural);
            if now == was {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{plural} after destroy: {now:?}, before apply: {was:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
