//! A small real HTTP/1.1 server standing for a tool's JSON API (GitLab-shaped fixtures): it
//! answers the routes a test gives it, writes every request head it receives to an access log
//! (request line and all headers, as sent), and can hang on a path to stand for a tool that
//! never answers. One thread per connection; keep-alive honoured.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a route answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_owned(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    /// `GET /raw/target?query HTTP/1.1`, exactly as sent.
    pub request_line: String,
    /// Headers as sent, in order.
    pub headers: Vec<(String, String)>,
}

impl Received {
    /// The raw request target (path and query).
    pub fn target(&self) -> &str {
        self.request_line.split(' ').nth(1).unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Answers a request: `None` means hang (hold the connection, never answer).
pub type Routes = dyn Fn(&Received) -> Option<Reply> + Send + Sync;

pub struct JsonTool {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl JsonTool {
    /// Serves `routes` on a free loopback port.
    pub fn start(routes: impl Fn(&Received) -> Option<Reply> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let addr = listener.local_addr().expect("address");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let routes: Arc<Routes> = Arc::new(routes);
        let (l, s) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (l, r, s) = (l.clone(), routes.clone(), s.clone());
                std::thread::spawn(move || serve(conn, &l, &*r, &s));
            }
        });
        Self { addr, log, stop }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The access log as text: each request line and its headers.
    pub fn access_log(&self) -> String {
        self.received()
            .iter()
            .map(|r| {
                let mut s = r.request_line.clone();
                for (n, v) in &r.headers {
                    s.push_str(&format!("\n  {n}: {v}"));
                }
                s + "\n"
            })
            .collect()
    }
}

impl Drop for JsonTool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(conn: TcpStream, log: &Mutex<Vec<Received>>, routes: &Routes, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let request_line = line.trim_end().to_owned();
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                let (n, v) = (n.trim().to_owned(), v.trim().to_owned());
                if n.eq_ignore_ascii_case("content-length") {
                    length = v.parse().unwrap_or(0);
                }
                headers.push((n, v));
            }
        }
        let mut body = vec![0u8; length.min(1 << 20)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let received = Received {
            request_line,
            headers,
        };
        if let Ok(mut l) = log.lock() {
            l.push(received.clone());
        }
        let Some(reply) = routes(&received) else {
            // Hang: hold the connection until the server stops or the client leaves.
            for _ in 0..600 {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            return;
        };
        let mut head = format!("HTTP/1.1 {} X\r\n", reply.status);
        for (n, v) in &reply.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", reply.body.len()));
        let head_only = received.request_line.starts_with("HEAD ");
        let sent = writer.write_all(head.as_bytes()).and_then(|()| {
            if head_only {
                Ok(())
            } else {
                writer.write_all(reply.body.as_bytes())
            }
        });
        if sent.is_err() {
            return;
        }
    }
}
