//! A real git server: `git http-backend` behind nginx and fcgiwrap, basic auth, optional TLS.
//! It also serves `/files/` (static files, for streaming tests) and stores uploads made with
//! `PUT /put/<name>` (WebDAV).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::pki::TestCa;
use crate::process::{free_port, require_tool, run_ok, wait_until};

pub struct GitServerOptions<'a> {
    /// Listen address; default 127.0.0.1 on a free port.
    pub listen: Option<SocketAddr>,
    /// TLS with a certificate from this CA for these names.
    pub tls: Option<(&'a TestCa, Vec<&'a str>)>,
    /// Basic-auth users; none means anonymous access.
    pub users: Vec<(&'a str, &'a str)>,
    /// nginx directives added to the server block, before its locations.
    pub extra: String,
}

impl Default for GitServerOptions<'_> {
    fn default() -> Self {
        Self {
            listen: None,
            tls: None,
            users: vec![("alice", "correct-horse")],
            extra: String::new(),
        }
    }
}

pub struct GitServer {
    pub addr: SocketAddr,
    pub tls: bool,
    dir: tempfile::TempDir,
    nginx: Child,
    fcgiwrap: Child,
}

impl GitServer {
    pub fn start(opts: GitServerOptions<'_>) -> Self {
        for tool in ["nginx", "fcgiwrap", "git"] {
            require_tool(tool);
        }
        let dir = tempfile::Builder::new()
            .prefix("git-server")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        // nginx workers run as nobody: they must be able to traverse the folder.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for sub in ["repos", "files", "tmp", "put", "put-tmp"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        // nginx workers (nobody) store uploads here.
        for sub in ["put", "put-tmp"] {
            std::fs::set_permissions(d.join(sub), std::fs::Permissions::from_mode(0o777))
                .expect("chmod");
        }
        if let Some(addr) = opts.listen {
            // A server left from an earlier run would answer in this one's place.
            if let Err(e) = std::net::TcpListener::bind(addr) {
                panic!(
                    "{addr} is taken ({e}): a git server of an earlier run (nginx with a git-server* prefix) still holds it"
                );
            }
        }
        let addr = opts
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));

        let htpasswd: String = opts
            .users
            .iter()
            .map(|(u, p)| format!("{u}:{{PLAIN}}{p}\n"))
            .collect();
        std::fs::write(d.join("htpasswd"), htpasswd).expect("htpasswd");
        let auth = if opts.users.is_empty() {
            String::new()
        } else {
            format!(
                "auth_basic \"git\"; auth_basic_user_file {}/htpasswd;",
                d.display()
            )
        };
        let (listen_tls, tls_conf) = match &opts.tls {
            Some((ca, names)) => {
                let (cert, key) = ca.server_cert(names);
                std::fs::write(d.join("server.crt"), cert).expect("cert");
                std::fs::write(d.join("server.key"), key).expect("key");
                (
                    " ssl http2",
                    format!(
                        "ssl_certificate {0}/server.crt; ssl_certificate_key {0}/server.key;",
                        d.display()
                    ),
                )
            }
            None => ("", String::new()),
        };
        let exec_path = run_ok(Command::new("git").arg("--exec-path"))
            .trim()
            .to_owned();
        let listen = match addr {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        let conf = format!(
            r#"
worker_processes 1;
error_log {d}/error.log info;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  log_format git '$remote_user "$request" $status $body_bytes_sent $request_length "$uri"';
  access_log {d}/access.log git;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  server {{
    listen {listen}{listen_tls};
    {tls_conf}
    {auth}
    client_max_body_size 0;
    {extra}
    location /files/ {{ root {d}; }}
    location /put/ {{ root {d}; dav_methods PUT; client_body_temp_path {d}/put-tmp; }}
    location / {{
      include /etc/nginx/fastcgi_params;
      fastcgi_pass unix:{d}/fcgi.sock;
      fastcgi_param SCRIPT_FILENAME {exec_path}/git-http-backend;
      fastcgi_param GIT_PROJECT_ROOT {d}/repos;
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param REMOTE_USER $remote_user;
      fastcgi_param PATH_INFO $uri;
      fastcgi_request_buffering off;
      fastcgi_buffering off;
    }}
  }}
}}
"#,
            d = d.display(),
            extra = opts.extra,
        );
        std::fs::write(d.join("nginx.conf"), conf).expect("nginx.conf");

        let sock = d.join("fcgi.sock");
        let fcgiwrap = Command::new("fcgiwrap")
            .process_group(0)
            .args(["-c", "4", "-s"])
            .arg(format!("unix:{}", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fcgiwrap");
        assert!(
            wait_until(Duration::from_secs(5), || sock.exists()),
            "fcgiwrap did not create its socket"
        );
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).expect("chmod");

        let nginx = Command::new("nginx")
            .process_group(0)
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        let server = Self {
            addr,
            tls: opts.tls.is_some(),
            dir,
            nginx,
            fcgiwrap,
        };
        assert!(up, "nginx did not start: {}", server.error_log());
        server
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates a bare repository `name` (e.g. `repo.git`) with one commit holding `files`.
    pub fn create_repo(&self, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let bare = self.dir().join("repos").join(name);
        run_ok(
            Command::new("git")
                .args(["init", "-q", "--bare", "-b", "main"])
                .arg(&bare),
        );
        run_ok(Command::new("git").arg("-C").arg(&bare).args([
            "config",
            "http.receivepack",
            "true",
        ]));
        let work = tempfile::tempdir().expect("tempdir");
        let w = work.path();
        run_ok(
            Command::new("git")
                .args(["init", "-q", "-b", "main"])
                .arg(w),
        );
        for (path, content) in files {
            let p = w.join(path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(p, content).expect("write");
        }
        run_ok(git_in(w).args(["add", "-A"]));
        run_ok(git_in(w).args(["commit", "-q", "-m", "initial"]));
        run_ok(git_in(w).arg("push").arg("-q").arg(&bare).arg("main"));
        bare
    }

    /// Adds `branches` branches and `tags` tags to the bare repository `bare` in one
    /// `git fast-import`, each branch on a commit of its own: `main` and `feature-NNN` /
    /// `release/NNN` (from 1), annotated tags `v1.NNN` and lightweight tags `build-NNN`
    /// (alternating). Returns nothing; `git ls-remote` is the reference for what is there.
    pub fn add_refs(&self, bare: &Path, branches: usize, tags: usize) {
        use std::io::Write as _;
        let main = run_ok(git_in(bare).args(["rev-parse", "refs/heads/main"]))
            .trim()
            .to_owned();
        let mut stream = String::new();
        for i in 1..branches {
            let name = if i % 2 == 1 {
                format!("feature-{i:03}")
            } else {
                format!("release/{i:03}")
            };
            stream.push_str(&format!(
                "commit refs/heads/{name}\nmark :{i}\ncommitter Test <test@example.invalid> 1700000000 +0000\ndata 10\nbranch {i:03}\nfrom {main}\n\n"
            ));
        }
        for i in 1..=tags {
            let from = if branches > 1 {
                format!(":{}", 1 + (i - 1) % (branches - 1))
            } else {
                main.clone()
            };
            if i % 2 == 1 {
                stream.push_str(&format!(
                    "tag v1.{i:03}\nfrom {from}\ntagger Test <test@example.invalid> 1700000000 +0000\ndata 7\nrelease\n"
                ));
            } else {
                stream.push_str(&format!("reset refs/tags/build-{i:03}\nfrom {from}\n\n"));
            }
        }
        let mut child = git_in(bare)
            .args(["fast-import", "--quiet"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("git fast-import");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stream.as_bytes())
            .expect("fast-import stream");
        assert!(
            child.wait().expect("fast-import").success(),
            "git fast-import failed"
        );
    }

    /// A sparse file of `bytes` served at `/files/<name>`.
    pub fn create_file(&self, name: &str, bytes: u64) {
        let p = self.dir().join("files").join(name);
        let f = std::fs::File::create(&p).expect("create");
        f.set_len(bytes).expect("set_len");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }

    /// Size of a file uploaded with `PUT /put/<name>`, if it is there.
    pub fn uploaded_size(&self, name: &str) -> Option<u64> {
        std::fs::metadata(self.dir().join("put").join(name))
            .ok()
            .map(|m| m.len())
    }

    /// Stops the server now, workers included (for a server kept in a `static`, whose `Drop`
    /// never runs: call it from an exit hook).
    pub fn stop_now(&self) {
        for pid in [self.nginx.id(), self.fcgiwrap.id()] {
            if let Ok(pgid) = i32::try_from(pid) {
                // SAFETY: signals to a process group this harness created.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
        }
    }

    /// `scheme://host:port` for a host name that resolves (for the client) to this server.
    pub fn url(&self, host: &str) -> String {
        format!(
            "{}://{host}:{}",
            if self.tls { "https" } else { "http" },
            self.addr.port()
        )
    }

    /// nginx's access log: `user "request" status sent-bytes request-bytes` per line.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir().join("access.log")).unwrap_or_default()
    }

    /// The access log, parsed.
    pub fn requests(&self) -> Vec<Logged> {
        self.access_log()
            .lines()
            .filter_map(Logged::parse)
            .collect()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir().join("error.log")).unwrap_or_default()
    }
}

/// One line of the access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The Basic-auth user the request carried (`None` for `-`).
    pub user: Option<String>,
    /// The request line as sent.
    pub request: String,
    pub status: u16,
    /// The path as nginx resolved it (decoded, dot segments removed, slashes merged).
    pub uri: String,
}

impl Logged {
    fn parse(line: &str) -> Option<Self> {
        let (user, rest) = line.split_once(" \"")?;
        let (request, rest) = rest.split_once("\" ")?;
        let status = rest.split_whitespace().next()?.parse().ok()?;
        let uri = rest.rsplit_once(" \"")?.1.strip_suffix('"')?.to_owned();
        Some(Self {
            user: (user != "-").then(|| user.to_owned()),
            request: request.to_owned(),
            status,
            uri,
        })
    }
}

/// `git -C dir` with an identity, no prompts and no system or user config.
pub fn git_in(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C")
        .arg(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid");
    c
}

impl Drop for GitServer {
    fn drop(&mut self) {
        // Each runs in its own process group, so their workers stop with them.
        crate::process::terminate_group(&mut self.nginx);
        crate::process::terminate_group(&mut self.fcgiwrap);
    }
}
