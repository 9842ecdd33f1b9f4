//! The userspace side of the programs' maps: address conversions, the endpoint and proxy maps
//! the agent fills, and the 4-tuple map the transparent listener reads.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use aya::maps::{Array, HashMap, IterableMap as _, MapData, MapError, PerCpuArray};
use connectors_common::{
    Addr, COUNTERS, Counter, Endpoint, EndpointKey, Origin, ProxyTarget, Settings, TupleKey,
    WorkloadEntry,
};
use tokio::net::TcpStream;

use crate::proxy::{LookupError, OriginalDst};
use crate::workload::{Destination, Workload};

/// The 16-byte form the programs use (IPv4 mapped), as four words of network-order bytes.
pub fn addr_words(ip: IpAddr) -> Addr {
    let octets = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let word =
        |i: usize| u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

/// The address back from its words; IPv4-mapped addresses become IPv4.
pub fn words_ip(addr: &Addr) -> IpAddr {
    let mut octets = [0u8; 16];
    for (i, w) in addr.iter().enumerate() {
        octets[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(octets);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub fn endpoint_key(addr: SocketAddr) -> EndpointKey {
    EndpointKey {
        addr: addr_words(addr.ip()),
        port: addr.port(),
        _pad: 0,
    }
}

/// The key sockops wrote for a connection the proxy accepted from `peer` on `local`.
pub fn tuple_key(peer: SocketAddr, local: SocketAddr) -> TupleKey {
    TupleKey {
        peer: addr_words(peer.ip()),
        local: addr_words(local.ip()),
        peer_port: peer.port(),
        local_port: local.port(),
    }
}

/// Where the programs send redirected connections: at most one address per family.
pub fn proxy_target(targets: &[SocketAddr]) -> ProxyTarget {
    let mut t = ProxyTarget::default();
    for target in targets {
        match target {
            SocketAddr::V4(a) => {
                t.addr4 = u32::from_ne_bytes(a.ip().octets());
                t.port4 = a.port();
            }
            SocketAddr::V6(a) => {
                t.addr6 = addr_words(IpAddr::V6(*a.ip()));
                t.port6 = a.port();
            }
        }
    }
    t
}

/// A redirected connection's record, as the proxy uses it.
pub fn destination(origin: &Origin) -> Destination {
    let ip = words_ip(&origin.addr);
    let addr = match ip {
        IpAddr::V4(v4) => SocketAddr::V4(SocketAddrV4::new(v4, origin.port)),
        IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, origin.port, 0, 0)),
    };
    Destination {
        addr,
        workload: Some(Workload {
            cgroup_id: origin.cgroup_id,
            netns_cookie: origin.netns_cookie,
        }),
    }
}

/// The maps the agent writes or reads, taken out of the loaded object.
pub struct Maps {
    pub endpoints: Mutex<HashMap<MapData, EndpointKey, Endpoint>>,
    pub proxy: Mutex<Array<MapData, ProxyTarget>>,
    pub by_cookie: Mutex<HashMap<MapData, u64, Origin>>,
    pub by_tuple: Arc<Mutex<HashMap<MapData, TupleKey, Origin>>>,
    pub counters: PerCpuArray<MapData, u64>,
    pub settings: Mutex<Array<MapData, Settings>>,
    pub workloads: Mutex<HashMap<MapData, u64, WorkloadEntry>>,
    pub handoff: Mutex<Array<MapData, u64>>,
}

impl Maps {
    /// Sums a counter over the CPUs.
    pub fn counter(&self, c: Counter) -> u64 {
        let index = c as u32;
        if index >= COUNTERS {
            return 0;
        }
        self.counters
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// Forgets the connections recorded for a workload cgroup that went away.
    pub fn forget_cgroup(&self, cgroup_id: u64) -> usize {
        let mut removed = 0;
        if let Ok(mut map) = self.by_cookie.lock() {
            removed += purge(&mut map, cgroup_id);
        }
        if let Ok(mut map) = self.by_tuple.lock() {
            removed += purge(&mut map, cgroup_id);
        }
        removed
    }
}

fn purge<K: aya::Pod>(map: &mut HashMap<MapData, K, Origin>, cgroup_id: u64) -> usize {
    let stale: Vec<K> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, o)| o.cgroup_id == cgroup_id)
        .map(|(k, _)| k)
        .collect();
    stale.iter().filter(|k| map.remove(k).is_ok()).count()
}

/// Original destinations recorded by the eBPF programs, read (and removed) on accept.
#[derive(Clone)]
pub struct EbpfOriginalDst {
    /// The tuple map's file descriptor (a duplicate), for lock-free lookups.
    fd: Arc<OwnedFd>,
    /// The map itself, for kernels without `BPF_MAP_LOOKUP_AND_DELETE_ELEM` on hash maps.
    by_tuple: Arc<Mutex<HashMap<MapData, TupleKey, Origin>>>,
    /// Set once that command is known to be missing (before Linux 5.14).
    two_step: Arc<AtomicBool>,
}

impl EbpfOriginalDst {
    pub fn new(by_tuple: Arc<Mutex<HashMap<MapData, TupleKey, Origin>>>) -> std::io::Result<Self> {
        let fd = {
            let map = by_tuple
                .lock()
                .map_err(|_| std::io::Error::other("redirect map lock poisoned"))?;
            map.map().fd().as_fd().try_clone_to_owned()?
        };
        Ok(Self {
            fd: Arc::new(fd),
            by_tuple,
            two_step: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Lookup then delete, under the map's lock (older kernels).
    fn lookup_then_delete(&self, key: &TupleKey) -> std::io::Result<Option<Origin>> {
        let mut map = self
            .by_tuple
            .lock()
            .map_err(|_| std::io::Error::other("redirect map lock poisoned"))?;
        match map.get(key, 0) {
            Ok(origin) => {
                if let Err(e) = map.remove(key) {
                    tracing::debug!(error = %e, "cannot remove a redirect record");
                }
                Ok(Some(origin))
            }
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM`: one system call, no lock. (aya offers it for queues and
/// stacks only.)
fn lookup_and_delete(fd: BorrowedFd<'_>, key: &TupleKey) -> std::io::Result<Option<Origin>> {
    /// The map-element part of `union bpf_attr`.
    #[repr(C)]
    struct MapElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    let mut value = Origin::default();
    let attr = MapElemAttr {
        map_fd: u32::try_from(fd.as_raw_fd()).map_err(std::io::Error::other)?,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_mut(&mut value) as u64,
        flags: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed; `key` and `value` point to
    // live values of the map's key and value sizes (the map was checked to have them when aya
    // opened it), and the kernel writes at most `size_of::<Origin>()` bytes to `value`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<MapElemAttr>(),
        )
    };
    if rc == 0 {
        return Ok(Some(value));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOENT) {
        Ok(None)
    } else {
        Err(e)
    }
}

impl OriginalDst for EbpfOriginalDst {
    fn lookup(
        &self,
        _stream: &TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<Destination, LookupError> {
        let key = tuple_key(peer, local);
        // Each record serves one accept; LRU eviction would remove it later anyway.
        let found = if self.two_step.load(Ordering::Relaxed) {
            self.lookup_then_delete(&key)?
        } else {
            match lookup_and_delete(self.fd.as_fd(), &key) {
                Ok(found) => found,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP)) => {
                    tracing::info!("this kernel cannot look up and delete in one step; using two");
                    self.two_step.store(true, Ordering::Relaxed);
                    self.lookup_then_delete(&key)?
                }
                Err(e) => return Err(e.into()),
            }
        };
        match found {
            Some(origin) => Ok(destination(&origin)),
            None => Err(LookupError::NotFound { peer, local }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_ipv4_is_mapped() {
        let v4: SocketAddr = "198.18.0.10:443".parse().unwrap();
        let k = endpoint_key(v4);
        assert!(connectors_common::is_v4_mapped(&k.addr));
        // The last word holds the IPv4 address as the kernel does (network byte order).
        assert_eq!(k.addr[3], u32::from_ne_bytes([198, 18, 0, 10]));
        assert_eq!(words_ip(&k.addr), v4.ip());
        let v6: SocketAddr = "[fd00::10]:443".parse().unwrap();
        assert_eq!(words_ip(&endpoint_key(v6).addr), v6.ip());
    }

    #[test]
    fn a_mapped_peer_and_a_plain_ipv4_peer_have_the_same_key() {
        let local: SocketAddr = "198.18.0.1:15001".parse().unwrap();
        let plain = tuple_key("198.18.0.2:40000".parse().unwrap(), local);
        let mapped = tuple_key(
            "[::ffff:198.18.0.2]:40000".parse().unwrap(),
            "[::ffff:198.18.0.1]:15001".parse().unwrap(),
        );
        assert_eq!(plain, mapped);
        assert_eq!(plain.peer_port, 40000);
    }

    #[test]
    fn proxy_target_per_family() {
        let t = proxy_target(&[
            "198.18.0.1:15001".parse().unwrap(),
            "[fd00::1]:15002".parse().unwrap(),
        ]);
        assert_eq!(t.addr4.to_ne_bytes(), [198, 18, 0, 1]);
        assert_eq!((t.port4, t.port6), (15001, 15002));
        assert_eq!(words_ip(&t.addr6), "fd00::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn destination_carries_the_workload() {
        let o = Origin {
            cgroup_id: 7,
            netns_cookie: 9,
            addr: addr_words("198.18.0.10".parse().unwrap()),
            port: 443,
            family: connectors_common::AF_INET,
            endpoint: 0,
        };
        let d = destination(&o);
        assert_eq!(d.addr, "198.18.0.10:443".parse().unwrap());
        assert_eq!(
            d.workload,
            Some(Workload {
                cgroup_id: 7,
                netns_cookie: 9
            })
        );
    }
}
