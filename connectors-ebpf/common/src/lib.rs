//! Map layouts shared by the eBPF programs and the agent.
//!
//! Every address is kept as 16 bytes in network byte order, held in four `u32` words exactly as
//! the kernel's `user_ip6`/`remote_ip6` fields hold them (so a word's in-memory bytes are the
//! address bytes). IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`): one key shape serves
//! `connect4`, `connect6` (including v4-mapped destinations of dual-stack sockets) and the proxy,
//! whatever the family of its listening socket. Ports are in host byte order.
#![no_std]

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// The third word of an IPv4-mapped IPv6 address (`0000:ffff`), in network byte order.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Map names, as declared by the eBPF object.
pub mod names {
    /// [`crate::EndpointKey`] -> [`crate::Endpoint`]: tool endpoints to redirect.
    pub const ENDPOINTS: &str = "ENDPOINTS";
    /// One [`crate::ProxyTarget`]: where redirected connections go.
    pub const PROXY: &str = "PROXY";
    /// Socket cookie (`u64`) -> [`crate::Origin`]: connections redirected but not yet established.
    pub const BY_COOKIE: &str = "BY_COOKIE";
    /// [`crate::TupleKey`] -> [`crate::Origin`]: established redirected connections, for the proxy.
    pub const BY_TUPLE: &str = "BY_TUPLE";
    /// [`crate::Counter`] index -> `u64` per CPU: what the programs did.
    pub const COUNTERS: &str = "COUNTERS";
    /// One [`crate::Settings`]: whether connections are filtered by workload.
    pub const SETTINGS: &str = "SETTINGS";
    /// Workload cgroup id (`u64`) -> [`crate::WorkloadEntry`]: the pods whose connections are
    /// redirected, when [`crate::Settings::filter`] is set.
    pub const WORKLOADS: &str = "WORKLOADS";
    /// One `u64`: the end of a hand-over (`bpf_ktime_get_ns` time), 0 when none is under way.
    /// Past it the programs leave every connection alone.
    pub const HANDOFF: &str = "HANDOFF";
}

/// Program names, as declared by the eBPF object.
pub mod programs {
    pub const CONNECT4: &str = "connect4";
    pub const CONNECT6: &str = "connect6";
    pub const SOCKOPS: &str = "sockops_established";
    /// `cgroup_skb/egress` program attached to the redirected cgroups during a hand-over:
    /// while [`names::HANDOFF`] holds a deadline not yet passed, the SYNs of new connections to
    /// the transparent listener are dropped before they leave the pod (the client sends them
    /// again a second later), so nothing is refused while no agent listens.
    pub const PARK: &str = "park";
}

/// Capacity of the per-connection maps (LRU: the oldest entries go first when full).
pub const CONNECTION_ENTRIES: u32 = 65_536;
/// Capacity of the endpoint map.
pub const ENDPOINT_ENTRIES: u32 = 16_384;
/// Capacity of the workload map (pods per node).
pub const WORKLOAD_ENTRIES: u32 = 8_192;
/// Deepest cgroup level the programs look at for a workload.
pub const MAX_LEVEL: u32 = 16;

/// A 16-byte address, IPv4 mapped, network byte order.
pub type Addr = [u32; 4];

/// The IPv4-mapped form of an IPv4 address given as the kernel holds it (network byte order).
#[inline(always)]
pub const fn v4_mapped(ip4: u32) -> Addr {
    [0, 0, V4_MAPPED_WORD, ip4]
}

/// Whether `addr` is IPv4-mapped.
#[inline(always)]
pub const fn is_v4_mapped(addr: &Addr) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_WORD
}

/// A tool endpoint: destination address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub addr: Addr,
    pub port: u16,
    pub _pad: u16,
}

/// What the agent knows of an endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// The agent's index of the endpoint's host name (for logs and the proxy).
    pub id: u32,
    pub _pad: u32,
}

/// Where redirected connections are sent: the transparent listener, per family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyTarget {
    /// IPv4 address in network byte order; used when `port4` is not 0.
    pub addr4: u32,
    /// IPv6 address; used when `port6` is not 0.
    pub addr6: Addr,
    pub port4: u16,
    pub port6: u16,
}

/// How the programs choose whose connections to redirect.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// 0: every process of the cgroups the programs are attached to (standalone). 1: only
    /// processes under a cgroup in the workload map, looked for among the ancestors of the
    /// connecting task's cgroup at levels `min_level..=max_level` (Kubernetes mode: the
    /// programs are attached once, at the pods' root).
    pub filter: u32,
    pub min_level: u32,
    pub max_level: u32,
    pub _pad: u32,
}

/// A workload the agent redirects.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadEntry {
    /// Reserved for per-workload options; 1 means "redirect".
    pub flags: u32,
    pub _pad: u32,
}

/// A redirected connection's original destination and the workload it came from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// cgroup v2 id of the workload: the matched pod cgroup when filtering, else the
    /// connecting task's own cgroup.
    pub cgroup_id: u64,
    /// Cookie of the connecting socket's network namespace.
    pub netns_cookie: u64,
    /// The original destination address (IPv4 mapped).
    pub addr: Addr,
    /// The original destination port.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`: the family the workload connected with.
    pub family: u16,
    /// [`Endpoint::id`] of the matched endpoint.
    pub endpoint: u32,
}

/// An established connection as both ends see it: the workload's address and the proxy's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TupleKey {
    /// The workload's (client's) address and port.
    pub peer: Addr,
    /// The proxy's address and port, as the workload connected to it.
    pub local: Addr,
    pub peer_port: u16,
    pub local_port: u16,
}

/// Indexes of the per-CPU counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// connect4/connect6 rewrote a destination.
    Redirected = 0,
    /// connect4/connect6 matched an endpoint but no proxy address of that family is set.
    NoProxy = 1,
    /// The cookie map refused an entry.
    CookieInsertFailed = 2,
    /// sockops re-keyed an established connection by its 4-tuple.
    Established = 3,
    /// The tuple map refused an entry.
    TupleInsertFailed = 4,
    /// connect4/connect6 matched an endpoint from a process that is not a workload (filtering).
    NotWorkload = 5,
    /// park held back a SYN to the transparent listener during a hand-over.
    Parked = 6,
}

/// Number of [`Counter`] slots.
pub const COUNTERS: u32 = 7;

#[cfg(feature = "user")]
mod user {
    // SAFETY (all impls): each type is `#[repr(C)]`, `Copy`, made only of integers, with explicit
    // padding fields so that no byte is uninitialised; any bit pattern is a valid value.
    unsafe impl aya::Pod for super::EndpointKey {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::ProxyTarget {}
    unsafe impl aya::Pod for super::Origin {}
    unsafe impl aya::Pod for super::TupleKey {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::WorkloadEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<EndpointKey>(), 20);
        assert_eq!(size_of::<Endpoint>(), 8);
        assert_eq!(size_of::<ProxyTarget>(), 24);
        assert_eq!(size_of::<Origin>(), 40);
        assert_eq!(size_of::<TupleKey>(), 36);
        assert_eq!(size_of::<Settings>(), 16);
        assert_eq!(size_of::<WorkloadEntry>(), 8);
    }

    #[test]
    fn v4_mapped_words() {
        let ip = u32::from_ne_bytes([198, 18, 0, 10]);
        let a = v4_mapped(ip);
        assert!(is_v4_mapped(&a));
        let bytes: [u8; 4] = a[2].to_ne_bytes();
        assert_eq!(bytes, [0, 0, 0xff, 0xff]);
        assert!(!is_v4_mapped(&[0, 0, 0, 1]));
    }
}
