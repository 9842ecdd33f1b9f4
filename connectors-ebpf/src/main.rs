//! Connectors eBPF programs: the transparent redirect of workloads' connections to tools.
//!
//! - `connect4` / `connect6` (cgroup): a TCP connect to an address and port of the `ENDPOINTS`
//!   map is rewritten to the proxy address of `PROXY`; the original destination and the
//!   workload (cgroup id, netns cookie) are recorded in `BY_COOKIE` under the socket's cookie.
//! - `sockops` (cgroup): when such a connection is established (active side), its record moves
//!   to `BY_TUPLE`, keyed by the 4-tuple the proxy sees on accept.
//!
//! Everything else is left alone. The per-connection cost is a hash lookup for a connect that is
//! not redirected, and two LRU map updates for one that is; there are no loops.
//!
//! On the host this is an empty stub; the agent's build script compiles it for
//! `bpfel-unknown-none` (aya-build) and embeds the object.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod programs;
