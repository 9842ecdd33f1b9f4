//! `Connector`: one tool, its address and its credentials.
#![allow(
    clippy::duplicated_attributes,
    reason = "each kube printcolumn(...) group repeats type_; clippy sees duplicates"
)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;

/// One tool instance of a `ConnectorClass`. Workloads allowed to use it reach the tool through the
/// proxy, which adds the credentials of `spec.auth.secretRef`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "connectors.io",
    version = "v1alpha1",
    kind = "Connector",
    namespaced,
    status = "ConnectorStatus",
    shortname = "ctr",
    category = "connectorsio",
    doc = "One tool (an address of a ConnectorClass) and the Secret with its credentials.",
    printcolumn(
        name = "Class",
        type_ = "string",
        json_path = ".spec.connectorClassName"
    ),
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.address"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorSpec {
    /// The `ConnectorClass` (tool type).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub connector_class_name: String,
    /// The tool's URL, e.g. `https://git.corp` or `https://github.com/my-org`. A path limits the
    /// Connector to requests under it.
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#]+")
    )]
    pub address: String,
    /// Further URLs whose traffic the same credentials serve, named as the class declares them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub address_extensions: Vec<NamedValue>,
    /// Values for the class's parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub params: Vec<NamedValue>,
    /// Which auth type of the class, and the Secret with the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ConnectorAuth>,
    /// A Secret (same namespace) whose `ca.crt` (or any `*.crt`/`*.pem` key) holds the PEM CA
    /// certificates the tool's TLS certificate is verified against, beside the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_secret_ref: Option<LocalObjectRef>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamedValue {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(max = 4096))]
    pub value: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorAuth {
    /// The auth type name (`ConnectorClass.spec.auth.types[].name`). Defaults to the class's
    /// only auth type when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,
    /// The Secret holding the credentials, in the Connector's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
    /// Values the class's auth probe needs (e.g. `repository` for git).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub params: Vec<NamedValue>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Must be the Connector's own namespace when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectRef {
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub conditions: Vec<Condition>,
    /// The `host:port` endpoints whose traffic the proxy serves for this Connector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub endpoints: Vec<String>,
    /// Where the unified API serves this Connector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiStatus>,
    /// The proxy address for clients that use an explicit proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyStatus>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiStatus {
    pub path: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    pub http_address: UrlAddress,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UrlAddress {
    pub url: String,
}

impl Connector {
    /// `namespace/name`, the Connector's identity in logs, errors and maps.
    pub fn id(&self) -> ConnectorId {
        ConnectorId::new(
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name.as_deref().unwrap_or_default(),
        )
    }
}

/// `namespace/name` of a Connector.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnectorId {
    pub namespace: String,
    pub name: String,
}

impl ConnectorId {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl std::fmt::Display for ConnectorId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
