//! The programs and their maps (compiled for the BPF target only).

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::EbpfContext as _;
use aya_ebpf::bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, bpf_sock_addr};
use aya_ebpf::helpers::generated::{
    bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
};
use aya_ebpf::macros::{cgroup_sock_addr, map, sock_ops};
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray};
use aya_ebpf::programs::{SockAddrContext, SockOpsContext};
use aya_log_ebpf::debug;
use connectors_common::{
    AF_INET, AF_INET6, Addr, CONNECTION_ENTRIES, COUNTERS as COUNTER_SLOTS, Counter,
    ENDPOINT_ENTRIES, Endpoint, EndpointKey, Origin, ProxyTarget, TupleKey, is_v4_mapped,
    v4_mapped,
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
    let Some(proxy) = PROXY.get(0).copied() else {
        return ALLOW;
    };
    if proxy.port4 == 0 {
        count(Counter::NoProxy);
        return ALLOW;
    }
    record(&ctx, &key, AF_INET, endpoint);
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
    record(&ctx, &key, AF_INET6, endpoint);
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
fn record(ctx: &SockAddrContext, key: &EndpointKey, family: u16, endpoint: Endpoint) {
    // SAFETY: helpers allowed in cgroup/connect programs, called with the program's context.
    let (cookie, cgroup_id, netns_cookie) = unsafe {
        (
            bpf_get_socket_cookie(ctx.as_ptr()),
            bpf_get_current_cgroup_id(),
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
