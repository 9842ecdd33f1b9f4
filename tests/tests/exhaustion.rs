//! One client holding connections open cannot take the agent from everyone else: with the
//! agent's default limits, 1200 idle connections from one address (bare TCP, tunnels silent
//! after `CONNECT 200`, and slow request heads) leave a second client's clone working, the
//! agent's memory bounded, and the attacker's connections closed by the timeouts.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use connectors_tests::git_server::git_in;
use connectors_tests::{AgentProcess, TlsGitSetup, run};

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse";
const ATTACKER: [u8; 4] = [127, 0, 0, 2];
/// The agent's defaults (`--max-connections-per-peer`, `--header-timeout`).
const PER_PEER: usize = 512;
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection from the attacker's address.
fn connect_from_attacker(to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((ATTACKER, 0)).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(s.into())
}

/// What the agent did with a connection a moment after it opened: refused it (with a 503 naming
/// the cap) or kept it open. A tunnel's `200` is read and the tunnel counts as kept.
fn refused(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 512];
    let r = s.read(&mut buf);
    s.set_nonblocking(false).expect("blocking");
    match r {
        Ok(0) => true,
        Ok(n) => {
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.starts_with("HTTP/1.1 200") {
                return false;
            }
            assert!(text.starts_with("HTTP/1.1 503"), "{text}");
            assert!(text.contains("connection-limit"), "{text}");
            assert!(text.contains("127.0.0.2"), "{text}");
            true
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Whether the agent has closed the connection (EOF or reset), waiting up to `within`.
fn closed_by_agent(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // A refusal or a 408-style answer before the close: keep reading.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn idle_connections_from_one_client_do_not_stop_another() {
    let TlsGitSetup {
        server,
        config,
        hosts,
        ..
    } = TlsGitSetup::start(USER, PASSWORD);
    let agent = AgentProcess::start(
        config.path(),
        "info",
        &["--hosts-file", hosts.to_str().expect("utf-8")],
    );
    let rss_before = agent.rss_kib();

    // The attack: bare idle connections, tunnels that go silent after CONNECT 200, and heads
    // that trickle in a byte at a time.
    let started = Instant::now();
    let mut opened = Vec::new();
    for i in 0..1200 {
        let mut s = connect_from_attacker(agent.proxy).expect("attacker connect");
        match i % 6 {
            0 => {
                let authority = format!("git.test:{}", server.addr.port());
                // A refused connection may be closed before this is written.
                let _ = write!(
                    s,
                    "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
                );
            }
            1 => {
                let _ = s.write_all(b"GET http://git.test/ HTTP/1.1\r\nHo");
            }
            _ => {}
        }
        opened.push((i, s));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut held = Vec::new();
    let mut refused_count = 0;
    for (i, mut s) in opened {
        if refused(&mut s) {
            refused_count += 1;
        } else {
            held.push((i, s));
        }
    }
    let refused = refused_count;
    assert_eq!(
        held.len(),
        PER_PEER,
        "the agent kept {} connections from one address open (its per-client limit is {PER_PEER}); {refused} refused",
        held.len()
    );
    let metrics = agent.metrics_text();
    assert!(
        metrics.contains("connection-limit"),
        "refusals not counted:\n{metrics}"
    );

    // Meanwhile, another client clones.
    let work = tempfile::tempdir().expect("tempdir");
    let out = run(git_in(work.path())
        .env("HTTPS_PROXY", agent.proxy_url())
        .env("GIT_SSL_CAINFO", agent.ca_path())
        .args([
            "clone",
            "-q",
            &format!("{}/repo.git", server.url("git.test")),
            "c",
        ]));
    assert!(
        out.status.success(),
        "the second client's clone failed during the attack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < HEADER_TIMEOUT,
        "the clone only ran after the attack's connections timed out ({:?})",
        started.elapsed()
    );
    let rss_during = agent.rss_kib();
    assert!(
        rss_during < rss_before + 48 * 1024,
        "agent RSS grew from {rss_before} KiB to {rss_during} KiB under the attack"
    );

    // The slow heads keep the connection busy sending a byte now and then; still closed.
    for (i, s) in &mut held {
        if *i % 6 == 1 {
            let _ = s.write_all(b"s");
        }
    }
    // The timeouts close every held connection: the silent ones after the header timeout from
    // accept, the tunnels after it from their CONNECT, the slow heads after it from their first byte.
    let deadline = started + HEADER_TIMEOUT + Duration::from_secs(5);
    let mut still_open = Vec::new();
    for (i, s) in &mut held {
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(100);
        if !closed_by_agent(s, left) {
            still_open.push(*i);
        }
    }
    assert!(
        still_open.is_empty(),
        "{} attacker connections still open {:?} after the attack started (e.g. #{:?})",
        still_open.len(),
        started.elapsed(),
        &still_open[..still_open.len().min(5)]
    );
    println!(
        "agent RSS: {rss_before} KiB before, {rss_during} KiB with {} connections held; {refused} refused at once; all closed after {:?}",
        PER_PEER,
        started.elapsed()
    );
    agent.assert_never_shows(&[PASSWORD]);
}
