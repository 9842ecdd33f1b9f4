//! The unified REST API (issue 16) against real parts: a kube-apiserver with `deploy/`
//! installed, the controller binary serving the API on its HTTPS port under its own
//! ServiceAccount (TokenReview, SubjectAccessReview), a git server (git http-backend behind
//! nginx) holding 300 branches and 300 tags, a GitLab-shaped JSON tool reached through a class
//! written only in YAML, and Debian's docker-registry holding 5000 tags. Everything is written
//! as the README tells a user (YAML, `kubectl apply`); answers are compared with `git
//! ls-remote` and `skopeo list-tags` on the same tools.
//!
//! One API server, controller and set of tools serve the whole binary; every answer any test
//! gets is kept, and the last test checks that none showed a credential.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use connectors_tests::api_caller::{Answer, ApiCaller};
use connectors_tests::controller::{self, ControllerProcess};
use connectors_tests::controller_https::{self as ch, apply};
use connectors_tests::git_server::git_in;
use connectors_tests::json_tool::{JsonTool, Received, Reply};
use connectors_tests::kube::{self as kt, KubeApiServer};
use connectors_tests::{GitServer, GitServerOptions, run, run_ok, wait_until};

const NS: &str = "api-team";
const USER: &str = "alice";
const GIT_PASSWORD: &str = "correct-horse-8d1e";
const GITLAB_TOKEN: &str = "glpat-Zq81-never-shown";
/// The controller's time for one exchange with a tool.
const API_TIMEOUT: Duration = Duration::from_secs(3);

struct Shared {
    controller: ControllerProcess,
    _kube: KubeApiServer,
}

static SHARED: Mutex<Option<Shared>> = Mutex::new(None);
static ENV: OnceLock<Env> = OnceLock::new();

struct Env {
    kube_dir: PathBuf,
    admin_kubeconfig: PathBuf,
    /// The API server's port and CA, for a k8s Connector to it.
    kube_port: u16,
    kube_ca: PathBuf,
    api: ApiCaller,
    git: GitServer,
    gitlab: JsonTool,
    /// A ServiceAccount allowed to get the namespace's Connectors.
    viewer: String,
    /// A ServiceAccount allowed nothing.
    nobody: String,
    git_path: String,
}

extern "C" fn stop_shared() {
    if let Ok(mut shared) = SHARED.lock() {
        shared.take();
    }
}

fn controller_log() -> String {
    let shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    shared
        .as_ref()
        .map(|s| s.controller.log())
        .unwrap_or_default()
}

/// The branches of the GitLab-shaped project `devops/demo`.
const BRANCHES: [&str; 5] = [
    "develop",
    "feature/login",
    "feature/search",
    "main",
    "release-1",
];

fn gitlab_routes(r: &Received) -> Option<Reply> {
    let target = r.target();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path.starts_with("/api/v4/projects/slow%2Fone/") {
        return None; // hangs
    }
    if r.header("private-token") != Some(GITLAB_TOKEN) {
        return Some(Reply::json(401, r#"{"message":"401 Unauthorized"}"#));
    }
    match path {
        "/api/v4/version" => Some(Reply::json(200, r#"{"version":"16.11.0"}"#)),
        "/api/v4/projects/devops%2Fdemo/repository/branches" => {
            let q: BTreeMap<&str, &str> =
                query.split('&').filter_map(|p| p.split_once('=')).collect();
            let per_page: usize = q.get("per_page").and_then(|v| v.parse().ok()).unwrap_or(20);
            let page: usize = q.get("page").and_then(|v| v.parse().ok()).unwrap_or(1);
            let pages = BRANCHES.len().div_ceil(per_page);
            let items: Vec<serde_json::Value> = BRANCHES
                .iter()
                .enumerate()
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(|(i, b)| {
                    serde_json::json!({"name": b, "merged": false, "protected": *b == "main",
                        "commit": {"id": format!("{:040x}", i + 1), "title": "c"}})
                })
                .collect();
            let mut reply = Reply::json(200, &serde_json::Value::Array(items).to_string())
                .header("x-total", &BRANCHES.len().to_string())
                .header("x-total-pages", &pages.to_string())
                .header("x-page", &page.to_string())
                .header("x-per-page", &per_page.to_string());
            if page < pages {
                reply = reply.header("x-next-page", &(page + 1).to_string());
            }
            Some(reply)
        }
        "/api/v4/projects/devops%2Fsecret/repository/branches" => {
            Some(Reply::json(403, r#"{"message":"403 Forbidden"}"#))
        }
        _ => Some(Reply::json(404, r#"{"message":"404 Not Found"}"#)),
    }
}

const GITLAB_CLASS: &str = r#"
apiVersion: connectors.io/v1alpha1
kind: ConnectorClass
metadata: {name: gitlab-like}
spec:
  address: {schemes: [http, https]}
  auth:
    types:
      - name: patAuth
        secretType: Opaque
        params: [{name: token}]
        injection:
          header: {name: PRIVATE-TOKEN, value: "${secret.token}"}
  livenessProbe:
    http: {path: /api/v4/version, successCodes: [200, 401]}
  api:
    openapi:
      paths:
        /api/v4/projects/{id}/repository/branches:
          get: {operationId: listBranches, x-provider-type: proxy}
    resources:
      - path: /gitlab/branches
        operationId: listGitlabBranches
        parameters:
          - {name: project, required: true, description: "the project's path, e.g. devops/demo"}
        http:
          path: /api/v4/projects/${query.project}/repository/branches
          fields: {name: name, commitID: commit.id, protected: protected}
          paging: {style: page, sizeParam: per_page, size: 2, totalPagesHeader: x-total-pages}
"#;

fn env() -> &'static Env {
    ENV.get_or_init(|| {
        let started = Instant::now();
        let kube = KubeApiServer::start();
        let kubeconfig = controller::install(&kube);
        let timeout = format!("{}s", API_TIMEOUT.as_secs());
        let c = ControllerProcess::start(
            &kubeconfig,
            "info,connectors_controller=debug,connectors_api=debug",
            &["--tls-san", "127.0.0.1", "--api-timeout", &timeout],
        );
        let roots_pem = wait_roots(&kube, &c);

        // The tools.
        let git = GitServer::start(GitServerOptions {
            users: vec![(USER, GIT_PASSWORD)],
            ..Default::default()
        });
        let bare = git.create_repo("team/app.git", &[("README.md", b"hello\n")]);
        git.add_refs(&bare, 300, 300);
        let gitlab = JsonTool::start(gitlab_routes);

        // What a user writes.
        apply(
            &kube,
            &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"),
        );
        apply(&kube, GITLAB_CLASS);
        apply(
            &kube,
            &format!(
                r#"
apiVersion: v1
kind: Secret
metadata: {{name: git-credentials, namespace: {NS}}}
type: kubernetes.io/basic-auth
stringData: {{username: {USER}, password: {GIT_PASSWORD}}}
---
apiVersion: connectors.io/v1alpha1
kind: Connector
metadata: {{name: git, namespace: {NS}}}
spec:
  connectorClassName: git
  address: http://127.0.0.1:{git_port}
  auth:
    secretRef: {{name: git-credentials}}
    params: [{{name: repository, value: team/app.git}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: gitlab-token, namespace: {NS}}}
type: Opaque
stringData: {{token: {GITLAB_TOKEN}}}
---
apiVersion: connectors.io/v1alpha1
kind: Connector
metadata: {{name: gitlab, namespace: {NS}}}
spec:
  connectorClassName: gitlab-like
  address: {gitlab}
  auth: {{name: patAuth, secretRef: {{name: gitlab-token}}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: viewer, namespace: {NS}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: nobody, namespace: {NS}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: connector-viewer, namespace: {NS}}}
rules:
  - apiGroups: [connectors.io]
    resources: [connectors]
    verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: viewer-views-connectors, namespace: {NS}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: connector-viewer}}
subjects: [{{kind: ServiceAccount, name: viewer, namespace: {NS}}}]
"#,
                git_port = git.addr.port(),
                gitlab = gitlab.url(),
            ),
        );
        let viewer = controller::service_account_token(&kube, NS, "viewer");
        let nobody = controller::service_account_token(&kube, NS, "nobody");
        let mut git_path = String::new();
        let published = wait_until(Duration::from_secs(30), || {
            git_path = run_ok(kube.kubectl().args([
                "get",
                "connector",
                "-n",
                NS,
                "git",
                "-o",
                "jsonpath={.status.api.path}",
            ]));
            !git_path.is_empty()
        });
        assert!(
            published,
            "status.api.path of {NS}/git never written; log:\n{}",
            c.log()
        );
        let api = ApiCaller::https(c.https, ch::SERVICE_HOST, &roots_pem);
        let never = credentials();
        api.never_show(&never.iter().map(String::as_str).collect::<Vec<_>>());
        eprintln!(
            "API server, controller and tools up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let env = Env {
            kube_dir: kube.dir.clone(),
            admin_kubeconfig: kube.admin_kubeconfig.clone(),
            kube_port: kube.port,
            kube_ca: kube.ca_cert.clone(),
            api,
            git,
            gitlab,
            viewer,
            nobody,
            git_path,
        };
        *SHARED.lock().expect("shared") = Some(Shared {
            controller: c,
            _kube: kube,
        });
        kt::at_exit(stop_shared);
        env
    })
}

fn kubectl(e: &Env) -> std::process::Command {
    kt::kubectl_with(&e.admin_kubeconfig, &e.kube_dir)
}

/// The cluster roots, as the leader publishes them.
fn wait_roots(kube: &KubeApiServer, c: &ControllerProcess) -> String {
    let mut roots_pem = String::new();
    let found = wait_until(Duration::from_secs(30), || {
        let out = run(kube.kubectl().args([
            "get",
            "configmap",
            "-n",
            ch::AGENT_NAMESPACE,
            "connectors-ca-bundle",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ]));
        roots_pem = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success() && roots_pem.contains("BEGIN CERTIFICATE")
    });
    assert!(found, "no connectors-ca-bundle; log:\n{}", c.log());
    roots_pem
}

/// The refs `git ls-remote` lists (heads and tags, annotated tags peeled), by name.
fn ls_remote(e: &Env) -> BTreeMap<String, String> {
    let url = format!(
        "http://{USER}:{GIT_PASSWORD}@127.0.0.1:{}/team/app.git",
        e.git.addr.port()
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = run_ok(git_in(tmp.path()).args(["ls-remote", "--heads", "--tags", &url]));
    let mut refs = BTreeMap::new();
    for line in out.lines() {
        let Some((oid, name)) = line.split_once('\t') else {
            continue;
        };
        match name.strip_suffix("^{}") {
            Some(tag) => {
                refs.insert(tag.to_owned(), oid.to_owned());
            }
            None => {
                refs.entry(name.to_owned())
                    .or_insert_with(|| oid.to_owned());
            }
        }
    }
    refs
}

fn gitrefs_path(e: &Env, query: &str) -> String {
    let repo = format!("http://127.0.0.1:{}/team/app.git", e.git.addr.port());
    let mut q = format!("repositoryUrl={}", encode(&repo));
    if !query.is_empty() {
        q.push('&');
        q.push_str(query);
    }
    format!("{}/git/gitrefs?{q}", e.git_path)
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn ok(a: Answer) -> Answer {
    assert_eq!(a.status, 200, "answer: {} {:?}", a.body, a.headers);
    a
}

// ---------------------------------------------------------------------------------------------

#[test]
fn git_refs_search_pages_and_totals_match_git_ls_remote() {
    let e = env();
    let refs = ls_remote(e);
    assert_eq!(
        refs.len(),
        600,
        "the server holds 300 branches and 300 tags"
    );
    let token = Some(e.viewer.as_str());
    let names_matching = |search: &str| -> Vec<String> {
        refs.keys()
            .filter(|n| n.contains(search))
            .cloned()
            .collect()
    };

    // Every page of everything, 50 at a time, with the commits ls-remote shows.
    let mut all = Vec::new();
    for page in 1..=13 {
        let a = ok(e.api.get(
            &gitrefs_path(e, &format!("itemsPerPage=50&page={page}")),
            token,
        ));
        assert_eq!(a.total(), 600, "page {page}");
        let v = a.json();
        for item in v["items"].as_array().expect("items") {
            let name = item["name"].as_str().expect("name").to_owned();
            assert_eq!(
                Some(item["commitID"].as_str().expect("commitID")),
                refs.get(&name).map(String::as_str),
                "{name}: the commit (annotated tags peeled) differs from git ls-remote"
            );
            all.push(name);
        }
        if page == 13 {
            assert!(
                v["items"].as_array().is_some_and(Vec::is_empty),
                "past the end"
            );
        }
    }
    assert_eq!(all, refs.keys().cloned().collect::<Vec<_>>());

    // Searches, over several pages; the default page size is 20.
    for search in [
        "feature-1",
        "refs/tags/v1.1",
        "release/2",
        "build-",
        "main",
        "nothing-like-it",
    ] {
        let expected = names_matching(search);
        let a = ok(e.api.get(
            &gitrefs_path(e, &format!("search={}", encode(search))),
            token,
        ));
        assert_eq!(a.total() as usize, expected.len(), "search {search}");
        assert_eq!(
            a.names(),
            expected.iter().take(20).cloned().collect::<Vec<_>>(),
            "search {search}"
        );
        for page in [2, 3] {
            let a = ok(e.api.get(
                &gitrefs_path(
                    e,
                    &format!("search={}&itemsPerPage=7&page={page}", encode(search)),
                ),
                token,
            ));
            assert_eq!(
                a.total() as usize,
                expected.len(),
                "search {search} page {page}"
            );
            let want: Vec<String> = expected
                .iter()
                .skip(7 * (page - 1))
                .take(7)
                .cloned()
                .collect();
            assert_eq!(a.names(), want, "search {search} page {page}");
        }
    }
    // `search=ma` narrows to main (as the reference's acceptance test says).
    assert_eq!(
        ok(e.api.get(&gitrefs_path(e, "search=ma"), token)).names(),
        names_matching("ma")
    );

    // Descending order; one item per page.
    let desc: Vec<String> = refs.keys().rev().take(5).cloned().collect();
    let a = ok(e.api.get(
        &gitrefs_path(e, "sortBy=name&order=desc&itemsPerPage=5"),
        token,
    ));
    assert_eq!(a.names(), desc);
    let a = ok(e.api.get(&gitrefs_path(e, "itemsPerPage=1&page=2"), token));
    assert_eq!(a.total(), 600);
    assert_eq!(
        a.names(),
        vec![refs.keys().nth(1).cloned().unwrap_or_default()]
    );

    // HEAD: the same status, no body.
    let a = e.api.call("HEAD", &gitrefs_path(e, ""), token, &[]);
    assert_eq!(a.status, 200);
    assert!(a.body.is_empty());
}

#[test]
fn bad_git_refs_requests_get_a_status_saying_what_is_wrong() {
    let e = env();
    let token = Some(e.viewer.as_str());
    // No repository.
    let m = e
        .api
        .get(&format!("{}/git/gitrefs", e.git_path), token)
        .assert_status(400, "BadRequest");
    assert!(m.contains("repositoryUrl"), "{m}");
    // A repository outside the Connector's address: the credentials never go there.
    let outside = format!("{}/team/app.git", e.gitlab.url());
    let m = e
        .api
        .get(
            &format!(
                "{}/git/gitrefs?repositoryUrl={}",
                e.git_path,
                encode(&outside)
            ),
            token,
        )
        .assert_status(400, "BadRequest");
    assert!(m.contains("under"), "{m}");
    assert!(
        !e.gitlab
            .received()
            .iter()
            .any(|r| r.target().contains("team/app.git")),
        "a request left for another tool"
    );
    // Not a number.
    e.api
        .get(&gitrefs_path(e, "page=two"), token)
        .assert_status(400, "BadRequest");
    e.api
        .get(&gitrefs_path(e, "order=sideways"), token)
        .assert_status(400, "BadRequest");
    // A repository that is not there.
    let missing = format!("http://127.0.0.1:{}/team/none.git", e.git.addr.port());
    e.api
        .get(
            &format!(
                "{}/git/gitrefs?repositoryUrl={}",
                e.git_path,
                encode(&missing)
            ),
            token,
        )
        .assert_status(404, "NotFound");
}

#[test]
fn callers_get_401_then_403_then_404_as_status_bodies() {
    let e = env();
    let path = gitrefs_path(e, "");
    // No token; a token the cluster does not know.
    let m = e.api.get(&path, None).assert_status(401, "Unauthorized");
    assert!(m.contains("Bearer"), "{m}");
    e.api
        .get(&path, Some("not-a-token-at-all"))
        .assert_status(401, "Unauthorized");
    // A ServiceAccount without `get` on the Connector; for a missing Connector too (its
    // absence is not told to callers who may not know).
    let m = e
        .api
        .get(&path, Some(&e.nobody))
        .assert_status(403, "Forbidden");
    assert!(
        m.contains("may not get Connector") && m.contains("git"),
        "{m}"
    );
    let missing = format!("/connectors/v1alpha1/{NS}/no-such-connector/path/git/gitrefs");
    e.api
        .get(&missing, Some(&e.nobody))
        .assert_status(403, "Forbidden");
    // An allowed caller: unknown Connector, unknown resource, unknown endpoint.
    let m = e
        .api
        .get(&missing, Some(&e.viewer))
        .assert_status(404, "NotFound");
    assert!(m.contains("no-such-connector"), "{m}");
    let m = e
        .api
        .get(&format!("{}/git/gitrefz", e.git_path), Some(&e.viewer))
        .assert_status(404, "NotFound");
    assert!(m.contains("git/gitrefs"), "{m}");
    e.api
        .get(
            &format!("/connectors/v1alpha1/{NS}/git/paths/x"),
            Some(&e.viewer),
        )
        .assert_status(404, "NotFound");
    e.api
        .get(
            "/connectors/v1alpha1/Not_A_Namespace/git/path",
            Some(&e.viewer),
        )
        .assert_status(400, "BadRequest");
    // Writes are off: 405 with Allow.
    let a = e.api.call("POST", &path, Some(&e.viewer), &[]);
    a.assert_status(405, "MethodNotAllowed");
    assert!(
        a.header("allow").is_some_and(|v| v.contains("GET")),
        "{:?}",
        a.headers
    );
    let a = e.api.call(
        "DELETE",
        &format!("{}/api/v4/projects/1", e.git_path),
        Some(&e.viewer),
        &[],
    );
    a.assert_status(405, "MethodNotAllowed");
    // OPTIONS: the methods.
    let a = e.api.call("OPTIONS", &path, Some(&e.viewer), &[]);
    assert!(a.status == 204 || a.status == 200, "{}", a.status);
    // The namespace listing shows only what the caller may get, and no Secret.
    let a = ok(e
        .api
        .get(&format!("/connectors/v1alpha1/{NS}"), Some(&e.viewer)));
    let names = a.names();
    assert!(
        names.contains(&"git".to_owned()) && names.contains(&"gitlab".to_owned()),
        "{names:?}"
    );
    let a = ok(e
        .api
        .get(&format!("/connectors/v1alpha1/{NS}"), Some(&e.nobody)));
    assert_eq!(a.total(), 0, "{}", a.body);
    // The caller's token never reaches a log line.
    assert!(
        !controller_log().contains(&e.viewer),
        "a caller's token reached the log"
    );
}

#[test]
fn a_native_path_is_relayed_through_a_class_written_only_in_yaml() {
    let e = env();
    let token = Some(e.viewer.as_str());
    let gitlab = format!("/connectors/v1alpha1/{NS}/gitlab/path");
    let native =
        format!("{gitlab}/api/v4/projects/devops%2Fdemo/repository/branches?per_page=2&page=2");
    let a = ok(e.api.call(
        "GET",
        &native,
        token,
        &[
            "Cookie: session=caller-cookie-1f2",
            "Accept: application/json",
        ],
    ));
    // The tool's body and paging headers, unchanged.
    let v = a.json();
    let names: Vec<&str> = v
        .as_array()
        .expect("GitLab's own array")
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert_eq!(names, ["feature/search", "main"]);
    assert_eq!(a.header("x-total"), Some("5"));
    assert_eq!(a.header("x-total-pages"), Some("3"));
    assert_eq!(a.header("x-next-page"), Some("3"));
    // Upstream: the raw `%2F`, the Connector's token, never the caller's token or cookie.
    let got = e
        .gitlab
        .received()
        .into_iter()
        .rfind(|r| r.target().contains("devops%2Fdemo") && r.target().contains("page=2"))
        .unwrap_or_else(|| panic!("not relayed; tool log:\n{}", e.gitlab.access_log()));
    assert_eq!(
        got.target(),
        "/api/v4/projects/devops%2Fdemo/repository/branches?per_page=2&page=2"
    );
    assert_eq!(got.header("private-token"), Some(GITLAB_TOKEN));
    assert!(got.header("authorization").is_none(), "{got:?}");
    assert!(got.header("cookie").is_none(), "{got:?}");
    // The tool's own refusal passes through as it is.
    let a = e.api.get(
        &format!("{gitlab}/api/v4/projects/devops%2Fsecret/repository/branches"),
        token,
    );
    assert_eq!(a.status, 403);
    assert_eq!(a.body, r#"{"message":"403 Forbidden"}"#);

    // The same list as a declared resource: every page of the tool read, in the envelope.
    let a = ok(e.api.get(
        &format!("{gitlab}/gitlab/branches?project=devops%2Fdemo&search=feature"),
        token,
    ));
    assert_eq!(a.total(), 2);
    assert_eq!(a.names(), ["feature/login", "feature/search"]);
    let a = ok(e.api.get(
        &format!("{gitlab}/gitlab/branches?project=devops%2Fdemo&itemsPerPage=2&page=3"),
        token,
    ));
    assert_eq!(a.total(), 5);
    assert_eq!(a.names(), ["release-1"]);
    assert_eq!(a.json()["items"][0]["commitID"], format!("{:040x}", 5));
    e.api
        .get(&format!("{gitlab}/gitlab/branches"), token)
        .assert_status(400, "BadRequest");

    // Nothing the tool received carries a Kubernetes token.
    let log = e.gitlab.access_log();
    for t in [&e.viewer, &e.nobody] {
        assert!(
            !log.contains(t.as_str()),
            "a caller's token went upstream:\n{log}"
        );
    }
    assert!(
        !log.contains("caller-cookie-1f2"),
        "a caller's cookie went upstream"
    );
}

#[test]
fn a_hanging_tool_gets_504_naming_the_connector_while_others_are_served() {
    let e = env();
    let token = e.viewer.clone();
    let hang = format!(
        "/connectors/v1alpha1/{NS}/gitlab/path/api/v4/projects/slow%2Fone/repository/branches"
    );
    let api = &e.api;
    std::thread::scope(|s| {
        let stuck: Vec<_> = (0..3)
            .map(|_| s.spawn(|| api.get(&hang, Some(&token))))
            .collect();
        // Meanwhile, other callers are answered at once.
        std::thread::sleep(Duration::from_millis(300));
        for i in 0..5 {
            let a = ok(api.get(
                &gitrefs_path(e, &format!("search=feature-{i}")),
                Some(&token),
            ));
            assert!(
                a.took < Duration::from_secs(2),
                "served in {:?} while a tool hung",
                a.took
            );
        }
        for t in stuck {
            let a = t.join().expect("caller");
            let m = a.assert_status(504, "Timeout");
            assert!(m.contains(&format!("{NS}/gitlab")), "{m}");
            assert!(
                a.took >= API_TIMEOUT - Duration::from_millis(200)
                    && a.took < API_TIMEOUT + Duration::from_secs(3),
                "answered in {:?}, the timeout is {API_TIMEOUT:?}",
                a.took
            );
        }
    });
}

#[test]
fn oci_tags_and_repositories_match_skopeo_with_5000_tags() {
    let e = env();
    let registry = OciFixture::start(e);
    let token = Some(e.viewer.as_str());
    let base = format!("/connectors/v1alpha1/{NS}/registry/path");
    let tags = registry.skopeo_tags("team/app");
    assert_eq!(tags.len(), 5000, "skopeo list-tags");
    let mut sorted = tags.clone();
    sorted.sort();

    let a = ok(e
        .api
        .get(&format!("{base}/oci/tags?repository=team/app"), token));
    assert_eq!(a.total(), 5000);
    assert_eq!(a.names(), sorted[..20].to_vec());
    for (search, per_page, page) in [
        ("v12", 7, 1),
        ("v12", 7, 3),
        ("v499", 20, 1),
        ("x", 20, 1),
        ("", 1000, 5),
    ] {
        let expected: Vec<&String> = sorted.iter().filter(|t| t.contains(search)).collect();
        let a = ok(e.api.get(
            &format!(
                "{base}/oci/tags?repository=team/app&search={search}&itemsPerPage={per_page}&page={page}"
            ),
            token,
        ));
        assert_eq!(a.total() as usize, expected.len(), "search {search}");
        let want: Vec<String> = expected
            .iter()
            .skip(per_page * (page - 1))
            .take(per_page)
            .map(|s| (*s).clone())
            .collect();
        assert_eq!(a.names(), want, "search {search} page {page}");
    }
    let a = ok(e.api.get(&format!("{base}/oci/repositories"), token));
    assert_eq!(a.names(), ["team/app", "team/tools"]);
    let a = ok(e
        .api
        .get(&format!("{base}/oci/repositories?search=tools"), token));
    assert_eq!(a.names(), ["team/tools"]);
    // An unknown repository: 404.
    e.api
        .get(&format!("{base}/oci/tags?repository=team/none"), token)
        .assert_status(404, "NotFound");
    // The native distribution API, relayed as the registry answers it (distribution 2.8 does
    // not page tags/list; its catalog pages with `n` and `Link`).
    let a = ok(e.api.get(&format!("{base}/v2/team/app/tags/list"), token));
    assert_eq!(a.json()["name"], "team/app");
    assert_eq!(a.json()["tags"].as_array().map(Vec::len), Some(5000));
    let a = ok(e.api.get(&format!("{base}/v2/_catalog?n=1"), token));
    assert_eq!(a.json()["repositories"], serde_json::json!(["team/app"]));
    assert!(
        a.header("link").is_some_and(|l| l.contains("rel=\"next\"")),
        "{:?}",
        a.headers
    );
    // The registry authenticated the relayed requests as the Connector's user (its log names
    // the user of each request it authenticated).
    let log = registry.registry.log();
    assert!(
        log.contains(&format!("auth.user.name=\"{USER}\""))
            || log.contains(&format!("auth.user.name={USER} ")),
        "the registry did not see the Connector's user:\n{log}"
    );
}

/// The registry (htpasswd, TLS) with `team/app` holding 5000 tags of one small image and
/// `team/tools` one, and a Connector `registry` of the built-in `oci` class for it.
struct OciFixture {
    registry: connectors_tests::registry::Registry,
    ca_dir: tempfile::TempDir,
}

const REGISTRY_PASSWORD: &str = "reg-pass-55e0";

impl OciFixture {
    fn start(e: &Env) -> Self {
        use connectors_tests::registry::{Registry, RegistryAuth, RegistryOptions, push_tags};
        let ca = connectors_tests::TestCa::new("registry test CA");
        let registry = Registry::start(RegistryOptions {
            listen: None,
            tls: (&ca, vec!["127.0.0.1"]),
            auth: RegistryAuth::Htpasswd(vec![(USER, REGISTRY_PASSWORD)]),
        });
        let ca_dir = tempfile::tempdir().expect("tempdir");
        let ca_file = ca.write_cert(ca_dir.path());
        std::fs::copy(&ca_file, ca_dir.path().join("ca.crt")).expect("ca.crt");
        let base = registry.url("127.0.0.1");
        let started = Instant::now();
        let creds = (USER, REGISTRY_PASSWORD);
        push_tags(&registry, &ca_file, creds, "team/app", "v[0001-5000]");
        push_tags(&registry, &ca_file, creds, "team/tools", "latest");
        eprintln!(
            "5000 tags pushed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let pem = std::fs::read_to_string(&ca_file).expect("CA");
        let pem = connectors_tests::indent(&pem, 4);
        apply_as_admin(
            e,
            &format!(
                r#"
apiVersion: v1
kind: Secret
metadata: {{name: registry-ca, namespace: {NS}}}
stringData:
  ca.crt: |
{pem}
---
apiVersion: v1
kind: Secret
metadata: {{name: registry-login, namespace: {NS}}}
type: kubernetes.io/basic-auth
stringData: {{username: {USER}, password: {REGISTRY_PASSWORD}}}
---
apiVersion: connectors.io/v1alpha1
kind: Connector
metadata: {{name: registry, namespace: {NS}}}
spec:
  connectorClassName: oci
  address: {base}
  caCertSecretRef: {{name: registry-ca}}
  auth: {{name: basicAuth, secretRef: {{name: registry-login}}}}
"#,
            ),
        );
        Self { registry, ca_dir }
    }

    /// `skopeo list-tags` of `repo`, with the Connector's credentials and the registry's CA.
    fn skopeo_tags(&self, repo: &str) -> Vec<String> {
        connectors_tests::require_tool("skopeo");
        let out = run_ok(
            std::process::Command::new("skopeo")
                .args(["list-tags", "--creds"])
                .arg(format!("{USER}:{REGISTRY_PASSWORD}"))
                .arg("--cert-dir")
                .arg(self.ca_dir.path())
                .arg(format!(
                    "docker://{}/{repo}",
                    self.registry.reference_host("127.0.0.1")
                )),
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("skopeo JSON");
        v["Tags"]
            .as_array()
            .expect("Tags")
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect()
    }
}

fn apply_as_admin(e: &Env, yaml: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("object.yaml");
    std::fs::write(&file, yaml).expect("yaml");
    run_ok(kubectl(e).arg("apply").arg("-f").arg(&file));
}

/// Namespaces the k8s test creates, all named `api-ns-NN`.
const TEST_NAMESPACES: usize = 27;

#[test]
fn k8s_namespaces_match_kubectl_through_a_connector_with_a_service_account_token() {
    let e = env();
    let mut objects = String::new();
    for i in 0..TEST_NAMESPACES {
        objects.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: api-ns-{i:02}}}\n---\n"
        ));
    }
    // A ServiceAccount that may only read namespaces; its token is the Connector's credential.
    objects.push_str(&format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: ns-lister, namespace: {NS}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: api-test-ns-lister}}
rules: [{{apiGroups: [""], resources: [namespaces], verbs: [get, list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: api-test-ns-lister}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: api-test-ns-lister}}
subjects: [{{kind: ServiceAccount, name: ns-lister, namespace: {NS}}}]
"#
    ));
    apply_as_admin(e, &objects);
    let lister =
        controller::service_account_token_via(&e.admin_kubeconfig, &e.kube_dir, NS, "ns-lister");
    e.api.never_show(&[lister.as_str()]);
    let pem = std::fs::read_to_string(&e.kube_ca).expect("API server CA");
    let pem = connectors_tests::indent(&pem, 4);
    apply_as_admin(
        e,
        &format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: cluster-ca, namespace: {NS}}}
stringData:
  ca.crt: |
{pem}
---
apiVersion: v1
kind: Secret
metadata: {{name: cluster-token, namespace: {NS}}}
type: connectors.io/bearer-token
stringData: {{token: "{lister}"}}
---
apiVersion: connectors.io/v1alpha1
kind: Connector
metadata: {{name: cluster, namespace: {NS}}}
spec:
  connectorClassName: k8s
  address: https://127.0.0.1:{port}
  caCertSecretRef: {{name: cluster-ca}}
  auth: {{name: bearerTokenAuth, secretRef: {{name: cluster-token}}}}
"#,
            port = e.kube_port,
        ),
    );
    let token = Some(e.viewer.as_str());
    let base = format!("/connectors/v1alpha1/{NS}/cluster/path");
    // Until the controller has the new Connector (and every test namespace shows).
    let mut last = String::new();
    let served = wait_until(Duration::from_secs(30), || {
        let a = e.api.get(
            &format!("{base}/k8s/namespaces?search=api-ns-&itemsPerPage=100"),
            token,
        );
        last = format!("{} {}", a.status, a.body);
        a.status == 200 && a.total() as usize == TEST_NAMESPACES
    });
    assert!(
        served,
        "k8s/namespaces never listed the test namespaces: {last}"
    );

    let out = run_ok(kubectl(e).args(["get", "ns", "-o", "name"]));
    let mut all: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("namespace/"))
        .map(str::to_owned)
        .collect();
    all.sort();
    let a = ok(e.api.get(&format!("{base}/k8s/namespaces"), token));
    assert_eq!(a.total() as usize, all.len(), "{}", a.body);
    assert_eq!(a.names(), all.iter().take(20).cloned().collect::<Vec<_>>());
    for (search, per_page, page) in [
        ("api-ns-", 10, 1),
        ("api-ns-", 10, 3),
        ("ns-1", 5, 2),
        ("none-such", 20, 1),
    ] {
        let expected: Vec<&String> = all.iter().filter(|n| n.contains(search)).collect();
        let a = ok(e.api.get(
            &format!("{base}/k8s/namespaces?search={search}&itemsPerPage={per_page}&page={page}"),
            token,
        ));
        assert_eq!(a.total() as usize, expected.len(), "search {search}");
        let want: Vec<String> = expected
            .iter()
            .skip(per_page * (page - 1))
            .take(per_page)
            .map(|s| (*s).clone())
            .collect();
        assert_eq!(a.names(), want, "search {search} page {page}");
    }
    // The Kubernetes API itself, relayed with the Connector's token: the ServiceAccount may
    // list namespaces but not read Secrets, and the API server's own refusal comes back.
    let a = ok(e
        .api
        .get(&format!("{base}/api/v1/namespaces/api-ns-03"), token));
    assert_eq!(a.json()["metadata"]["name"], "api-ns-03");
    let a = e
        .api
        .get(&format!("{base}/api/v1/namespaces/{NS}/secrets"), token);
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        a.body.contains("ns-lister"),
        "not the Connector's identity: {}",
        a.body
    );
    // A caller without `get` on the Connector sees none of it.
    e.api
        .get(&format!("{base}/k8s/namespaces"), Some(e.nobody.as_str()))
        .assert_status(403, "Forbidden");
}

#[test]
fn the_openapi_document_is_served_and_no_answer_ever_showed_a_credential() {
    let e = env();
    let a = ok(e.api.get("/connectors/v1alpha1/openapi.json", None));
    let v = a.json();
    assert!(
        v["openapi"].as_str().is_some_and(|s| s.starts_with("3.")),
        "{}",
        a.body
    );
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json"),
        )
        .expect("docs/openapi.json"),
    )
    .expect("committed document");
    assert_eq!(
        v, committed,
        "the served document differs from docs/openapi.json"
    );
    // Every answer of every test is checked as it arrives (`never_show`); again here.
    e.api.assert_never_shows(&credentials());
    assert!(e.api.answers() > 0, "no answers checked");
}

/// What no answer may ever contain.
fn credentials() -> Vec<String> {
    vec![
        GIT_PASSWORD.to_owned(),
        GITLAB_TOKEN.to_owned(),
        REGISTRY_PASSWORD.to_owned(),
        // Basic credentials as they travel.
        base64_basic(USER, GIT_PASSWORD),
        base64_basic(USER, REGISTRY_PASSWORD),
    ]
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}
