//! `resourceVersion`, parsed in one place: the store revision an object
//! was read at, a positive integer sent as a string.

/// A valid `resourceVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceVersion(i64);

/// A `resourceVersion` that is neither empty nor a positive integer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid resourceVersion {0:?}: must be a positive integer")]
pub struct InvalidResourceVersion(pub String);

impl ResourceVersion {
    /// The revision `rev`, if it is one (positive).
    pub fn new(rev: i64) -> Option<ResourceVersion> {
        (rev > 0).then_some(ResourceVersion(rev))
    }

    /// `Ok(None)` for an empty string (no version given), the version
    /// for a positive integer, an error for anything else.
    pub fn parse(text: &str) -> Result<Option<ResourceVersion>, InvalidResourceVersion> {
        if text.is_empty() {
            return Ok(None);
        }
        text.parse::<i64>()
            .ok()
            .and_then(ResourceVersion::new)
            .map(Some)
            .ok_or_else(|| InvalidResourceVersion(text.chars().take(64).collect()))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for ResourceVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_policy_for_every_string() {
        assert_eq!(ResourceVersion::parse(""), Ok(None));
        assert_eq!(
            ResourceVersion::parse("42")
                .unwrap()
                .map(ResourceVersion::get),
            Some(42)
        );
        for bad in ["0", "-3", "x", " 4", "4.0", "99999999999999999999"] {
            assert!(ResourceVersion::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ResourceVersion::new(0), None);
        assert_eq!(ResourceVersion::new(7).unwrap().to_string(), "7");
    }
}
