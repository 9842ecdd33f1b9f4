//! `ConnectorClass`: a tool type (git, oci, k8s, or one a user defines in YAML).
#![allow(
    clippy::duplicated_attributes,
    reason = "each kube printcolumn(...) group repeats type_; clippy sees duplicates"
)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;

/// A tool type. Everything the system knows about a type (which addresses are valid, which Secret
/// carries its credentials, how the proxy puts them on the wire, how to probe it) is data in this
/// object: the built-in classes use nothing that a user-written class could not.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "connectors.io",
    version = "v1alpha1",
    kind = "ConnectorClass",
    status = "ConnectorClassStatus",
    shortname = "ctc",
    category = "connectorsio",
    doc = "A tool type (git, oci, k8s, or one a user writes): address rules, auth types and probes.",
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
pub struct ConnectorClassSpec {
    /// Rules for `Connector.spec.address`.
    #[serde(default)]
    pub address: AddressRules,
    /// Extra addresses a Connector of this class may declare (for example a registry's token
    /// realm). An entry without `default` is required on every Connector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub address_extensions: Vec<ParamSpec>,
    /// Parameters a Connector may set in `spec.params`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub params: Vec<ParamSpec>,
    /// The ways a Connector of this class can authenticate to the tool.
    #[serde(default)]
    pub auth: ClassAuth,
    /// How to check that the tool is reachable, without credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// How to check that the credentials are accepted, one probe per auth type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub auth_probes: Vec<AuthProbe>,
    /// What the unified REST API serves for this class's Connectors: an OpenAPI description
    /// of the tool's API and list resources (see `crate::api`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<crate::api::ClassApi>,
}

/// Rules for a Connector's address.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressRules {
    /// Shown to people filling in the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// URL schemes an address may use. Empty means `http` and `https`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2), inner(regex(pattern = r"^[Hh][Tt][Tt][Pp][Ss]?$")))]
    pub schemes: Vec<String>,
    /// Host patterns the address must match: an exact host (`git.corp`) or a wildcard for one or
    /// more leading labels (`*.corp`). Empty means any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub hosts: Vec<String>,
}

/// A named parameter (of a class address extension, class parameter or auth type).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParamSpec {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Used when the Connector gives no value; without a default the value is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub default: Option<String>,
    /// Without a default, the value may still be left out (for example a registry's token
    /// service that only some registries keep on another host).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassAuth {
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub types: Vec<AuthType>,
}

/// One way to authenticate: which Secret holds the credentials, and how they are injected.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthType {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The Secret `type` required, e.g. `kubernetes.io/basic-auth` or `Opaque`.
    #[schemars(length(min = 1, max = 253))]
    pub secret_type: String,
    /// A Connector of this auth type may omit the Secret (anonymous access).
    #[serde(default)]
    pub optional: bool,
    /// The auth type a Connector gets when it names none and the class has several (at most
    /// one auth type of a class sets it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    /// Keys the Secret must hold (beyond what its type implies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub params: Vec<ParamSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// How the proxy puts the credentials on each request. When absent it follows the Secret
    /// type: `kubernetes.io/basic-auth` gives Basic, any other a Bearer `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection: Option<Injection>,
}

/// How credentials go on the wire. Exactly one member is set.
///
/// Values are templates: `${secret.KEY}` is replaced by the Secret's key, `${params.NAME}` by a
/// Connector parameter. `basic`, `bearer`, `header` and `query` put the same value on every
/// request; `registryToken` exchanges the credentials for short-lived tokens at the registry's
/// token service; `clientCertificate` presents a certificate in the TLS handshake.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Injection {
    /// `Authorization: Basic base64(username:password)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicInjection>,
    /// `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<BearerInjection>,
    /// A named header with a templated value, e.g. `PRIVATE-TOKEN: ${secret.token}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NamedTemplate>,
    /// A query parameter with a templated value, e.g. `access_token=${secret.token}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<NamedTemplate>,
    /// The OCI registry token flow: on a `Bearer` challenge the proxy gets a token from the
    /// registry's token service (the realm) with these credentials (Basic; anonymously without
    /// a Secret) and sends it; on a `Basic` challenge it sends these credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_token: Option<RegistryTokenInjection>,
    /// A client certificate (PEM chain and key) presented to the tool in the TLS handshake;
    /// nothing is added to the request, and the client's `Authorization` is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateInjection>,
}

/// The credentials a registry's token service (or a registry asking for Basic) gets.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryTokenInjection {
    #[serde(default = "default_username")]
    #[schemars(length(max = 1024))]
    pub username: String,
    #[serde(default = "default_password")]
    #[schemars(length(max = 1024))]
    pub password: String,
}

impl Default for RegistryTokenInjection {
    fn default() -> Self {
        Self {
            username: default_username(),
            password: default_password(),
        }
    }
}

/// Where the client certificate and its key are (templates; a `kubernetes.io/tls` Secret's
/// keys by default).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificateInjection {
    /// The PEM certificate chain, leaf first.
    #[serde(default = "default_tls_cert")]
    #[schemars(length(max = 1024))]
    pub certificate: String,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default = "default_tls_key")]
    #[schemars(length(max = 1024))]
    pub key: String,
}

impl Default for ClientCertificateInjection {
    fn default() -> Self {
        Self {
            certificate: default_tls_cert(),
            key: default_tls_key(),
        }
    }
}

fn default_tls_cert() -> String {
    "${secret.tls.crt}".to_owned()
}

fn default_tls_key() -> String {
    "${secret.tls.key}".to_owned()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicInjection {
    #[serde(default = "default_username")]
    #[schemars(length(max = 1024))]
    pub username: String,
    #[serde(default = "default_password")]
    #[schemars(length(max = 1024))]
    pub password: String,
}

impl Default for BasicInjection {
    fn default() -> Self {
        Self {
            username: default_username(),
            password: default_password(),
        }
    }
}

fn default_username() -> String {
    "${secret.username}".to_owned()
}

fn default_password() -> String {
    "${secret.password}".to_owned()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BearerInjection {
    #[serde(default = "default_token")]
    #[schemars(length(max = 1024))]
    pub token: String,
}

impl Default for BearerInjection {
    fn default() -> Self {
        Self {
            token: default_token(),
        }
    }
}

fn default_token() -> String {
    "${secret.token}".to_owned()
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamedTemplate {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A check made by the controller.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub http: HttpProbe,
}

/// An HTTP request to the tool, and what a good answer looks like.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpProbe {
    /// Path and query, joined to the Connector's address; a template (`${params.repository}`).
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^/"))]
    pub path: String,
    /// `GET` unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["GET", "HEAD", "POST"]))]
    pub method: Option<String>,
    /// Extra request headers (templates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub http_headers: Vec<NamedTemplate>,
    /// Status codes that mean success. Empty means 200.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(range(min = 100, max = 599)))]
    pub success_codes: Vec<u16>,
}

/// The probe that checks the credentials of one auth type.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthProbe {
    #[schemars(length(min = 1, max = 63))]
    pub auth_name: String,
    /// Values this probe needs from `spec.auth.params` (e.g. a repository). A Connector without
    /// them is served all the same; the probe is skipped (`AuthReady` reason `NotProbed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub params: Vec<ParamSpec>,
    pub probe: Probe,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorClassStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub conditions: Vec<Condition>,
}

impl ConnectorClassSpec {
    /// The auth type with this name.
    pub fn auth_type(&self, name: &str) -> Option<&AuthType> {
        self.auth.types.iter().find(|t| t.name == name)
    }
}
