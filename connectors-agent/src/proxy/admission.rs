//! Admission of workload connections: a cap on open connections overall and per peer address,
//! so that one client holding connections open cannot take every file descriptor from the rest.
//!
//! A connection holds a [`Lease`] for as long as it (or a tunnel inside it) is open; dropping the
//! lease gives the slot back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Open workload connections, all peers together.
    pub total: usize,
    /// Open workload connections from one peer address.
    pub per_peer: usize,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    Total { limit: usize },
    Peer { peer: IpAddr, limit: usize },
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Full::Total { limit } => write!(
                f,
                "the agent has {limit} connections open, its limit (--max-connections); retry shortly"
            ),
            Full::Peer { peer, limit } => write!(
                f,
                "{peer} has {limit} connections open to the agent, the limit per client address (--max-connections-per-peer); close idle ones or retry shortly"
            ),
        }
    }
}

/// Counts open connections.
#[derive(Debug)]
pub struct Admission {
    caps: Caps,
    total: AtomicUsize,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection's slot.
#[derive(Debug)]
pub struct Lease {
    admission: Arc<Admission>,
    peer: IpAddr,
}

impl Admission {
    pub fn new(caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            caps,
            total: AtomicUsize::new(0),
            per_peer: Mutex::new(HashMap::new()),
        })
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Open connections right now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Admits a connection from `peer`, or says which cap is reached.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Lease, Full> {
        // IPv4-mapped IPv6 peers count as their IPv4 address.
        let peer = peer.to_canonical();
        let mut per_peer = self
            .per_peer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.total.load(Ordering::Relaxed) >= self.caps.total {
            return Err(Full::Total {
                limit: self.caps.total,
            });
        }
        let n = per_peer.entry(peer).or_insert(0);
        if *n >= self.caps.per_peer {
            return Err(Full::Peer {
                peer,
                limit: self.caps.per_peer,
            });
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            admission: self.clone(),
            peer,
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut per_peer = self
            .admission
            .per_peer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = per_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_peer.remove(&self.peer);
            }
        }
        self.admission.total.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_slots_come_back() {
        let a = Admission::new(Caps {
            total: 3,
            per_peer: 2,
        });
        let p1: IpAddr = "10.0.0.1".parse().unwrap();
        let p2: IpAddr = "10.0.0.2".parse().unwrap();
        let l1 = a.admit(p1).unwrap();
        let _l2 = a.admit(p1).unwrap();
        assert_eq!(a.admit(p1).unwrap_err(), Full::Peer { peer: p1, limit: 2 });
        let _l3 = a.admit(p2).unwrap();
        assert_eq!(a.admit(p2).unwrap_err(), Full::Total { limit: 3 });
        drop(l1);
        assert_eq!(a.open(), 2);
        let _l4 = a.admit(p1).unwrap();
        // The mapped form of an IPv4 peer is the same peer.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(matches!(a.admit(mapped), Err(Full::Total { .. })));
    }
}
