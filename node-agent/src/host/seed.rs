//! The NoCloud data of an instance (cloud-init's `meta-data` and
//! `user-data`): what the agent asks a host to seed a guest with. The
//! YAML is written here, quoted so no tenant text can add a key.

/// The NoCloud data of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub instance_id: String,
    pub hostname: String,
    pub public_keys: Vec<String>,
    pub user_data: Vec<u8>,
}

/// A YAML scalar: plain when that is unambiguous, else a JSON string
/// (JSON strings are YAML).
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.ends_with(':')
        && s.chars().all(|c| !c.is_control())
        && !s.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@`".contains(c) || c.is_whitespace())
        && !s.ends_with(char::is_whitespace);
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("a string serializes")
    }
}

impl Seed {
    /// NoCloud `meta-data`.
    pub fn meta_data(&self) -> String {
        let mut out = format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            yaml_scalar(&self.instance_id),
            yaml_scalar(&self.hostname)
        );
        if !self.public_keys.is_empty() {
            out.push_str("public-keys:\n");
            for k in &self.public_keys {
                out.push_str(&format!("  - {}\n", yaml_scalar(k.trim())));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_data_quotes_what_yaml_would_misread() {
        let s = Seed {
            instance_id: "i-0123456789abcdef0".into(),
            hostname: "web-1".into(),
            public_keys: vec![
                "ssh-ed25519 AAAAC3Nza admin@demo".into(),
                "ssh-rsa AAAAB3 me #1: laptop".into(),
            ],
            user_data: Vec::new(),
        };
        assert_eq!(
            s.meta_data(),
            "instance-id: i-0123456789abcdef0\nlocal-hostname: web-1\npublic-keys:\n  - ssh-ed25519 AAAAC3Nza admin@demo\n  - \"ssh-rsa AAAAB3 me #1: laptop\"\n"
        );
        let parsed: serde_json::Value = yaml_serde::from_str(&s.meta_data()).unwrap();
        assert_eq!(parsed["public-keys"][1], "ssh-rsa AAAAB3 me #1: laptop");
        assert_eq!(yaml_scalar("- x"), "\"- x\"");
        assert_eq!(yaml_scalar("a\nb"), "\"a\\nb\"");
    }
}
