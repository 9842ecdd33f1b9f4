//! Connectors resource types, group `connectors.io`, version `v1alpha1`, and the rules the
//! controller and the agent share: address parsing, class validation, credential injection.

pub mod address;
pub mod assess;
pub mod class;
pub mod condition;
pub mod connector;
pub mod credentials;
pub mod template;
pub mod validation;

pub use class::{ConnectorClass, ConnectorClassSpec, ConnectorClassStatus};
pub use connector::{Connector, ConnectorId, ConnectorSpec, ConnectorStatus};

/// API group of every Connectors resource.
pub const GROUP: &str = "connectors.io";
/// The served version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every Connectors resource.
pub const API_VERSION: &str = "connectors.io/v1alpha1";
