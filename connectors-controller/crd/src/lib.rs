//! Connectors resource types, group `connectors.io`, version `v1alpha1`, and the rules the
//! controller and the agent share: address parsing, class validation, credential injection.

pub mod access;
pub mod address;
pub mod api;
pub mod assess;
pub mod class;
pub mod condition;
pub mod connector;
pub mod credentials;
pub mod inject;
pub mod node_api;
pub mod path;
pub mod probe;
pub mod template;
#[cfg(feature = "tls")]
pub mod tls;
pub mod validation;

pub use class::{ConnectorClass, ConnectorClassSpec, ConnectorClassStatus};
pub use connector::{Connector, ConnectorId, ConnectorSpec, ConnectorStatus};

/// API group of every Connectors resource.
pub const GROUP: &str = "connectors.io";
/// The served version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every Connectors resource.
pub const API_VERSION: &str = "connectors.io/v1alpha1";

/// The CustomResourceDefinitions of this crate, each with the file name it has under
/// `deploy/crds/` (written by `cargo xtask gen-crds`).
pub fn custom_resource_definitions() -> Vec<(
    &'static str,
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
)> {
    use kube::CustomResourceExt as _;
    vec![
        ("connectorclasses.yaml", ConnectorClass::crd()),
        ("connectors.yaml", Connector::crd()),
    ]
}
