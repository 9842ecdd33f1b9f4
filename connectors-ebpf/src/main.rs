//! Connectors eBPF programs. On the host this is an empty stub; the agent's build script compiles
//! it for `bpfel-unknown-none`.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}
