//! Identities: users, their API tokens and their EC2 access keys.
//!
//! These are cluster-scoped kinds kept in the store like any other, but
//! served only through the administration endpoints, never the generic
//! resource API (they are not in [`crate::KINDS`]).
//!
//! Bearer tokens are stored as SHA-256 hashes (they are 256-bit random
//! strings, so a plain hash is enough); the token itself is shown once, at
//! creation. EC2 secret keys must be recoverable (verifying a SigV4/SigV2
//! signature needs the secret itself): the store seals them with the
//! server's secrets key (`corral_store::secrets`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resource;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, every project.
    Admin,
    /// Everything inside its projects.
    #[default]
    Member,
    /// Reads inside its projects, nothing else.
    Viewer,
    /// A node agent: what is bound to its node, status writes only.
    Node,
}

impl Role {
    /// Roles a user may hold in a project.
    pub fn is_project_role(self) -> bool {
        matches!(self, Role::Member | Role::Viewer)
    }
}

/// A user's role in one more project (Keystone's role assignment,
/// Kubernetes' RoleBinding).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectRole {
    pub project: String,
    /// `member` or `viewer`.
    pub role: Role,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserSpec {
    /// `admin`, `node`, or the role in `project`: `member` or `viewer`.
    pub role: Role,
    /// The home project of a member or viewer (empty for admins): where
    /// its EC2 calls act and where commands go by default.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    /// Roles in further projects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memberships: Vec<ProjectRole>,
    /// The Node a `node` user acts for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

impl UserSpec {
    /// Every project the user has a role in, with that role (the home
    /// project first); empty for admins and nodes.
    pub fn project_roles(&self) -> Vec<(&str, Role)> {
        if !self.role.is_project_role() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(1 + self.memberships.len());
        if !self.project.is_empty() {
            out.push((self.project.as_str(), self.role));
        }
        for m in &self.memberships {
            if !out.iter().any(|(p, _)| *p == m.project) {
                out.push((m.project.as_str(), m.role));
            }
        }
        out
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserStatus {}

resource!(
    /// A person or an agent that calls the APIs.
    User,
    UserSpec,
    UserStatus,
    "users",
    Cluster
);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiTokenSpec {
    /// The user this token authenticates.
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiTokenStatus {}

resource!(
    /// A bearer token for the native API. Its name is the hex SHA-256 of
    /// the token, so a request's token is found with one key lookup.
    ApiToken,
    ApiTokenSpec,
    ApiTokenStatus,
    "apitokens",
    Cluster
);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessKeySpec {
    /// The user this key signs for.
    pub user: String,
    /// The EC2 secret access key.
    pub secret_access_key: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessKeyStatus {
    /// When a request last verified with this key (updated at most once a
    /// minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<chrono::DateTime<chrono::Utc>>,
}

resource!(
    /// An EC2 access key pair. Its name is the access key id (upper case
    /// letters and digits, `AKIA…` style, lower-cased for the store key).
    AccessKey,
    AccessKeySpec,
    AccessKeyStatus,
    "accesskeys",
    Cluster,
    secret secret_access_key
);
