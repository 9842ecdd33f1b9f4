//! The Connectors node agent: an injecting proxy that adds a Connector's credentials to the
//! requests of workloads allowed to use it, reached explicitly (HTTP proxy) or transparently
//! (eBPF or netfilter redirect).

pub mod admin;
pub mod agent;
pub mod api;
pub mod authz;
pub mod body;
pub mod catalog;
pub mod config;
pub mod controller_api;
pub mod metrics;
pub mod proxy;
pub mod redirect;
pub mod resolve;
pub mod rlimit;
pub mod source;
pub mod tls;
pub mod upstream;
pub mod workers;
pub mod workload;
