//! Who is calling, and what they may do.
//!
//! Bearer tokens are looked up by their SHA-256 (the `ApiToken` object's
//! name), then their `User`, in watched copies of both
//! ([`corral_runtime::credentials`]): a busy client costs no store read,
//! and a revoked token or deleted user stops working on every server as
//! soon as its watch delivers the deletion (on this server, at once).

use std::sync::Arc;

use corral_api_types::auth::{
    AccessKey, AccessKeySpec, ApiToken, ApiTokenSpec, Role, User, UserSpec,
};
use corral_api_types::{KindInfo, Resource, Scope};
use corral_runtime::credentials::Credentials;
use corral_store::{ResourceStore, StoreError};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    /// The user's role: admin, node, or its role in its home project.
    pub role: Role,
    /// A member's or viewer's home project.
    pub project: String,
    /// A node agent's node.
    pub node: String,
    /// Every project a member or viewer has a role in, with the role (the
    /// home project first).
    pub projects: Vec<(String, Role)>,
}

/// What a request does, for authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Create,
    Update,
    UpdateStatus,
    Delete,
}

impl Verb {
    pub fn is_read(self) -> bool {
        matches!(self, Verb::Get | Verb::List)
    }
}

/// Kinds whose objects a node agent may see and report on when bound to it.
const NODE_BOUND_KINDS: &[&str] = &["instances", "volumes", "snapshots"];
/// Kinds a node agent may read whole.
const NODE_READABLE_KINDS: &[&str] = &["instancetypes"];

impl Principal {
    /// The caller's role in `project`, for members and viewers.
    pub fn role_in(&self, project: &str) -> Option<Role> {
        self.projects
            .iter()
            .find(|(p, _)| p == project)
            .map(|(_, r)| *r)
    }

    /// A member or viewer (confined to its projects).
    pub fn is_tenant(&self) -> bool {
        self.role.is_project_role()
    }

    /// Whether the caller may touch `kind` objects in `project` (None: all
    /// projects, or a cluster kind) at all. Objects a node may act on are
    /// further checked with [`Principal::may_touch_object`].
    pub fn authorize(
        &self,
        verb: Verb,
        kind: &KindInfo,
        project: Option<&str>,
    ) -> Result<(), ApiError> {
        let deny = || {
            ApiError::forbidden(format!(
                "user {:?} ({:?}) may not {} {}{}",
                self.user,
                self.role,
                verb_word(verb),
                kind.plural,
                project
                    .map(|p| format!(" in project {p:?}"))
                    .unwrap_or_default()
            ))
        };
        match self.role {
            Role::Admin => Ok(()),
            Role::Member | Role::Viewer => match kind.scope {
                Scope::Project => {
                    let Some(role) = project.and_then(|p| self.role_in(p)) else {
                        return Err(deny());
                    };
                    // Events are the system's record of what it did: a
                    // tenant reads them but may not forge or erase them
                    // (nor fill the store with them).
                    let system_record = kind.plural == "events";
                    if verb == Verb::UpdateStatus
                        || ((role == Role::Viewer || system_record) && !verb.is_read())
                    {
                        return Err(deny());
                    }
                    Ok(())
                }
                Scope::Cluster => {
                    if verb.is_read()
                        && matches!(kind.plural, "instancetypes" | "nodes" | "projects")
                    {
                        Ok(())
                    } else {
                        Err(deny())
                    }
                }
            },
            Role::Node => {
                let plural = kind.plural;
                if plural == "nodes" {
                    return match verb {
                        Verb::Delete => Err(deny()),
                        _ => Ok(()),
                    };
                }
                if NODE_BOUND_KINDS.contains(&plural) {
                    return match verb {
                        Verb::Get | Verb::List | Verb::UpdateStatus => Ok(()),
                        _ => Err(deny()),
                    };
                }
                if NODE_READABLE_KINDS.contains(&plural) && verb.is_read() {
                    return Ok(());
                }
                // One at a time, for a bound object that uses it
                // (checked by `node_refs::check`): never listed.
                if crate::node_refs::REFERENCED_KINDS.contains(&plural) && verb == Verb::Get {
                    return Ok(());
                }
                Err(deny())
            }
        }
    }

    /// For node agents: whether this object is theirs to see or report on.
    /// Other roles were fully decided by [`Principal::authorize`].
    pub fn may_touch_object(&self, kind: &KindInfo, object: &serde_json::Value) -> bool {
        if self.role != Role::Node {
            return true;
        }
        if kind.plural == "nodes" {
            return object.pointer("/metadata/name").and_then(|v| v.as_str())
                == Some(self.node.as_str());
        }
        if NODE_BOUND_KINDS.contains(&kind.plural) {
            return object.pointer("/status/nodeName").and_then(|v| v.as_str())
                == Some(self.node.as_str());
        }
        true
    }

    /// Whether lists by this caller must be narrowed to their node.
    pub fn node_filter(&self, kind: &KindInfo) -> Option<&str> {
        (self.role == Role::Node && NODE_BOUND_KINDS.contains(&kind.plural))
            .then_some(self.node.as_str())
    }
}

fn verb_word(v: Verb) -> &'static str {
    match v {
        Verb::Get => "get",
        Verb::List => "list",
        Verb::Create => "create",
        Verb::Update => "update",
        Verb::UpdateStatus => "update the status of",
        Verb::Delete => "delete",
    }
}

/// Hex SHA-256 of a token: the name of its `ApiToken` object.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn random_string(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// A new bearer token: `crl_` + 43 base62 characters (256 bits).
pub fn new_token() -> String {
    format!(
        "crl_{}",
        random_string(
            43,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        )
    )
}

/// A new EC2 access key pair: (`AKIA` + 16 upper-case base32, 40-char secret).
pub fn new_access_key() -> (String, String) {
    let id = format!(
        "AKIA{}",
        random_string(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    );
    let secret = random_string(
        40,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    );
    (id, secret)
}

/// Store name of an access key id (names are lower-case DNS labels).
pub fn access_key_name(id: &str) -> String {
    id.to_ascii_lowercase()
}

/// Turns tokens into principals.
pub struct Authenticator {
    credentials: Arc<Credentials>,
}

impl Authenticator {
    pub fn new(store: ResourceStore) -> Authenticator {
        Authenticator {
            credentials: Credentials::spawn(store),
        }
    }

    /// The principal for `Authorization: Bearer <token>`.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal, ApiError> {
        let Some(header) = header else {
            return Err(ApiError::unauthorized(
                "missing Authorization: Bearer <token> header",
            ));
        };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("Authorization must be \"Bearer <token>\""))?;
        match self.credentials.token_user(&token_hash(token)).await? {
            Some(user) => Ok(principal_of(&user)),
            None => Err(ApiError::unauthorized("invalid token")),
        }
    }

    /// Makes this server stop honouring `name` (a token hash or a user
    /// name it just deleted) before its watch reports the deletion.
    pub fn revoked(&self, name: &str) {
        self.credentials.forget(name);
    }
}

pub fn principal_of(user: &User) -> Principal {
    Principal {
        user: user.metadata.name.clone(),
        role: user.spec.role,
        project: user.spec.project.clone(),
        node: user.spec.node_name.clone(),
        projects: user
            .spec
            .project_roles()
            .into_iter()
            .map(|(p, r)| (p.to_string(), r))
            .collect(),
    }
}

/// What `create_user` hands back once: the secrets are not stored in clear
/// (the token) or not shown again by default (the key).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedCredentials {
    pub user: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    pub token: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// Issues a new API token for `user`.
pub async fn issue_token(
    store: &ResourceStore,
    user: &str,
    description: &str,
) -> Result<String, StoreError> {
    let token = new_token();
    let object = ApiToken::new(
        "",
        &token_hash(&token),
        ApiTokenSpec {
            user: user.to_string(),
            description: description.to_string(),
        },
    );
    store.create(&object).await?;
    Ok(token)
}

/// Issues a new EC2 access key for `user`; returns (id, secret).
pub async fn issue_access_key(
    store: &ResourceStore,
    user: &str,
) -> Result<(String, String), StoreError> {
    let (id, secret) = new_access_key();
    let mut object = AccessKey::new(
        "",
        &access_key_name(&id),
        AccessKeySpec {
            user: user.to_string(),
            secret_access_key: secret.clone(),
            disabled: false,
        },
    );
    object
        .metadata
        .annotations
        .insert("corral/access-key-id".into(), id.clone());
    store.create(&object).await?;
    Ok((id, secret))
}

/// Creates a user with one token and one access key.
pub async fn create_user(
    store: &ResourceStore,
    name: &str,
    spec: UserSpec,
) -> Result<IssuedCredentials, StoreError> {
    let user = User::new("", name, spec.clone());
    store.create(&user).await?;
    let token = issue_token(store, name, "created with the user").await?;
    let (access_key_id, secret_access_key) = issue_access_key(store, name).await?;
    Ok(IssuedCredentials {
        user: name.to_string(),
        role: spec.role,
        project: spec.project,
        token,
        access_key_id,
        secret_access_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(plural: &str) -> &'static KindInfo {
        corral_api_types::kind_info(plural).unwrap()
    }

    fn member(project: &str) -> Principal {
        Principal {
            user: "u".into(),
            role: Role::Member,
            project: project.into(),
            node: String::new(),
            projects: vec![(project.into(), Role::Member)],
        }
    }

    #[test]
    fn viewers_read_and_users_hold_a_role_per_project() {
        // Home project `a` as viewer, member of `b`, nothing in `c`.
        let user = User::new(
            "",
            "v",
            corral_api_types::auth::UserSpec {
                role: Role::Viewer,
                project: "a".into(),
                memberships: vec![corral_api_types::auth::ProjectRole {
                    project: "b".into(),
                    role: Role::Member,
                }],
                ..Default::default()
            },
        );
        let v = principal_of(&user);
        assert_eq!(v.role_in("a"), Some(Role::Viewer));
        assert_eq!(v.role_in("b"), Some(Role::Member));
        assert_eq!(v.role_in("c"), None);
        for verb in [Verb::Get, Verb::List] {
            assert!(v.authorize(verb, info("instances"), Some("a")).is_ok());
            assert!(v.authorize(verb, info("instances"), Some("b")).is_ok());
            assert!(v.authorize(verb, info("instances"), Some("c")).is_err());
        }
        for verb in [Verb::Create, Verb::Update, Verb::Delete, Verb::UpdateStatus] {
            let e = v.authorize(verb, info("instances"), Some("a")).unwrap_err();
            assert_eq!(e.code.as_u16(), 403);
            assert!(v.authorize(verb, info("instances"), Some("c")).is_err());
        }
        for verb in [Verb::Create, Verb::Update, Verb::Delete] {
            assert!(v.authorize(verb, info("instances"), Some("b")).is_ok());
        }
        assert!(v.authorize(Verb::List, info("instances"), None).is_err());
        assert!(v.authorize(Verb::List, info("projects"), None).is_ok());
        assert!(v.authorize(Verb::Create, info("projects"), None).is_err());
    }

    #[test]
    fn members_stay_in_their_project() {
        let m = member("a");
        for verb in [
            Verb::Get,
            Verb::List,
            Verb::Create,
            Verb::Update,
            Verb::Delete,
        ] {
            assert!(m.authorize(verb, info("instances"), Some("a")).is_ok());
            let e = m.authorize(verb, info("instances"), Some("b")).unwrap_err();
            assert_eq!(e.code.as_u16(), 403);
            assert!(m.authorize(verb, info("instances"), None).is_err());
        }
        assert!(m
            .authorize(Verb::UpdateStatus, info("instances"), Some("a"))
            .is_err());
        assert!(m.authorize(Verb::List, info("instancetypes"), None).is_ok());
        assert!(m
            .authorize(Verb::Create, info("instancetypes"), None)
            .is_err());
        assert!(m.authorize(Verb::Create, info("projects"), None).is_err());
    }

    #[test]
    fn nodes_see_only_what_is_bound_to_them() {
        let n = Principal {
            user: "node-n1".into(),
            role: Role::Node,
            project: String::new(),
            node: "n1".into(),
            projects: Vec::new(),
        };
        assert!(n.authorize(Verb::List, info("instances"), None).is_ok());
        assert!(n
            .authorize(Verb::UpdateStatus, info("instances"), Some("p"))
            .is_ok());
        assert!(n
            .authorize(Verb::Update, info("instances"), Some("p"))
            .is_err());
        assert!(n
            .authorize(Verb::Create, info("instances"), Some("p"))
            .is_err());
        assert!(n.authorize(Verb::Delete, info("nodes"), None).is_err());
        let mine = serde_json::json!({"metadata": {"name": "i"}, "status": {"nodeName": "n1"}});
        let theirs = serde_json::json!({"metadata": {"name": "i"}, "status": {"nodeName": "n2"}});
        assert!(n.may_touch_object(info("instances"), &mine));
        assert!(!n.may_touch_object(info("instances"), &theirs));
        assert!(n.may_touch_object(
            info("nodes"),
            &serde_json::json!({"metadata": {"name": "n1"}})
        ));
        assert!(!n.may_touch_object(
            info("nodes"),
            &serde_json::json!({"metadata": {"name": "n2"}})
        ));
    }

    #[test]
    fn tokens_and_keys_have_the_documented_shape() {
        let t = new_token();
        assert!(t.starts_with("crl_") && t.len() == 47);
        assert_ne!(new_token(), t);
        assert_eq!(token_hash("x").len(), 64);
        let (id, secret) = new_access_key();
        assert!(id.starts_with("AKIA") && id.len() == 20);
        assert_eq!(secret.len(), 40);
    }
}
