//! The Connectors controller: it checks every Connector against its class, its Secret and its
//! tool (the class's liveness and auth probes), writes what it finds as conditions a person can
//! act on, and validates every ConnectorClass. Replicas elect a leader with a Lease; only the
//! leader reconciles.

pub mod class;
pub mod config;
pub mod connector;
pub mod context;
pub mod events;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod prober;
pub mod run;
pub mod status;
pub mod tracked;
