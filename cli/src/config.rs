//! Client configuration: where the server is and who we are.
//!
//! `~/.config/corral/config.yaml` (or `$CORRAL_CONFIG`), overridden by
//! `CORRAL_SERVER`, `CORRAL_TOKEN`, `CORRAL_PROJECT` and `CORRAL_CA_FILE`. `corral up` writes
//! it on first start, with an AWS-style credentials file and config beside
//! it for awscli/boto3, and an rc file to source.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientConfig {
    /// `https://127.0.0.1:8774`
    pub server: String,
    pub token: String,
    /// Default project for commands that do not name one.
    #[serde(default)]
    pub project: String,
    #[serde(default)]
    pub user: String,
    /// EC2 endpoint, for the rc file and `corral credentials`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ec2_endpoint: String,
    /// The CA (PEM file) trusted for an `https://` server instead of the
    /// system's roots; `corral up` writes its own beside this file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_file: String,
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// Directory holding the client files.
pub fn config_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("CORRAL_CONFIG") {
        let p = PathBuf::from(p);
        if let Some(parent) = p.parent() {
            return parent.to_path_buf();
        }
    }
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".config"))
        .join("corral")
}

pub fn config_path() -> PathBuf {
    std::env::var_os("CORRAL_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| config_dir().join("config.yaml"))
}

/// Default data directory of `corral up`.
pub fn default_data_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("CORRAL_DATA_DIR") {
        return PathBuf::from(p);
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".local/share"))
        .join("corral")
}

impl ClientConfig {
    /// The file's settings with the environment's overrides.
    pub fn load() -> Result<ClientConfig> {
        let path = config_path();
        let mut config = match std::fs::read_to_string(&path) {
            Ok(text) => yaml_serde::from_str::<ClientConfig>(&text)
                .with_context(|| format!("reading {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ClientConfig::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if let Ok(v) = std::env::var("CORRAL_SERVER") {
            config.server = v;
        }
        if let Ok(v) = std::env::var("CORRAL_TOKEN") {
            config.token = v;
        }
        if let Ok(v) = std::env::var("CORRAL_PROJECT") {
            config.project = v;
        }
        config.env_ca_file();
        if config.server.is_empty() {
            config.server = "https://127.0.0.1:8774".into();
        }
        if config.token.is_empty() {
            anyhow::bail!(
                "no credentials: run `corral up` (writes {}), or set CORRAL_TOKEN",
                path.display()
            );
        }
        Ok(config)
    }

    /// `CORRAL_CA_FILE` overrides the file's CA.
    pub fn env_ca_file(&mut self) {
        if let Ok(v) = std::env::var("CORRAL_CA_FILE") {
            self.ca_file = v;
        }
    }

    /// The CA's PEM, when one is configured.
    pub fn ca_pem(&self) -> Result<Option<String>> {
        if self.ca_file.is_empty() {
            return Ok(None);
        }
        std::fs::read_to_string(&self.ca_file)
            .map(Some)
            .with_context(|| {
                format!(
                    "reading the server's CA {} (caFile, CORRAL_CA_FILE)",
                    self.ca_file
                )
            })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        write_private(path, &yaml_serde::to_string(self)?)
    }
}

/// Writes a file readable by its owner only (it holds secrets).
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Everything a user needs to talk to Corral with every kind of client.
pub struct Credentials<'a> {
    pub server: &'a str,
    pub ec2_endpoint: &'a str,
    pub region: &'a str,
    pub user: &'a str,
    pub project: &'a str,
    pub token: &'a str,
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    /// The CA file clients trust for `https://` endpoints ("" for none).
    pub ca_file: &'a str,
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Credentials<'_> {
    /// An rc file to `source`: euca2ools' EC2_* variables, awscli/boto3's
    /// AWS_* ones and the CLI's CORRAL_* ones.
    pub fn rc_file(&self) -> String {
        let q = shell_quote;
        let ca = if self.ca_file.is_empty() {
            String::new()
        } else {
            format!(
                "export CORRAL_CA_FILE={ca}\nexport AWS_CA_BUNDLE={ca}\n",
                ca = q(self.ca_file)
            )
        };
        format!(
            "# Corral credentials for user {user} (project {project}). Source this file.\n\
             export CORRAL_SERVER={server}\n\
             export CORRAL_TOKEN={token}\n\
             export CORRAL_PROJECT={project_q}\n\
             export EC2_URL={ec2}\n\
             export EC2_ACCESS_KEY={ak}\n\
             export EC2_SECRET_KEY={sk}\n\
             export AWS_ACCESS_KEY_ID={ak}\n\
             export AWS_SECRET_ACCESS_KEY={sk}\n\
             export AWS_ENDPOINT_URL_EC2={ec2}\n\
             export AWS_DEFAULT_REGION={region}\n\
             export AWS_REGION={region}\n\
             {ca}",
            user = self.user,
            project = self.project,
            project_q = q(self.project),
            server = q(self.server),
            token = q(self.token),
            ec2 = q(self.ec2_endpoint),
            ak = q(self.access_key_id),
            sk = q(self.secret_access_key),
            region = q(self.region),
        )
    }

    /// `~/.aws/credentials`-style profile section.
    pub fn aws_credentials(&self, profile: &str) -> String {
        format!(
            "[{profile}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            self.access_key_id, self.secret_access_key
        )
    }

    /// `~/.aws/config`-style profile section with the EC2 endpoint.
    pub fn aws_config(&self, profile: &str) -> String {
        let header = if profile == "default" {
            "[default]".to_string()
        } else {
            format!("[profile {profile}]")
        };
        let ca = if self.ca_file.is_empty() {
            String::new()
        } else {
            format!("ca_bundle = {}\n", self.ca_file)
        };
        format!(
            "{header}\nregion = {}\n{ca}services = {profile}-services\n\n[services {profile}-services]\nec2 =\n  endpoint_url = {}\n",
            self.region, self.ec2_endpoint
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rc_file_quotes_values_for_the_shell() {
        let c = Credentials {
            server: "http://127.0.0.1:8774",
            ec2_endpoint: "http://127.0.0.1:8773",
            region: "corral-1",
            user: "admin",
            project: "default",
            token: "crl_x",
            access_key_id: "AKIAX",
            secret_access_key: "a'b/c+d",
            ca_file: "/home/a b/ca.crt",
        };
        let rc = c.rc_file();
        assert!(rc.contains("export EC2_SECRET_KEY='a'\\''b/c+d'\n"), "{rc}");
        assert!(rc.contains("export AWS_ENDPOINT_URL_EC2='http://127.0.0.1:8773'\n"));
        assert!(rc.contains("export CORRAL_TOKEN='crl_x'\n"));
        let cfg = c.aws_config("corral");
        assert!(cfg.starts_with("[profile corral]\n"));
        assert!(cfg.contains("endpoint_url = http://127.0.0.1:8773"));
        assert!(
            rc.contains("export AWS_CA_BUNDLE='/home/a b/ca.crt'\n"),
            "{rc}"
        );
        assert!(
            rc.contains("export CORRAL_CA_FILE='/home/a b/ca.crt'\n"),
            "{rc}"
        );
        assert!(cfg.contains("\nca_bundle = /home/a b/ca.crt\n"), "{cfg}");
    }
}
