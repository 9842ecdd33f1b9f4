//! The UI developers' page, in a real headless Chromium: the standalone agent serves the
//! unified REST API (`--api-listen`, `--api-token-file`) over a configuration folder holding a
//! git Connector written as the README says, for a git server (git http-backend behind nginx)
//! with 300 branches and 300 tags. The test loads the page, types searches as a user does, and
//! compares the dropdowns' options with `git ls-remote`; the screenshot is saved under
//! `target/test-artifacts/`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use connectors_tests::api_caller::ApiCaller;
use connectors_tests::browser::Browser;
use connectors_tests::git_server::git_in;
use connectors_tests::{
    AgentProcess, ConfigDir, GitConnector, GitServer, GitServerOptions, free_port, run_ok,
};
use serde_json::Value;

const USER: &str = "alice";
const PASSWORD: &str = "page-pass-93b2";
const API_TOKEN: &str = "ui-dev-token-4c0f1e";

fn ls_remote(server: &GitServer) -> BTreeSet<String> {
    let url = format!(
        "http://{USER}:{PASSWORD}@127.0.0.1:{}/team/app.git",
        server.addr.port()
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    run_ok(git_in(tmp.path()).args(["ls-remote", "--heads", "--tags", &url]))
        .lines()
        .filter_map(|l| l.split_once('\t').map(|(_, n)| n))
        .filter(|n| !n.ends_with("^{}"))
        .map(str::to_owned)
        .collect()
}

fn options(b: &mut Browser, picker: &str) -> Vec<String> {
    let v = b.eval(&format!(
        "[...document.querySelectorAll('#select-{picker} option')].map(o => o.value)"
    ));
    v.as_array()
        .expect("options")
        .iter()
        .map(|o| o.as_str().unwrap_or_default().to_owned())
        .collect()
}

fn settled(b: &mut Browser, picker: &str, search: &str) -> bool {
    b.wait_for(
        &format!(
            "(() => {{ const p = document.getElementById('picker-{picker}'); return p && p.dataset.state === 'ready' && p.dataset.search === {}; }})()",
            Value::from(search)
        ),
        Duration::from_secs(20),
    )
}

fn total(b: &mut Browser, picker: &str) -> usize {
    b.eval(&format!(
        "Number(document.getElementById('picker-{picker}').dataset.total)"
    ))
    .as_u64()
    .unwrap_or(u64::MAX) as usize
}

#[test]
fn the_page_fills_branch_and_tag_pickers_that_match_git_ls_remote() {
    let server = GitServer::start(GitServerOptions {
        users: vec![(USER, PASSWORD)],
        ..Default::default()
    });
    let bare = server.create_repo("team/app.git", &[("README.md", b"hello\n")]);
    server.add_refs(&bare, 300, 300);
    let refs = ls_remote(&server);
    assert_eq!(refs.len(), 600);

    let dir = ConfigDir::new();
    dir.basic_auth_secret("git-credentials", USER, PASSWORD);
    dir.git_connector(&GitConnector {
        name: "git",
        address: format!("http://127.0.0.1:{}", server.addr.port()),
        repository: None,
        secret: Some("git-credentials"),
        ca_pem: None,
    });
    let token_dir = tempfile::tempdir().expect("tempdir");
    let token_file = token_dir.path().join("api-token");
    std::fs::write(&token_file, format!("{API_TOKEN}\n")).expect("token");
    let api_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let agent = AgentProcess::start(
        dir.path(),
        "info",
        &[
            "--api-listen",
            &api_addr.to_string(),
            "--api-token-file",
            &token_file.display().to_string(),
        ],
    );

    // The page is served by the API itself, with no token (it holds no data).
    let api = ApiCaller::http(api_addr);
    api.never_show(&[PASSWORD]);
    let page = api.get("/connectors/ui/", None);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("app.js"));
    let stranger = api.get("/connectors/v1alpha1/default", Some("wrong-token"));
    stranger.assert_status(401, "Unauthorized");

    let mut b = Browser::start();
    b.open(&format!(
        "{}/connectors/ui/#token={API_TOKEN}&namespace=default&connector=git&repository=team/app.git",
        api.base()
    ));
    // Everything, first: 300 branches and 300 tags, 20 per page.
    assert!(
        settled(&mut b, "branches", "") && settled(&mut b, "tags", ""),
        "the pickers did not fill; page error: {}; agent log:\n{}",
        b.eval("document.getElementById('error').textContent"),
        agent.log()
    );
    let heads: Vec<&String> = refs
        .iter()
        .filter(|r| r.starts_with("refs/heads/"))
        .collect();
    let tags: Vec<&String> = refs
        .iter()
        .filter(|r| r.starts_with("refs/tags/"))
        .collect();
    assert_eq!(total(&mut b, "branches"), heads.len());
    assert_eq!(total(&mut b, "tags"), tags.len());
    assert_eq!(
        options(&mut b, "branches"),
        heads
            .iter()
            .take(20)
            .map(|s| (*s).clone())
            .collect::<Vec<_>>()
    );

    // Typed searches: the options are those of `git ls-remote` whose short name starts so.
    for (picker, prefix, typed) in [
        ("branches", "refs/heads/", "feature-1"),
        ("tags", "refs/tags/", "v1.2"),
    ] {
        b.type_into(&format!("#search-{picker}"), typed);
        assert!(
            settled(&mut b, picker, typed),
            "{picker} did not settle on '{typed}'; page error: {}",
            b.eval("document.getElementById('error').textContent")
        );
        let want: Vec<String> = refs
            .iter()
            .filter(|r| r.starts_with(&format!("{prefix}{typed}")))
            .cloned()
            .collect();
        assert!(!want.is_empty());
        assert_eq!(total(&mut b, picker), want.len(), "{picker} '{typed}'");
        assert_eq!(
            options(&mut b, picker),
            want.iter().take(20).cloned().collect::<Vec<_>>(),
            "{picker} '{typed}'"
        );
    }
    // The next page of the branches.
    b.eval("document.querySelector('#picker-branches button:nth-of-type(2)').click()");
    assert!(b.wait_for(
        "document.getElementById('picker-branches').dataset.page === '2' && document.getElementById('picker-branches').dataset.state === 'ready'",
        Duration::from_secs(20)
    ));
    let want: Vec<String> = refs
        .iter()
        .filter(|r| r.starts_with("refs/heads/feature-1"))
        .skip(20)
        .take(20)
        .cloned()
        .collect();
    assert_eq!(options(&mut b, "branches"), want);
    b.eval("document.getElementById('select-branches').selectedIndex = 0");

    let shot =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/api_page.png");
    b.screenshot(&shot);
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "screenshot of {size} bytes");
    eprintln!("screenshot: {}", shot.display());

    // The page never showed the tool's password.
    let html = b.eval("document.documentElement.outerHTML");
    assert!(!html.as_str().unwrap_or_default().contains(PASSWORD));
    agent.assert_never_shows(&[PASSWORD]);
}
