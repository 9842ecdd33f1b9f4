//! HTTP/1.1 upgrades (WebSocket, `kubectl exec`) through the proxy: the tool gets the credentials
//! on the upgrade request, and after `101` the two connections are spliced both ways.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use base64::Engine as _;
use connectors_tests::{AgentProcess, ConfigDir, GitConnector};

/// A peer speaking a made-up upgraded protocol: it answers 101 when the request carries the
/// expected credentials and `Upgrade: echo`, then echoes every byte.
fn echo_server(expected_auth: String) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let expected = expected_auth.clone();
            std::thread::spawn(move || serve_echo(s, &expected));
        }
    });
    port
}

fn serve_echo(mut s: TcpStream, expected_auth: &str) {
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
    let upgrade = head.iter().any(|l| l == "upgrade: echo");
    if !(authorized && upgrade) {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        return;
    }
    let _ = s.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n",
    );
    let mut buf = [0u8; 1024];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

#[test]
fn an_upgraded_connection_is_spliced_after_101() {
    let basic = base64::engine::general_purpose::STANDARD.encode("alice:correct-horse");
    let port = echo_server(format!("Basic {basic}"));
    let config = ConfigDir::new();
    config.git_connector(&GitConnector {
        name: "echo",
        address: format!("http://echo.test:{port}"),
        repository: "x",
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

    let mut s = TcpStream::connect(agent.proxy).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET http://echo.test:{port}/stream HTTP/1.1\r\nHost: echo.test:{port}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    )
    .expect("write");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut status = String::new();
    reader.read_line(&mut status).expect("status");
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        if line == "\r\n" {
            break;
        }
    }
    for msg in ["ping\n", "a longer second message\n"] {
        s.write_all(msg.as_bytes()).expect("write");
        let mut back = String::new();
        reader.read_line(&mut back).expect("echo");
        assert_eq!(back, msg);
    }
}
