//! Request bodies on their way to a typed object: [`Body`] (JSON as
//! received, or already parsed) and [`decode_body`], which fills in a
//! missing apiVersion/kind and names the path of any bad field.
//!
//! It must not place the object (project, name): that is the kind API's,
//! against the URL.

use corral_api_types::{Resource, API_VERSION};
use serde_json::Value;

use crate::error::ApiError;

/// A request body on its way to a typed object.
#[derive(Debug, Clone)]
pub enum Body {
    /// JSON as received: decoded straight into the kind's type when it is
    /// a complete, well-formed object of that kind.
    Json(axum::body::Bytes),
    /// Already parsed (YAML bodies, or JSON a caller had to look into).
    Value(Value),
}

impl From<Value> for Body {
    fn from(v: Value) -> Body {
        Body::Value(v)
    }
}

impl Body {
    /// The body as a JSON value.
    pub fn into_value(self) -> Result<Value, ApiError> {
        match self {
            Body::Value(v) => Ok(v),
            Body::Json(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}"))),
        }
    }

    /// The body as a `K`. The common case (a JSON object naming this
    /// kind and API version, with no unknown field) is decoded in one
    /// pass; anything else goes the careful way of [`decode_body`], so
    /// errors read the same whichever way the body came.
    pub fn decode<K: Resource>(self) -> Result<K, ApiError> {
        if let Body::Json(bytes) = &self {
            if let Ok(obj) = serde_json::from_slice::<K>(bytes) {
                if obj.type_meta() == (API_VERSION, K::KIND) {
                    return Ok(obj);
                }
            }
        }
        decode_body(self.into_value()?)
    }
}

/// The body as a `K`: fills in a missing apiVersion/kind, refuses a
/// different kind, and names the path of any unknown or mistyped field.
pub fn decode_body<K: Resource>(mut body: Value) -> Result<K, ApiError> {
    let Some(map) = body.as_object_mut() else {
        return Err(ApiError::bad_request(format!(
            "the body must be a {} object",
            K::KIND
        )));
    };
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("")
        .to_string();
    match map.get("kind").and_then(|k| k.as_str()) {
        None => {
            map.insert("kind".into(), Value::String(K::KIND.into()));
        }
        Some(k) if k == K::KIND => {}
        Some(other) => {
            return Err(ApiError::invalid_field(
                K::KIND,
                &name,
                "kind",
                &format!("must be {:?} for this path, not {other:?}", K::KIND),
            ))
        }
    }
    match map.get("apiVersion").and_then(|k| k.as_str()) {
        None => {
            map.insert("apiVersion".into(), Value::String(API_VERSION.into()));
        }
        Some(API_VERSION) => {}
        Some(other) => {
            return Err(ApiError::invalid_field(
                K::KIND,
                &name,
                "apiVersion",
                &format!("must be {API_VERSION:?}, not {other:?}"),
            ))
        }
    }
    serde_path_to_error::deserialize::<_, K>(body).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ApiError::invalid_field(K::KIND, &name, &path, &e.inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_api_types::Network;

    /// JSON bodies take a one-pass typed decode when they can; whichever
    /// way a body goes, the result and the error are those of the careful
    /// path through a `Value`.
    #[test]
    fn json_bodies_decode_like_parsed_ones() {
        let bodies = [
            r#"{"apiVersion":"corral/v1","kind":"Network","metadata":{"name":"n"},"spec":{"cidr":"10.0.0.0/24"}}"#,
            r#"{"metadata":{"name":"n"},"spec":{"cidr":"10.0.0.0/24"}}"#,
            r#"{"kind":"Instance","metadata":{"name":"n"},"spec":{"cidr":"10.0.0.0/24"}}"#,
            r#"{"apiVersion":"corral/v2","kind":"Network","metadata":{"name":"n"}}"#,
            r#"{"apiVersion":"corral/v1","kind":"Network","metadata":{"name":"n"},"spec":{"cidr":"10.0.0.0/24","mtu2":1}}"#,
            r#"{"apiVersion":"corral/v1","kind":"Network","kind":"Network","metadata":{"name":"n"}}"#,
            r#"{"apiVersion":"corral/v1","kind":"Network","metadata":{"name":7}}"#,
            r#"[1,2]"#,
            r#"{"apiVersion":"corral/v1","kind":"Network""#,
        ];
        for text in bodies {
            let fast = Body::Json(axum::body::Bytes::from(text)).decode::<Network>();
            let careful = serde_json::from_str::<Value>(text)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
                .and_then(decode_body::<Network>);
            match (fast, careful) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
                (Err(a), Err(b)) => {
                    assert_eq!(a.code, b.code, "{text}");
                    assert_eq!(a.to_string(), b.to_string(), "{text}");
                }
                (a, b) => panic!("{text}: one-pass {a:?}, careful {b:?}"),
            }
        }
        // The defaults the careful path fills in.
        let n: Network = Body::Json(axum::body::Bytes::from(bodies[1]))
            .decode()
            .unwrap();
        assert_eq!(n.type_meta(), (API_VERSION, "Network"));
    }
}
