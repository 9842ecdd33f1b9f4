//! Processes, ports and waiting.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A TCP port free on 127.0.0.1 right now, for a server a test starts.
///
/// It is taken below the kernel's ephemeral range (`ip_local_port_range`, 32768 and up by
/// default), so the source port of an outgoing connection (a clone, a thousand idle sockets)
/// can never take it between this call and the server's `bind`; and it is never handed out
/// twice by one test process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    const RANGE: std::ops::Range<u16> = 20000..32000;
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    // A different start per process, so test binaries running side by side rarely probe
    // the same ports.
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seed = u64::from(std::process::id()) ^ u64::from(clock);
    let span = u64::from(RANGE.end - RANGE.start);
    let mut next = seed.wrapping_mul(2654435761) % span;
    for _ in 0..span {
        let port = RANGE.start + next as u16;
        next = (next + 7919) % span;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port in {RANGE:?} on 127.0.0.1")
}

/// Fails the test, naming how to install it, when `tool` is not on PATH.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed; run `cargo xtask setup` (or `bash .ci/run`), which installs every tool the tests use"
    );
}

/// A binary of this workspace, built by `cargo build` (which `cargo xtask test` runs first):
/// in `$CONNECTORS_BIN_DIR` when set, else in the profile folder of the running test.
pub fn target_bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("CONNECTORS_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            // target/<profile>/deps/<test> -> target/<profile>
            let exe = std::env::current_exe().expect("current exe");
            exe.parent()
                .and_then(|d| d.parent())
                .expect("target dir")
                .to_owned()
        }
    };
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace` first (`cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// Runs a command to its end.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a child with SIGTERM (so it can stop its own children), then SIGKILL after 5 s.
pub fn terminate(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: sending a signal to a process we started; no memory is involved.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let done = wait_until(Duration::from_secs(5), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !done {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Stops a child started with `process_group(0)` and every process of its group (the workers a
/// server forks): SIGTERM to the group, then SIGKILL to what is left after 5 s.
pub fn terminate_group(child: &mut std::process::Child) {
    let Ok(pgid) = i32::try_from(child.id()) else {
        return;
    };
    // SAFETY: signals to a process group this harness created; no memory is involved.
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    let done = wait_until(Duration::from_secs(5), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    // SAFETY: as above. Workers that outlive their parent are killed with the group.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    if !done {
        let _ = child.wait();
    }
}
