//! How the proxy answers when the tool cannot be used: every failure is an HTTP status and a body
//! that names the Connector and the cause.

use std::io::Read as _;
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use connectors_tests::{
    AgentProcess, ConfigDir, GitConnector, GitServer, GitServerOptions, TestCa, free_port,
    require_tool, run,
};

/// `curl -x agent URL` with the agent CA trusted: (status code, body).
fn curl_via(agent: &AgentProcess, url: &str) -> (String, String) {
    require_tool("curl");
    let out = run(Command::new("curl")
        .args(["-s", "--max-time", "20", "--cacert"])
        .arg(agent.ca_path())
        .args(["-x", &agent.proxy_url(), url, "-w", "\n%{http_code}"]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_owned(), body.to_owned())
}

fn start_agent(config: &ConfigDir, hosts: &std::path::Path, extra: &[&str]) -> AgentProcess {
    let mut args = vec!["--hosts-file", hosts.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    AgentProcess::start(config.path(), "debug", &args)
}

#[test]
fn an_untrusted_tool_certificate_is_a_502_naming_the_cause() {
    let ca = TestCa::new("a CA nobody trusts");
    let server = GitServer::start(GitServerOptions {
        tls: Some((&ca, vec!["git.test"])),
        ..Default::default()
    });
    let config = ConfigDir::new();
    // No caCertSecretRef: the tool's certificate is checked against the system roots only.
    config.git_connector(&GitConnector {
        name: "git",
        address: server.url("git.test"),
        repository: None,
        secret: Some("creds"),
        ca_pem: None,
    });
    config.basic_auth_secret("creds", "alice", "correct-horse");
    let hosts = config.hosts_file(&[("127.0.0.1", "git.test")]);
    let agent = start_agent(&config, &hosts, &[]);
    let (code, body) = curl_via(
        &agent,
        &format!("{}/repo.git/info/refs", server.url("git.test")),
    );
    eprintln!("{code}: {body}");
    assert_eq!(code, "502", "{body}");
    assert!(body.contains("default/git"), "{body}");
    assert!(body.contains("certificate"), "{body}");
    assert!(
        !server.access_log().contains("info/refs"),
        "a request reached a tool whose certificate is not trusted"
    );
}

#[test]
fn an_unreachable_tool_is_a_502_and_a_silent_one_a_504() {
    // A port nothing listens on, and a server that accepts and never answers.
    let closed = free_port();
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in silent.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            held.push(s);
        }
    });
    let config = ConfigDir::new();
    for (name, port) in [("closed", closed), ("silent", silent_port)] {
        config.git_connector(&GitConnector {
            name,
            address: format!("http://{name}.test:{port}"),
            repository: None,
            secret: Some("creds"),
            ca_pem: None,
        });
    }
    config.basic_auth_secret("creds", "alice", "correct-horse");
    let hosts = config.hosts_file(&[("127.0.0.1", "closed.test silent.test")]);
    let agent = start_agent(&config, &hosts, &["--response-timeout", "1"]);

    let (code, body) = curl_via(&agent, &format!("http://closed.test:{closed}/x"));
    eprintln!("{code}: {body}");
    assert_eq!(code, "502", "{body}");
    assert!(body.contains("default/closed"), "{body}");
    assert!(body.to_lowercase().contains("refused"), "{body}");

    let started = std::time::Instant::now();
    let (code, body) = curl_via(&agent, &format!("http://silent.test:{silent_port}/x"));
    eprintln!("{code}: {body}");
    assert_eq!(code, "504", "{body}");
    assert!(body.contains("default/silent"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the timeout was not applied"
    );
}

#[test]
fn a_connector_whose_secret_is_missing_is_a_503_saying_so() {
    let config = ConfigDir::new();
    let port = free_port();
    config.git_connector(&GitConnector {
        name: "git",
        address: format!("http://git.test:{port}"),
        repository: None,
        secret: Some("not-there"),
        ca_pem: None,
    });
    let hosts = config.hosts_file(&[("127.0.0.1", "git.test")]);
    let agent = start_agent(&config, &hosts, &[]);
    let (code, body) = curl_via(&agent, &format!("http://git.test:{port}/x"));
    eprintln!("{code}: {body}");
    assert_eq!(code, "503", "{body}");
    assert!(body.contains("default/git"), "{body}");
    assert!(body.contains("default/not-there"), "{body}");
    let problems = agent.admin_json("/problems").to_string();
    assert!(problems.contains("not-there"), "{problems}");
}
