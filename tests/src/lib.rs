//! Harness for the end-to-end tests: real tool servers on loopback, the real agent binary.
//!
//! Nothing here is a mock: nginx serves git through `git http-backend` (fcgiwrap), TLS uses real
//! certificates, and the agent runs as its own process so its memory and logs can be measured.
//! A missing tool makes a test fail with the command that installs it; it never skips.

pub mod agent;
pub mod api_caller;
pub mod browser;
pub mod cluster;
pub mod config_dir;
pub mod controller;
pub mod controller_https;
pub mod git_server;
pub mod json_tool;
pub mod kube;
pub mod netns;
pub mod node;
pub mod oci_image;
pub mod pki;
pub mod process;
pub mod recorder;
pub mod registry;
pub mod token_issuer;

pub use agent::AgentProcess;
pub use config_dir::{ConfigDir, GitConnector, TlsGitSetup, ca_secret_yaml, indent};
pub use controller::ControllerProcess;
pub use git_server::{GitServer, GitServerOptions};
pub use kube::KubeApiServer;
pub use netns::{Lab, Pod};
pub use pki::TestCa;
pub use process::{free_port, require_tool, run, run_ok, target_bin, wait_until};
pub use recorder::PeerRecorder;
