//! A Connector's path prefix holds as the tool resolves paths: a Connector for
//! `https://git.test/team` never lends its credentials to `/other`, whatever the encoding (dot
//! segments, `%2e`, `%2f`, `\`, `;`, doubled slashes), over HTTP/1.1 and HTTP/2, through the
//! explicit proxy and through the eBPF-redirected transparent listener (privileged).
//!
//! The explicit proxy refuses a path outside the prefix (403); a redirected connection, whose
//! workload believes it talks to the tool, has it forwarded without credentials (the tool
//! answers for itself: 401 here).
//!
//! The proof is the real nginx's access log: every request it saw with the injected user is
//! under `/team/` once nginx resolved it.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use connectors_tests::{
    AgentProcess, ConfigDir, GitConnector, GitServer, GitServerOptions, Lab, Pod, TestCa,
    free_port, run,
};

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse";

/// Paths that resolve outside `/team`: refused (403 `outside-prefix`), nothing sent.
const ESCAPES: &[&str] = &[
    "/team/../other/secret.git/info/refs?service=git-upload-pack",
    "/team/./../other/secret.git/info/refs?service=git-upload-pack",
    "/team/%2e%2e/other/secret.git/info/refs?service=git-upload-pack",
    "/team/.%2e/other/secret.git/info/refs?service=git-upload-pack",
    "/team/%2E%2E/other/secret.git/info/refs?service=git-upload-pack",
    "/team/app.git/../../other/secret.git/info/refs?service=git-upload-pack",
    "/team/x/y/../../../other/secret.git/info/refs?service=git-upload-pack",
    "/%74eam/../other/secret.git/info/refs?service=git-upload-pack",
];

/// Paths a server may read as leaving `/team`: refused (400 `ambiguous-path`), nothing sent.
const AMBIGUOUS: &[&str] = &[
    "/team/..%2fother/secret.git/info/refs?service=git-upload-pack",
    "/team/..%2Fother/secret.git/info/refs?service=git-upload-pack",
    "/team/%2E%2E%2Fother/secret.git/info/refs?service=git-upload-pack",
    "/team/a%2F..%2F..%2Fother/secret.git/info/refs?service=git-upload-pack",
    "/team/..%5Cother/secret.git/info/refs?service=git-upload-pack",
    "/team//../other/secret.git/info/refs?service=git-upload-pack",
    "/team/..;/other/secret.git/info/refs?service=git-upload-pack",
    "/team/%252e%252e/other/secret.git/info/refs?service=git-upload-pack",
];

/// Paths that stay under `/team` once resolved: served with the credentials, sent normalized.
const INSIDE: &[&str] = &[
    "/team/./app.git/info/refs?service=git-upload-pack",
    "/team/x/../app.git/info/refs?service=git-upload-pack",
    "/team/%61pp.git/info/refs?service=git-upload-pack",
];

/// How the workload reaches the tool.
enum Mode {
    /// `curl -x` through the agent's forward proxy.
    Explicit { port: u16 },
    /// Plain `curl` in a pod whose connections the eBPF redirect sends to the agent.
    Transparent { pod: Box<Pod> },
}

struct Fixture {
    agent: AgentProcess,
    server: GitServer,
    mode: Mode,
    _config: ConfigDir,
    _lab: Option<Lab>,
}

impl Fixture {
    fn explicit() -> Self {
        let ca = TestCa::new("tools CA");
        let server = server(&ca, SocketAddr::from(([127, 0, 0, 1], free_port())));
        let port = server.addr.port();
        let config = config(&ca, &format!("https://git.test:{port}/team"));
        let hosts = config.hosts_file(&[("127.0.0.1", "git.test")]);
        let agent = AgentProcess::start(
            config.path(),
            "debug",
            &["--hosts-file", hosts.to_str().expect("utf-8")],
        );
        Self {
            agent,
            server,
            mode: Mode::Explicit { port },
            _config: config,
            _lab: None,
        }
    }

    fn transparent() -> Self {
        let lab = Lab::new();
        let ca = TestCa::new("tools CA");
        let ip = IpAddr::V4(lab.node_ip4(10));
        let server = server(&ca, SocketAddr::new(ip, 443));
        let config = config(&ca, "https://git.test/team");
        let hosts = config.hosts_file(&[(&ip.to_string(), "git.test")]);
        let pod = lab.pod(0);
        pod.hosts(&[(ip, "git.test")]);
        let listen = SocketAddr::new(IpAddr::V4(lab.node_ip4(254)), free_port());
        let agent = AgentProcess::start(
            config.path(),
            "debug",
            &[
                "--hosts-file",
                hosts.to_str().expect("utf-8"),
                "--transparent-listen",
                &listen.to_string(),
                "--redirect-cgroup",
                pod.cgroup.to_str().expect("utf-8"),
            ],
        );
        Self {
            agent,
            server,
            mode: Mode::Transparent { pod: Box::new(pod) },
            _config: config,
            _lab: Some(lab),
        }
    }

    /// `curl --path-as-is` of `path` on git.test: (status, refusal code).
    fn get(&self, path: &str, http2: bool) -> (String, String) {
        let ca = self.agent.ca_path();
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "--max-time", "10", "--path-as-is"])
            .arg("--cacert")
            .arg(&ca)
            .arg(if http2 { "--http2" } else { "--http1.1" })
            .args(["-w", "%{http_code} %header{x-connectors-refusal}"])
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY");
        let out = match &self.mode {
            Mode::Explicit { port } => {
                c.arg("-x")
                    .arg(self.agent.proxy_url())
                    .arg(format!("https://git.test:{port}{path}"));
                run(&mut c)
            }
            Mode::Transparent { pod } => {
                c.arg(format!("https://git.test{path}"));
                run(&mut pod.wrap(&c))
            }
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (status, code) = text.split_once(' ').unwrap_or((&text, ""));
        (status.to_owned(), code.trim().to_owned())
    }

    fn check(&self) {
        for http2 in [false, true] {
            let proto = if http2 { "HTTP/2" } else { "HTTP/1.1" };
            let outside = match self.mode {
                Mode::Explicit { .. } => ("403".to_owned(), "outside-prefix".to_owned()),
                Mode::Transparent { .. } => ("401".to_owned(), String::new()),
            };
            for path in ESCAPES {
                let got = self.get(path, http2);
                assert_eq!(got, outside, "{proto} {path}\n{}", self.context());
            }
            for path in AMBIGUOUS {
                let got = self.get(path, http2);
                assert_eq!(
                    got,
                    ("400".into(), "ambiguous-path".into()),
                    "{proto} {path}\n{}",
                    self.context()
                );
            }
            for path in INSIDE {
                let got = self.get(path, http2);
                assert_eq!(got.0, "200", "{proto} {path}\n{}", self.context());
            }
        }
        let seen = self.server.requests();
        // The normalized paths reached the tool with the credentials...
        let served = seen
            .iter()
            .filter(|r| r.user.as_deref() == Some(USER) && r.status == 200)
            .filter(|r| r.request.contains("/team/app.git/info/refs"))
            .count();
        assert_eq!(served, INSIDE.len() * 2, "{}", self.context());
        // ...and nothing with the credentials ever left the prefix, as nginx resolved it.
        for r in &seen {
            if r.user.is_some() {
                assert!(
                    r.uri.starts_with("/team/"),
                    "credentials sent outside /team: {r:?}\n{}",
                    self.context()
                );
            }
            if matches!(self.mode, Mode::Explicit { .. }) {
                assert!(!r.uri.starts_with("/other"), "refused, yet sent: {r:?}");
            }
        }
        self.agent.assert_never_shows(&[PASSWORD]);
    }

    fn context(&self) -> String {
        format!(
            "access log:\n{}\nagent log (tail):\n{}",
            self.server.access_log(),
            tail(&self.agent.log(), 40)
        )
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// nginx with `team/app.git` and `other/secret.git`, all behind alice's password.
fn server(ca: &TestCa, listen: SocketAddr) -> GitServer {
    let server = GitServer::start(GitServerOptions {
        listen: Some(listen),
        tls: Some((ca, vec!["git.test"])),
        ..Default::default()
    });
    server.create_repo("team/app.git", &[("README.md", b"team app\n")]);
    server.create_repo("other/secret.git", &[("README.md", b"not for team\n")]);
    server
}

/// A Connector for `address` as a user writes it: class, address, Secret, the tool's CA.
fn config(ca: &TestCa, address: &str) -> ConfigDir {
    let config = ConfigDir::new();
    config.git_connector(&GitConnector {
        name: "team",
        address: address.to_owned(),
        repository: None,
        secret: Some("creds"),
        ca_pem: Some(&ca.cert_pem),
    });
    config.basic_auth_secret("creds", USER, PASSWORD);
    config
}

#[test]
fn the_prefix_holds_through_the_explicit_proxy() {
    Fixture::explicit().check();
}

#[test]
fn the_prefix_holds_through_the_transparent_redirect() {
    connectors_tests::netns::require_privileges();
    Fixture::transparent().check();
}
