//! The open-files limit: raised to its hard limit at start, since every workload connection and
//! every upstream connection is a descriptor, and the default soft limit (often 1024) is far
//! below what a node's workloads open.

/// Raises `RLIMIT_NOFILE`'s soft limit to the hard limit; returns the limit now in force.
pub fn raise_nofile() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the kernel to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to the hard one needs no
        // privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok(lim.rlim_cur)
}

/// The default cap on open workload connections for an open-files limit: each may hold an
/// upstream connection too, and the agent keeps a reserve for itself.
pub fn default_max_connections(nofile: u64) -> usize {
    const RESERVE: u64 = 256;
    let n = nofile.saturating_sub(RESERVE) / 2;
    usize::try_from(n.clamp(64, 65_536)).unwrap_or(65_536)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_to_the_hard_limit() {
        let n = raise_nofile().unwrap();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
        assert_eq!(n, lim.rlim_cur);
    }

    #[test]
    fn default_cap_leaves_room_for_upstreams() {
        assert_eq!(default_max_connections(1024), 384);
        assert_eq!(default_max_connections(20_000), 9_872);
        assert_eq!(default_max_connections(100), 64);
        assert_eq!(default_max_connections(u64::MAX), 65_536);
    }
}
