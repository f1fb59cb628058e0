//! `Filter.N.Name` / `Filter.N.Value.M`: AND across filters, OR within one,
//! `*` and `?` wildcards (`\` escapes), `tag:<key>`, `tag-key`,
//! `tag-value`. Each action names the filters AWS documents for it; any
//! other name is InvalidParameterValue.

use std::collections::BTreeMap;

use crate::error::{Ec2Error, Result};
use crate::query::{clip, Params};

/// Most values one filter may carry (AWS allows 200).
const MAX_VALUES: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(pub Vec<Filter>);

impl Filters {
    /// Parses `Filter.N`, accepting `allowed` names and, when `tagged`, the
    /// tag filters.
    pub fn parse(params: &Params, allowed: &[&str], tagged: bool) -> Result<Filters> {
        let mut out = Vec::new();
        for f in params.structs("Filter")? {
            let name = f.get("Name").unwrap_or_default().to_string();
            let known = allowed.contains(&name.as_str())
                || (tagged
                    && (name == "tag-key"
                        || name == "tag-value"
                        || name.strip_prefix("tag:").is_some_and(|k| !k.is_empty())));
            if !known {
                return Err(Ec2Error::invalid_value(format!(
                    "The filter '{}' is invalid",
                    clip(&name)
                )));
            }
            let values = f.list("Value")?;
            if values.is_empty() {
                return Err(Ec2Error::invalid_value(format!(
                    "The filter '{}' requires at least one value",
                    clip(&name)
                )));
            }
            if values.len() > MAX_VALUES {
                return Err(Ec2Error::invalid_value(format!(
                    "The filter '{}' has more than {MAX_VALUES} values",
                    clip(&name)
                )));
            }
            out.push(Filter { name, values });
        }
        Ok(Filters(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values of one filter, if given (for narrowing before a scan).
    pub fn values(&self, name: &str) -> Option<&[String]> {
        self.0
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.values.as_slice())
    }

    /// Whether an item passes every filter. `field` answers the item's
    /// values for a filter name; tags are matched here.
    pub fn matches(
        &self,
        field: impl Fn(&str) -> Vec<String>,
        tags: &BTreeMap<String, String>,
    ) -> bool {
        self.0.iter().all(|f| {
            let have: Vec<String> = if let Some(k) = f.name.strip_prefix("tag:") {
                tags.get(k).cloned().into_iter().collect()
            } else if f.name == "tag-key" {
                tags.keys().cloned().collect()
            } else if f.name == "tag-value" {
                tags.values().cloned().collect()
            } else {
                field(&f.name)
            };
            f.values
                .iter()
                .any(|pattern| have.iter().any(|v| glob(pattern, v)))
        })
    }
}

/// `*` any run, `?` any one character, `\` takes the next literally.
pub fn glob(pattern: &str, text: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Tok {
        Lit(char),
        One,
        Any,
    }
    let mut toks = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        toks.push(match c {
            '\\' => Tok::Lit(chars.next().unwrap_or('\\')),
            '*' => Tok::Any,
            '?' => Tok::One,
            c => Tok::Lit(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    // Iterative matching with one backtrack point: linear-ish, no recursion.
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match toks.get(p) {
            Some(Tok::Lit(c)) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            Some(Tok::One) => {
                p += 1;
                t += 1;
            }
            Some(Tok::Any) => {
                star = Some((p, t));
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    toks[p..].iter().all(|t| *t == Tok::Any)
}

/// A boolean as EC2 writes it.
pub fn b(v: bool) -> Vec<String> {
    vec![if v { "true" } else { "false" }.to_string()]
}

/// One value.
pub fn one(v: impl Into<String>) -> Vec<String> {
    vec![v.into()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(glob("web-*", "web-1"));
        assert!(glob("*", ""));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*b*", "abc"));
        assert!(!glob("web", "web-1"));
        assert!(glob("a\\*", "a*"));
        assert!(!glob("a\\*", "ab"));
        assert!(glob("*a*a*a*a*b", &("a".repeat(40) + "b")));
        assert!(!glob("*a*a*a*a*b", &"a".repeat(5000)));
        assert!(glob("é?", "éü"));
    }

    #[test]
    fn and_across_or_within_and_tags() {
        let p = Params::parse(
            b"Filter.1.Name=instance-state-name&Filter.1.Value.1=running&Filter.1.Value.2=pending&Filter.2.Name=tag:Name&Filter.2.Value.1=web*",
        );
        let f = Filters::parse(&p, &["instance-state-name"], true).unwrap();
        let mut tags = BTreeMap::new();
        tags.insert("Name".to_string(), "web-1".to_string());
        assert!(f.matches(|_| one("pending"), &tags));
        assert!(!f.matches(|_| one("stopped"), &tags));
        assert!(!f.matches(|_| one("running"), &BTreeMap::new()));
        let kv = Params::parse(b"Filter.1.Name=tag-key&Filter.1.Value.1=Na*&Filter.2.Name=tag-value&Filter.2.Value.1=web-1");
        assert!(Filters::parse(&kv, &[], true)
            .unwrap()
            .matches(|_| vec![], &tags));
    }

    #[test]
    fn unknown_and_malformed_filters_are_rejected() {
        for q in [
            "Filter.1.Name=bogus&Filter.1.Value.1=x",
            "Filter.1.Name=tag:&Filter.1.Value.1=x",
            "Filter.1.Value.1=x",
            "Filter.1.Name=instance-id",
            "Filter.x.Name=instance-id",
        ] {
            let e =
                Filters::parse(&Params::parse(q.as_bytes()), &["instance-id"], true).unwrap_err();
            assert_eq!(e.code, "InvalidParameterValue", "{q}");
        }
        let untagged = Params::parse(b"Filter.1.Name=tag-key&Filter.1.Value.1=x");
        assert!(Filters::parse(&untagged, &[], false).is_err());
    }
}
