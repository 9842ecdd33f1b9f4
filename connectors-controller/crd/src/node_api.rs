//! The controller's API for agents: what an agent asks for and gets back, shared by both sides.
//!
//! Every replica of the controller serves it over HTTPS (a certificate from the cluster CA for
//! the controller's Service name). An agent authenticates with its ServiceAccount token
//! projected into its pod with audience [`AGENT_AUDIENCE`]; the controller reviews the token
//! (TokenReview), finds the agent's pod from the token's pod binding, and from the pod its node.
//! An agent gets:
//! - [`INTERMEDIATE_PATH`]: a short-lived intermediate CA certificate for a key it holds (it
//!   mints the leaves workloads see; the root key never leaves the controller);
//! - [`CREDENTIALS_PATH`]: the Secrets of the Connectors that a labelled pod currently on its
//!   node may use ([`crate::access`]), and for any other Connector a refusal saying why.
//!
//! Errors are `{"message": "..."}` with 400 (bad request), 401 (no or invalid token), 403 (not
//! an agent's token, or a pod that is not on a node), 503 (the API server cannot be reached).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Audience of the token an agent presents.
pub const AGENT_AUDIENCE: &str = "connectors.io/agent";
/// `POST`: [`IntermediateRequest`] → [`IntermediateResponse`].
pub const INTERMEDIATE_PATH: &str = "/agent/v1/intermediate";
/// `POST`: [`CredentialsRequest`] → [`CredentialsResponse`].
pub const CREDENTIALS_PATH: &str = "/agent/v1/credentials";

/// A request for an intermediate CA certificate.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IntermediateRequest {
    /// A PEM certificate signing request for the agent's key (ECDSA P-256). Its subject is
    /// ignored: the controller names the certificate after the agent's node.
    pub csr_pem: String,
}

/// An intermediate CA certificate, and the roots workloads trust.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IntermediateResponse {
    /// The intermediate (CA, path length 0), signed by the root in use.
    pub certificate_pem: String,
    /// Every root in the published bundle, the signing one first.
    pub roots_pem: String,
    /// When the intermediate expires (RFC 3339); the agent renews at half its life.
    pub not_after: String,
    /// Changes whenever the roots do: an agent holding an intermediate of another generation
    /// renews it at once.
    pub ca_generation: String,
}

/// Which Connectors' credentials the agent wants.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRequest {
    pub connectors: Vec<ConnectorRef>,
}

/// A Connector, by namespace and name.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectorRef {
    pub namespace: String,
    pub name: String,
}

/// The answer, one item per Connector asked for, in the same order.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsResponse {
    pub items: Vec<CredentialsItem>,
    /// The cluster CA's generation (see [`IntermediateResponse::ca_generation`]).
    #[serde(default)]
    pub ca_generation: String,
}

/// One Connector's Secrets, or why the agent may not have them.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsItem {
    pub namespace: String,
    pub name: String,
    pub allowed: bool,
    /// Why not, when not allowed (a person can act on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The Secrets the Connector references (`spec.auth.secretRef`, `spec.caCertSecretRef`)
    /// that exist, when allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretData>,
}

/// A Secret as the agent needs it: name, type and data (base64, as in the API).
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretData {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub data: BTreeMap<String, k8s_openapi::ByteString>,
    /// The Secret's resourceVersion, so the agent can tell a change.
    #[serde(default)]
    pub resource_version: String,
}

impl std::fmt::Debug for SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretData")
            .field("name", &self.name)
            .field("type", &self.type_)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("resource_version", &self.resource_version)
            .finish()
    }
}

/// An error body.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_data_never_prints_values() {
        let s = SecretData {
            name: "creds".into(),
            type_: "kubernetes.io/basic-auth".into(),
            data: [(
                "password".to_owned(),
                k8s_openapi::ByteString(b"hunter2".to_vec()),
            )]
            .into(),
            resource_version: "1".into(),
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password"), "{shown}");
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains("\"type\":\"kubernetes.io/basic-auth\""),
            "{json}"
        );
    }
}
