//! MaxResults / NextToken. Items are sorted by a stable key (the EC2 id);
//! a token names the last key returned, so the next page starts after it
//! whatever was created or deleted in between. The last page has no token.

use base64::Engine;

use crate::error::{Ec2Error, Result};
use crate::query::Params;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub max: Option<usize>,
    pub after: Option<String>,
}

const ENGINE: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn invalid_token() -> Ec2Error {
    Ec2Error::client(
        "InvalidNextToken",
        "The specified pagination token is not valid.",
    )
}

impl Page {
    /// Reads MaxResults (`min`..=1000) and NextToken. `ids_param` names the
    /// id list of the action: AWS refuses ids together with MaxResults.
    pub fn parse(params: &Params, ids_given: bool, ids_param: &str, min: i64) -> Result<Page> {
        let max = params.int("MaxResults")?;
        if let Some(m) = max {
            if ids_given {
                return Err(Ec2Error::invalid_combination(format!(
                    "The parameter {ids_param} cannot be used with the parameter maxResults"
                )));
            }
            if !(min..=1000).contains(&m) {
                return Err(Ec2Error::invalid_value(format!(
                    "Value ( {m} ) for parameter maxResults is invalid. Expect a value between {min} and 1000."
                )));
            }
        }
        let after = match params.get_nonempty("NextToken") {
            None => None,
            Some(t) => {
                let raw = ENGINE.decode(t).map_err(|_| invalid_token())?;
                let s = String::from_utf8(raw).map_err(|_| invalid_token())?;
                let key = s.strip_prefix("v1:").ok_or_else(invalid_token)?;
                if key.is_empty() || key.len() > 256 {
                    return Err(invalid_token());
                }
                Some(key.to_string())
            }
        };
        Ok(Page {
            max: max.map(|m| m as usize),
            after,
        })
    }

    /// The page of `items` (sorted by `key`), and the token for the next.
    pub fn apply<T>(&self, items: Vec<T>, key: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
        let mut rest: Vec<T> = match &self.after {
            Some(after) => items.into_iter().filter(|i| key(i) > *after).collect(),
            None => items,
        };
        match self.max {
            Some(m) if rest.len() > m => {
                rest.truncate(m);
                let last = rest.last().map(&key).unwrap_or_default();
                (rest, Some(ENGINE.encode(format!("v1:{last}"))))
            }
            _ => (rest, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_stable_and_the_last_has_no_token() {
        let items: Vec<String> = (0..12).map(|i| format!("i-{i:02}")).collect();
        let mut page = Page::parse(&Params::parse(b"MaxResults=5"), false, "x", 5).unwrap();
        let (a, t) = page.apply(items.clone(), |s| s.clone());
        assert_eq!(a.len(), 5);
        page.after = Page::parse(
            &Params::parse(format!("NextToken={}", t.unwrap()).as_bytes()),
            false,
            "x",
            5,
        )
        .unwrap()
        .after;
        // Deleting an item already returned does not shift the next page.
        let fewer: Vec<String> = items.iter().filter(|s| *s != "i-01").cloned().collect();
        let (b, t2) = page.apply(fewer, |s| s.clone());
        assert_eq!(b[0], "i-05");
        page.after = Some(b.last().unwrap().clone());
        let (c, t3) = page.apply(items.clone(), |s| s.clone());
        assert!(t2.is_some());
        assert_eq!(c, ["i-10", "i-11"]);
        assert!(t3.is_none());
        // Exactly full last page: no token.
        let exact = Page {
            max: Some(12),
            after: None,
        };
        assert!(exact.apply(items, |s| s.clone()).1.is_none());
    }

    #[test]
    fn bad_inputs() {
        for (q, ids, code) in [
            ("MaxResults=4", false, "InvalidParameterValue"),
            ("MaxResults=1001", false, "InvalidParameterValue"),
            ("MaxResults=x", false, "InvalidParameterValue"),
            ("MaxResults=10", true, "InvalidParameterCombination"),
            ("NextToken=%%%", false, "InvalidNextToken"),
            ("NextToken=aGVsbG8", false, "InvalidNextToken"),
        ] {
            let e = Page::parse(&Params::parse(q.as_bytes()), ids, "instanceIds", 5).unwrap_err();
            assert_eq!(e.code, code, "{q}");
        }
    }
}
