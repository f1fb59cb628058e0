//! Identities: users, their API tokens and their EC2 access keys.
//!
//! These are cluster-scoped kinds kept in the store like any other, but
//! served only through the administration endpoints, never the generic
//! resource API (they are not in [`crate::KINDS`]).
//!
//! Bearer tokens are stored as SHA-256 hashes (they are 256-bit random
//! strings, so a plain hash is enough); the token itself is shown once, at
//! creation. EC2 secret keys are stored as they are, because verifying a
//! SigV4/SigV2 signature needs the secret itself.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resource;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, every project.
    Admin,
    /// Everything inside one project.
    #[default]
    Member,
    /// A node agent: what is bound to its node, status writes only.
    Node,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserSpec {
    pub role: Role,
    /// The project a member belongs to (empty for admins).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    /// The Node a `node` user acts for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
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
    Cluster
);
