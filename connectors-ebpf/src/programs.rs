//! The programs and their maps (compiled for the BPF target only).

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::EbpfContext as _;
use aya_ebpf::bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, bpf_sock_addr};
use aya_ebpf::helpers::generated::{
    bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_netns_cookie,
    bpf_get_socket_cookie, bpf_ktime_get_ns,
};
use aya_ebpf::macros::{cgroup_skb, cgroup_sock_addr, map, sock_ops};
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray};
use aya_ebpf::programs::{SkBuffContext, SockAddrContext, SockOpsContext};
use aya_log_ebpf::debug;
use connectors_common::{
    AF_INET, AF_INET6, Addr, CONNECTION_ENTRIES, COUNTERS as COUNTER_SLOTS, Counter,
    ENDPOINT_ENTRIES, Endpoint, EndpointKey, MAX_LEVEL, Origin, ProxyTarget, Settings, TupleKey,
    WORKLOAD_ENTRIES, WorkloadEntry, is_v4_mapped, v4_mapped,
};

/// `IPPROTO_TCP`.
const IPPROTO_TCP: u32 = 6;
/// Let the syscall go on (possibly rewritten).
const ALLOW: i32 = 1;

#[map]
static ENDPOINTS: HashMap<EndpointKey, Endpoint> = HashMap::with_max_entries(ENDPOINT_ENTRIES, 0);

#[map]
static PROXY: Array<ProxyTarget> = Array::with_max_entries(1, 0);

#[map]
static BY_COOKIE: LruHashMap<u64, Origin> = LruHashMap::with_max_entries(CONNECTION_ENTRIES, 0);

#[map]
static BY_TUPLE: LruHashMap<TupleKey, Origin> = LruHashMap::with_max_entries(CONNECTION_ENTRIES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[map]
static WORKLOADS: HashMap<u64, WorkloadEntry> = HashMap::with_max_entries(WORKLOAD_ENTRIES, 0);

#[map]
static HANDOFF: Array<u64> = Array::with_max_entries(1, 0);

/// Verdicts of `cgroup_skb` programs.
const SKB_DROP: i32 = 0;
const SKB_PASS: i32 = 1;

/// Whether a hand-over was begun and nobody took over before its deadline: then the programs
/// stand aside and every connection goes direct.
#[inline(always)]
fn abandoned() -> bool {
    match HANDOFF.get(0) {
        Some(&deadline) if deadline != 0 => {
            // SAFETY: a helper allowed in every program type, with no arguments.
            (unsafe { bpf_ktime_get_ns() }) > deadline
        }
        _ => false,
    }
}

/// The ancestor cgroup of the connecting task at `level`, if it is in the workload map.
#[inline(always)]
fn workload_at(level: u32) -> Option<u64> {
    if level > MAX_LEVEL {
        return None;
    }
    // SAFETY: a helper allowed in cgroup programs; a level deeper than the task's cgroup gives 0.
    let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
    // SAFETY: read-only lookup; the value is not kept.
    (id != 0 && unsafe { WORKLOADS.get(&id) }.is_some()).then_some(id)
}

/// The workload a connecting task belongs to: its own cgroup when not filtering, else the
/// ancestor cgroup (at the configured levels) found in the workload map; `None` for a task that
/// is not a workload.
#[inline(always)]
fn workload_cgroup() -> Option<u64> {
    let settings = SETTINGS.get(0).copied().unwrap_or_default();
    if settings.filter == 0 {
        // SAFETY: a helper allowed in cgroup programs, with no arguments.
        return Some(unsafe { bpf_get_current_cgroup_id() });
    }
    // Two levels at most (a pod's directory is right under the pods' root, or one QoS folder
    // below): written out, so the verifier sees straight-line code.
    if let Some(id) = workload_at(settings.min_level) {
        return Some(id);
    }
    if settings.max_level != settings.min_level
        && let Some(id) = workload_at(settings.max_level)
    {
        return Some(id);
    }
    None
}

#[inline(always)]
fn count(c: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: the pointer is to this CPU's slot of a per-CPU array; programs do not
        // migrate CPU while running, so nothing else writes it concurrently.
        unsafe { *slot += 1 };
    }
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the context the kernel passed in; these fields are readable with 4-byte
    // loads (volatile keeps the compiler from merging or widening them, which the verifier
    // refuses).
    let (protocol, ip, port) = unsafe {
        (
            read_volatile(addr_of!((*sa).protocol)),
            read_volatile(addr_of!((*sa).user_ip4)),
            read_volatile(addr_of!((*sa).user_port)),
        )
    };
    if protocol != IPPROTO_TCP {
        return ALLOW;
    }
    let key = EndpointKey {
        addr: v4_mapped(ip),
        port: u16::from_be(port as u16),
        _pad: 0,
    };
    let Some(endpoint) = lookup_endpoint(&key) else {
        return ALLOW;
    };
    let Some(workload) = workload_cgroup() else {
        count(Counter::NotWorkload);
        return ALLOW;
    };
    if abandoned() {
        return ALLOW;
    }
    let Some(proxy) = PROXY.get(0).copied() else {
        return ALLOW;
    };
    if proxy.port4 == 0 {
        count(Counter::NoProxy);
        return ALLOW;
    }
    record(&ctx, &key, AF_INET, endpoint, workload);
    // SAFETY: as above; `user_ip4` and `user_port` are writable with 4-byte stores in
    // connect4 programs.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), proxy.addr4);
        write_volatile(
            addr_of_mut!((*sa).user_port),
            u32::from(proxy.port4.to_be()),
        );
    }
    count(Counter::Redirected);
    debug!(
        &ctx,
        "connect4 {:i}:{} redirected (endpoint {})",
        u32::from_be(ip),
        key.port,
        endpoint.id
    );
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: see connect4; `user_ip6` is read one 4-byte word at a time.
    let (protocol, addr, port) = unsafe {
        (
            read_volatile(addr_of!((*sa).protocol)),
            read_ip6(sa),
            read_volatile(addr_of!((*sa).user_port)),
        )
    };
    if protocol != IPPROTO_TCP {
        return ALLOW;
    }
    // A v4-mapped destination (a dual-stack socket reaching an IPv4 address) matches the IPv4
    // endpoint, since keys hold IPv4 addresses mapped.
    let key = EndpointKey {
        addr,
        port: u16::from_be(port as u16),
        _pad: 0,
    };
    let Some(endpoint) = lookup_endpoint(&key) else {
        return ALLOW;
    };
    let Some(workload) = workload_cgroup() else {
        count(Counter::NotWorkload);
        return ALLOW;
    };
    if abandoned() {
        return ALLOW;
    }
    let Some(proxy) = PROXY.get(0).copied() else {
        return ALLOW;
    };
    let (target, target_port) = if is_v4_mapped(&addr) {
        (v4_mapped(proxy.addr4), proxy.port4)
    } else {
        (proxy.addr6, proxy.port6)
    };
    if target_port == 0 {
        count(Counter::NoProxy);
        return ALLOW;
    }
    record(&ctx, &key, AF_INET6, endpoint, workload);
    // SAFETY: as in connect4, with 4-byte stores to each word of `user_ip6`.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), target[0]);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), target[1]);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), target[2]);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), target[3]);
        write_volatile(
            addr_of_mut!((*sa).user_port),
            u32::from(target_port.to_be()),
        );
    }
    count(Counter::Redirected);
    debug!(
        &ctx,
        "connect6 port {} redirected (endpoint {})", key.port, endpoint.id
    );
    ALLOW
}

/// # Safety
/// `sa` must be the program's context.
#[inline(always)]
unsafe fn read_ip6(sa: *mut bpf_sock_addr) -> Addr {
    // SAFETY: the caller passes the context; each word is a 4-byte load.
    unsafe {
        [
            read_volatile(addr_of!((*sa).user_ip6[0])),
            read_volatile(addr_of!((*sa).user_ip6[1])),
            read_volatile(addr_of!((*sa).user_ip6[2])),
            read_volatile(addr_of!((*sa).user_ip6[3])),
        ]
    }
}

#[inline(always)]
fn lookup_endpoint(key: &EndpointKey) -> Option<Endpoint> {
    // SAFETY: the value is copied out at once; the agent only replaces whole entries.
    unsafe { ENDPOINTS.get(key).copied() }
}

#[inline(always)]
fn record(
    ctx: &SockAddrContext,
    key: &EndpointKey,
    family: u16,
    endpoint: Endpoint,
    cgroup_id: u64,
) {
    // SAFETY: helpers allowed in cgroup/connect programs, called with the program's context.
    let (cookie, netns_cookie) = unsafe {
        (
            bpf_get_socket_cookie(ctx.as_ptr()),
            bpf_get_netns_cookie(ctx.as_ptr()),
        )
    };
    let origin = Origin {
        cgroup_id,
        netns_cookie,
        addr: key.addr,
        port: key.port,
        family,
        endpoint: endpoint.id,
    };
    if BY_COOKIE.insert(cookie, origin, 0).is_err() {
        count(Counter::CookieInsertFailed);
    }
}

/// Whether a hand-over is under way: a deadline is set and not yet passed.
#[inline(always)]
fn handing_over() -> bool {
    match HANDOFF.get(0) {
        // SAFETY: a helper allowed in every program type, with no arguments.
        Some(&deadline) if deadline != 0 => (unsafe { bpf_ktime_get_ns() }) <= deadline,
        _ => false,
    }
}

#[cgroup_skb(egress)]
pub fn park(ctx: SkBuffContext) -> i32 {
    if !handing_over() {
        return SKB_PASS;
    }
    match is_syn_to_proxy(&ctx) {
        Some(true) => {
            count(Counter::Parked);
            SKB_DROP
        }
        _ => SKB_PASS,
    }
}

/// Whether the packet (from its network header on) opens a TCP connection to the transparent
/// listener: a SYN without ACK to the proxy's address and port.
#[inline(always)]
fn is_syn_to_proxy(ctx: &SkBuffContext) -> Option<bool> {
    /// `IPPROTO_TCP` as the IP header holds it.
    const TCP: u8 = 6;
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    let proxy = PROXY.get(0).copied()?;
    let first: u8 = ctx.load(0).ok()?;
    let tcp_at = match first >> 4 {
        4 => {
            let protocol: u8 = ctx.load(9).ok()?;
            let daddr: u32 = ctx.load(16).ok()?;
            if protocol != TCP || proxy.port4 == 0 || daddr != proxy.addr4 {
                return Some(false);
            }
            usize::from(first & 0x0f) * 4
        }
        6 => {
            let next: u8 = ctx.load(6).ok()?;
            let daddr: Addr = ctx.load(24).ok()?;
            if next != TCP || proxy.port6 == 0 || daddr != proxy.addr6 {
                return Some(false);
            }
            40
        }
        _ => return Some(false),
    };
    let dport: u16 = ctx.load(tcp_at + 2).ok()?;
    let flags: u8 = ctx.load(tcp_at + 13).ok()?;
    let port = if first >> 4 == 4 {
        proxy.port4
    } else {
        proxy.port6
    };
    Some(u16::from_be(dport) == port && flags & SYN != 0 && flags & ACK == 0)
}

#[sock_ops]
pub fn sockops_established(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        rekey(&ctx);
    }
    1
}

#[inline(always)]
fn rekey(ctx: &SockOpsContext) {
    // SAFETY: helper allowed in sock_ops programs, called with the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    let Some(origin) = (unsafe { BY_COOKIE.get(cookie).copied() }) else {
        return;
    };
    let (peer, local) = if ctx.family() == u32::from(AF_INET) {
        (v4_mapped(ctx.local_ip4()), v4_mapped(ctx.remote_ip4()))
    } else if ctx.family() == u32::from(AF_INET6) {
        let ops = ctx.ops;
        // SAFETY: `ops` is the program's context; each word is a 4-byte load, the only size
        // the verifier accepts for these fields.
        unsafe {
            (
                [
                    read_volatile(addr_of!((*ops).local_ip6[0])),
                    read_volatile(addr_of!((*ops).local_ip6[1])),
                    read_volatile(addr_of!((*ops).local_ip6[2])),
                    read_volatile(addr_of!((*ops).local_ip6[3])),
                ],
                [
                    read_volatile(addr_of!((*ops).remote_ip6[0])),
                    read_volatile(addr_of!((*ops).remote_ip6[1])),
                    read_volatile(addr_of!((*ops).remote_ip6[2])),
                    read_volatile(addr_of!((*ops).remote_ip6[3])),
                ],
            )
        }
    } else {
        return;
    };
    let key = TupleKey {
        peer,
        local,
        // local_port is in host byte order, remote_port in network byte order.
        peer_port: ctx.local_port() as u16,
        local_port: u32::from_be(ctx.remote_port()) as u16,
    };
    if BY_TUPLE.insert(key, origin, 0).is_err() {
        count(Counter::TupleInsertFailed);
        return;
    }
    let _ = BY_COOKIE.remove(cookie);
    count(Counter::Established);
    debug!(
        ctx,
        "sockops: established {}->{} re-keyed", key.peer_port, key.local_port
    );
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, so the kernel offers every helper the programs use.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
