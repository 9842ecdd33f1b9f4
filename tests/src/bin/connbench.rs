//! `connbench`: opens new TCP connections as fast as it can, one HTTP/1.1 request each
//! (`Connection: close`), and prints what each one took. Run inside a simulated pod by
//! `cargo xtask bench redirect`.
//!
//! Usage: `connbench ADDR HOST PATH CONNECTIONS CONCURRENCY [AUTHORIZATION]`
//!
//! With `PATH` `-`, no request is sent: the client connects, closes its side and waits for the
//! server to close (connection setup and teardown only).
//!
//! Output: `wall_ns <ns> errors <n>`, then one line per successful connection:
//! `<connect ns> <total ns>` (total: from `connect()` to the end of the response).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!("usage: connbench ADDR HOST PATH CONNECTIONS CONCURRENCY [AUTHORIZATION]");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[1].parse().expect("ADDR is host:port");
    let total: usize = args[4].parse().expect("CONNECTIONS is a number");
    let workers: usize = args[5].parse().expect("CONCURRENCY is a number");
    let auth = args
        .get(6)
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = Arc::new(if args[3] == "-" {
        String::new()
    } else {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
            args[3], args[2]
        )
    });
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let start = Instant::now();
    let threads: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let (request, next, errors, first_error) = (
                request.clone(),
                next.clone(),
                errors.clone(),
                first_error.clone(),
            );
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    match one(addr, request.as_bytes()) {
                        Ok(s) => samples.push(s),
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            let mut first = first_error.lock().expect("lock");
                            first.get_or_insert(e);
                        }
                    }
                }
                samples
            })
        })
        .collect();
    let samples: Vec<(Duration, Duration)> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("worker"))
        .collect();
    let wall = start.elapsed();
    if let Some(e) = first_error.lock().expect("lock").as_ref() {
        eprintln!("first error: {e}");
    }
    let mut out = String::with_capacity(samples.len() * 24 + 64);
    out.push_str(&format!(
        "wall_ns {} errors {}\n",
        wall.as_nanos(),
        errors.load(Ordering::Relaxed)
    ));
    for (connect, total) in samples {
        out.push_str(&format!("{} {}\n", connect.as_nanos(), total.as_nanos()));
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .expect("write results");
}

/// One connection: connect, send the request, read the response to its end.
fn one(addr: SocketAddr, request: &[u8]) -> Result<(Duration, Duration), String> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    let connected = t0.elapsed();
    s.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| format!("timeout: {e}"))?;
    if request.is_empty() {
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
    } else {
        s.write_all(request).map_err(|e| format!("write: {e}"))?;
    }
    let mut buf = Vec::with_capacity(1024);
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let done = t0.elapsed();
    if !request.is_empty() && !buf.starts_with(b"HTTP/1.1 200") {
        let head = String::from_utf8_lossy(&buf[..buf.len().min(120)]).into_owned();
        return Err(format!("answer: {head}"));
    }
    Ok((connected, done))
}
