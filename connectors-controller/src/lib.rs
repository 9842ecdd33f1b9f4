//! The Connectors controller: it checks every Connector against its class, its Secret and its
//! tool (the class's liveness and auth probes), writes what it finds as conditions a person can
//! act on, and validates every ConnectorClass. Replicas elect a leader with a Lease; only the
//! leader reconciles. Every replica serves the agent API and the pod webhook over HTTPS with a
//! certificate from the cluster CA, which the leader creates and rotates.

pub mod agent_api;
pub mod api;
pub mod api_gate;
pub mod api_store;
pub mod authorize;
pub mod builtin_classes;
pub mod bundle;
pub mod ca;
pub mod caches;
pub mod class;
pub mod config;
pub mod connector;
pub mod context;
pub mod events;
pub mod health;
pub mod https;
pub mod leader;
pub mod metrics;
pub mod pod_trust;
pub mod prober;
pub mod run;
pub mod server;
pub mod serving_cert;
pub mod status;
pub mod tokens;
pub mod tracked;
pub mod webhook;
