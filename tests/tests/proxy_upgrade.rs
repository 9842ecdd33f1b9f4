//! HTTP/1.1 upgrades (WebSocket, `kubectl exec`) through the proxy: the tool gets the credentials
//! on the upgrade request, and after `101` the two connections are spliced both ways. Only the
//! protocols a tool's clients need are upgraded (`websocket`, `SPDY/3.1`): an `h2c` upgrade would
//! let one connection carry further requests to any path, so it goes as a plain request.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use base64::Engine as _;
use connectors_tests::{AgentProcess, ConfigDir, GitConnector};

/// A peer that switches to whatever protocol it is asked for (`answer` overrides the name it
/// answers with): 101 when the request carries the expected credentials and an Upgrade header,
/// then it echoes every byte. Without an Upgrade header it answers 200 with the header lines it
/// got as the body.
fn echo_server(expected_auth: String, answer: Option<&'static str>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let expected = expected_auth.clone();
            std::thread::spawn(move || serve_echo(s, &expected, answer));
        }
    });
    port
}

fn serve_echo(mut s: TcpStream, expected_auth: &str, answer: Option<&str>) {
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_ascii_lowercase());
    }
    let authorized = head
        .iter()
        .any(|l| l == &format!("authorization: {}", expected_auth.to_ascii_lowercase()));
    let upgrade = head
        .iter()
        .find_map(|l| l.strip_prefix("upgrade: "))
        .map(str::to_owned);
    if !authorized {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        return;
    }
    let Some(upgrade) = upgrade else {
        let body = head.join("\n");
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    };
    let _ = write!(
        s,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {}\r\nConnection: Upgrade\r\n\r\n",
        answer.unwrap_or(&upgrade)
    );
    let mut buf = [0u8; 1024];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

struct Setup {
    agent: AgentProcess,
    port: u16,
    _config: ConfigDir,
}

fn setup(answer: Option<&'static str>) -> Setup {
    let basic = base64::engine::general_purpose::STANDARD.encode("alice:correct-horse");
    let port = echo_server(format!("Basic {basic}"), answer);
    let config = ConfigDir::new();
    config.git_connector(&GitConnector {
        name: "echo",
        address: format!("http://echo.test:{port}"),
        repository: None,
        secret: Some("creds"),
        ca_pem: None,
    });
    config.basic_auth_secret("creds", "alice", "correct-horse");
    let hosts = config.hosts_file(&[("127.0.0.1", "echo.test")]);
    let agent = AgentProcess::start(
        config.path(),
        "debug",
        &["--hosts-file", hosts.to_str().expect("utf-8")],
    );
    Setup {
        agent,
        port,
        _config: config,
    }
}

/// Sends an upgrade request for `protocol`; returns the status line, the headers and the stream.
fn ask_upgrade(
    s: &Setup,
    protocol: &str,
) -> (String, Vec<String>, TcpStream, BufReader<TcpStream>) {
    let port = s.port;
    let mut stream = TcpStream::connect(s.agent.proxy).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "GET http://echo.test:{port}/stream HTTP/1.1\r\nHost: echo.test:{port}\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n"
    )
    .expect("write");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut status = String::new();
    reader.read_line(&mut status).expect("status");
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        headers.push(line.trim_end().to_ascii_lowercase());
    }
    (status, headers, stream, reader)
}

#[test]
fn an_upgraded_connection_is_spliced_after_101() {
    let s = setup(None);
    for protocol in ["websocket", "SPDY/3.1"] {
        let (status, headers, mut stream, mut reader) = ask_upgrade(&s, protocol);
        assert!(status.starts_with("HTTP/1.1 101"), "{protocol}: {status}");
        assert!(
            headers.contains(&format!("upgrade: {}", protocol.to_ascii_lowercase())),
            "{headers:?}"
        );
        for msg in ["ping\n", "a longer second message\n"] {
            stream.write_all(msg.as_bytes()).expect("write");
            let mut back = String::new();
            reader.read_line(&mut back).expect("echo");
            assert_eq!(back, msg);
        }
    }
}

#[test]
fn other_upgrades_go_as_plain_requests() {
    let s = setup(None);
    for protocol in ["h2c", "echo", "TLS/1.2"] {
        let (status, headers, _stream, mut reader) = ask_upgrade(&s, protocol);
        assert!(status.starts_with("HTTP/1.1 200"), "{protocol}: {status}");
        // The tool saw the request without any Upgrade header (it echoes its header lines).
        let seen = read_body(&headers, &mut reader);
        assert!(
            !seen.contains("upgrade:"),
            "{protocol}: the tool saw {seen}"
        );
        assert!(seen.contains("authorization: basic"), "{seen}");
    }
}

#[test]
fn a_switch_to_a_protocol_not_asked_for_is_a_502() {
    let s = setup(Some("h2c"));
    let (status, headers, _stream, mut reader) = ask_upgrade(&s, "websocket");
    assert!(status.starts_with("HTTP/1.1 502"), "{status}");
    assert!(
        headers.contains(&"x-connectors-refusal: unreachable".to_owned()),
        "{headers:?}"
    );
    let body = read_body(&headers, &mut reader);
    assert!(body.contains("'h2c', which was not asked for"), "{body}");
}

/// The body of a response whose head was read: `content-length` bytes.
fn read_body(headers: &[String], reader: &mut BufReader<TcpStream>) -> String {
    let len: usize = headers
        .iter()
        .find_map(|h| h.strip_prefix("content-length: "))
        .and_then(|v| v.parse().ok())
        .expect("content-length");
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).expect("body");
    String::from_utf8_lossy(&body).into_owned()
}
