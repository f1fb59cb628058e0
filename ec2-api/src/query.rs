//! The Query protocol's parameters: `Name=value` pairs from the URL and a
//! form body; lists as `X.N`, structures as `X.N.Field`.

use std::collections::BTreeMap;

use crate::error::{Ec2Error, Result};

/// Largest accepted value of the `N` in `X.N` (bounds work per request).
const MAX_INDEX: u64 = 10_000;

/// The request's parameters. Names are case-sensitive, as in EC2. A name
/// given twice keeps its first value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    map: BTreeMap<String, String>,
}

impl Params {
    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Params {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            map.entry(k).or_insert(v);
        }
        Params { map }
    }

    /// Parses `a=1&b=2` (URL query or form body).
    pub fn parse(raw: &[u8]) -> Params {
        Params::from_pairs(
            form_urlencoded::parse(raw).map(|(k, v)| (k.into_owned(), v.into_owned())),
        )
    }

    pub fn insert_missing(&mut self, other: Params) {
        for (k, v) in other.map {
            self.map.entry(k).or_insert(v);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.map.iter()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    /// A non-empty value.
    pub fn get_nonempty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    pub fn required(&self, name: &str) -> Result<&str> {
        self.get_nonempty(name)
            .ok_or_else(|| Ec2Error::missing(name))
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(Ec2Error::invalid_value(format!(
                "Value ({}) for parameter {name} is invalid. Expected: 'true' or 'false'.",
                clip(v)
            ))),
        }
    }

    pub fn int(&self, name: &str) -> Result<Option<i64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| {
                Ec2Error::invalid_value(format!(
                    "Value ({}) for parameter {name} is invalid. Expected an integer.",
                    clip(v)
                ))
            }),
        }
    }

    /// An integer within `[min, max]`.
    pub fn int_in(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>> {
        match self.int(name)? {
            Some(n) if n < min || n > max => Err(Ec2Error::invalid_value(format!(
                "Value ({n}) for parameter {name} is invalid. Expected a value between {min} and {max}."
            ))),
            other => Ok(other),
        }
    }

    /// The indices `N` of `prefix.N...` parameters, in numeric order.
    fn indices(&self, prefix: &str) -> Result<Vec<u64>> {
        let dotted = format!("{prefix}.");
        let mut out = Vec::new();
        for key in self.map.range(dotted.clone()..) {
            let Some(rest) = key.0.strip_prefix(&dotted) else {
                break;
            };
            let n = rest.split('.').next().unwrap_or("");
            let idx = n
                .parse::<u64>()
                .ok()
                .filter(|i| (1..=MAX_INDEX).contains(i))
                .ok_or_else(|| {
                    Ec2Error::invalid_value(format!(
                        "Invalid list index in parameter {}",
                        clip(key.0)
                    ))
                })?;
            if out.last() != Some(&idx) && !out.contains(&idx) {
                out.push(idx);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The values of `prefix.1`, `prefix.2`, ... in index order.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let dotted = format!("{prefix}.");
        let mut items: Vec<(u64, String)> = Vec::new();
        for (k, v) in self.map.range(dotted.clone()..) {
            let Some(rest) = k.strip_prefix(&dotted) else {
                break;
            };
            match rest.parse::<u64>() {
                Ok(i) if (1..=MAX_INDEX).contains(&i) => items.push((i, v.clone())),
                _ if rest.contains('.') => {}
                _ => {
                    return Err(Ec2Error::invalid_value(format!(
                        "Invalid list index in parameter {}",
                        clip(k)
                    )))
                }
            }
        }
        items.sort_by_key(|(i, _)| *i);
        Ok(items.into_iter().map(|(_, v)| v).collect())
    }

    /// The structures `prefix.N.*`, each as its own `Params` with the
    /// `prefix.N.` stripped, in index order.
    pub fn structs(&self, prefix: &str) -> Result<Vec<Params>> {
        let mut out = Vec::new();
        for idx in self.indices(prefix)? {
            let p = format!("{prefix}.{idx}.");
            let mut map = BTreeMap::new();
            for (k, v) in self.map.range(p.clone()..) {
                let Some(rest) = k.strip_prefix(&p) else {
                    break;
                };
                map.insert(rest.to_string(), v.clone());
            }
            if !map.is_empty() {
                out.push(Params { map });
            }
        }
        Ok(out)
    }

    /// The sub-structure `prefix.*` (e.g. `Placement.AvailabilityZone`).
    pub fn sub(&self, prefix: &str) -> Params {
        let p = format!("{prefix}.");
        let mut map = BTreeMap::new();
        for (k, v) in self.map.range(p.clone()..) {
            let Some(rest) = k.strip_prefix(&p) else {
                break;
            };
            map.insert(rest.to_string(), v.clone());
        }
        Params { map }
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The parameters that describe what a request does: everything but
    /// the signature, its metadata and the ClientToken/DryRun flags, in a
    /// canonical order. Used to recognise a retried request.
    pub fn canonical_for_idempotency(&self) -> String {
        const SKIP: &[&str] = &[
            "ClientToken",
            "DryRun",
            "Signature",
            "SignatureMethod",
            "SignatureVersion",
            "AWSAccessKeyId",
            "Timestamp",
            "Expires",
            "Version",
        ];
        let mut out = String::new();
        for (k, v) in &self.map {
            if SKIP.contains(&k.as_str()) || k.starts_with("X-Amz-") {
                continue;
            }
            out.push_str(k);
            out.push('=');
            out.push_str(v);
            out.push('\n');
        }
        out
    }
}

/// A value shortened for an error message.
pub fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Params {
        Params::parse(s.as_bytes())
    }

    #[test]
    fn lists_and_structs() {
        let q = p("InstanceId.2=b&InstanceId.10=c&InstanceId.1=a&Filter.2.Name=y&Filter.1.Name=x&Filter.1.Value.2=2&Filter.1.Value.1=1&Action=X");
        assert_eq!(q.list("InstanceId").unwrap(), ["a", "b", "c"]);
        let f = q.structs("Filter").unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].get("Name"), Some("x"));
        assert_eq!(f[0].list("Value").unwrap(), ["1", "2"]);
        assert_eq!(f[1].get("Name"), Some("y"));
        assert!(q.list("Nothing").unwrap().is_empty());
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        for bad in [
            "InstanceId.0=a",
            "InstanceId.x=a",
            "InstanceId.99999999999999999999999=a",
            "InstanceId.-1=a",
            "InstanceId.=a",
        ] {
            assert!(p(bad).list("InstanceId").is_err(), "{bad}");
        }
        for bad in ["Filter.0.Name=a", "Filter.a.Name=b", "Filter..Name=x"] {
            assert!(p(bad).structs("Filter").is_err(), "{bad}");
        }
        assert!(p("DryRun=yes").bool("DryRun").is_err());
        assert!(p("MaxCount=1e9").int("MaxCount").is_err());
        assert!(p("MaxCount=99999999999999999999").int("MaxCount").is_err());
        assert!(p("MaxResults=4").int_in("MaxResults", 5, 1000).is_err());
        assert_eq!(p("%ZZ=%&&=&a").get("%ZZ"), Some("%"));
        assert_eq!(p("DryRun=TRUE").bool("DryRun").unwrap(), Some(true));
    }

    #[test]
    fn canonical_form_ignores_auth_and_token() {
        let a = p("Action=RunInstances&ImageId=ami-1&ClientToken=x&Signature=s&X-Amz-Date=1");
        let b = p("ImageId=ami-1&Action=RunInstances&ClientToken=y");
        assert_eq!(a.canonical_for_idempotency(), b.canonical_for_idempotency());
        assert_ne!(
            a.canonical_for_idempotency(),
            p("Action=RunInstances&ImageId=ami-2").canonical_for_idempotency()
        );
    }
}
