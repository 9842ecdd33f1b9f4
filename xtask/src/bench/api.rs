//! `cargo xtask bench api`: the unified REST API (served by the standalone agent, release
//! build) listing what a UI's dropdowns list, beside the tools' own clients on the same tools,
//! in one run:
//!
//! - 5000 image tags of one repository of Debian's docker-registry (TLS, Basic):
//!   `GET .../oci/tags` cold (an agent with its answer cache off: every call reads every page
//!   from the registry) and cached (an agent keeping answers), against `skopeo list-tags` and a
//!   direct paginated fetch of `/v2/<repo>/tags/list` (curl following `Link`, the same page
//!   size as the API);
//! - 600 refs (300 branches, 300 tags) of a git server (git http-backend behind nginx):
//!   `GET .../git/gitrefs` cold and cached against `git ls-remote`.
//!
//! Each figure is the median of N rounds, the contenders taking turns.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use connectors_tests::git_server::git_in;
use connectors_tests::registry::{Registry, RegistryAuth, RegistryOptions, push_tags};
use connectors_tests::{
    AgentProcess, ConfigDir, GitConnector, GitServer, GitServerOptions, TestCa, free_port,
};

use super::stats::{median, ratio};
use crate::cmd::{cargo, exec, output};

const USER: &str = "bench";
const PASSWORD: &str = "bench-password";
const TOKEN: &str = "bench-api-token";
const OCI_CLASS: &str = include_str!("../../../deploy/classes/oci.yaml");

#[derive(Args)]
pub struct ApiBenchArgs {
    /// Rounds per contender.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Tags in the registry's repository.
    #[arg(long, default_value_t = 5000)]
    pub tags: usize,
    /// Build and run the debug agent instead of the release one (quicker to build).
    #[arg(long)]
    pub debug: bool,
    /// Use the agent binary already in target/ (no build).
    #[arg(long)]
    pub no_build: bool,
}

struct Agent {
    process: AgentProcess,
    api: String,
    _token: tempfile::TempDir,
}

fn start_agent(bin: &Path, dir: &ConfigDir, cache_ttl: &str) -> Agent {
    let token = tempfile::tempdir().expect("tempdir");
    let file = token.path().join("token");
    std::fs::write(&file, TOKEN).expect("token file");
    let listen = format!("127.0.0.1:{}", free_port());
    let process = AgentProcess::start_bin(
        bin,
        dir.path(),
        "warn",
        &[
            "--api-listen",
            &listen,
            "--api-token-file",
            &file.display().to_string(),
            "--api-cache-ttl",
            cache_ttl,
        ],
    );
    Agent {
        process,
        api: format!("http://{listen}"),
        _token: token,
    }
}

/// `GET url` with the API token; the body.
fn api_get(agent: &Agent, path: &str) -> anyhow::Result<String> {
    let _ = &agent.process;
    output(Command::new("curl").args([
        "-sSf",
        "-H",
        &format!("Authorization: Bearer {TOKEN}"),
        &format!("{}{path}", agent.api),
    ]))
}

fn timed(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    f()?;
    Ok(started.elapsed())
}

fn total(body: &str) -> anyhow::Result<u64> {
    let v: serde_json::Value = serde_json::from_str(body).context("API answer")?;
    v["listMeta"]["totalItems"]
        .as_u64()
        .context("no listMeta.totalItems")
}

pub fn run(args: &ApiBenchArgs) -> anyhow::Result<()> {
    let mut build = cargo();
    build.args(["build", "-p", "connectors-agent"]);
    if !args.debug {
        build.arg("--release");
    }
    if !args.no_build {
        exec(&mut build)?;
    }
    let bin = crate::cmd::root().join(if args.debug {
        "target/debug/connectors-agent"
    } else {
        "target/release/connectors-agent"
    });

    // The tools.
    let ca = TestCa::new("bench tools CA");
    let ca_dir = tempfile::tempdir()?;
    let ca_file = ca.write_cert(ca_dir.path());
    std::fs::copy(&ca_file, ca_dir.path().join("ca.crt"))?;
    let registry = Registry::start(RegistryOptions {
        listen: None,
        tls: (&ca, vec!["127.0.0.1"]),
        auth: RegistryAuth::Htpasswd(vec![(USER, PASSWORD)]),
    });
    let glob = format!("v[{:05}-{:05}]", 1, args.tags);
    push_tags(&registry, &ca_file, (USER, PASSWORD), "team/app", &glob);
    let git = GitServer::start(GitServerOptions {
        users: vec![(USER, PASSWORD)],
        ..Default::default()
    });
    let bare = git.create_repo("team/app.git", &[("README.md", b"bench\n")]);
    git.add_refs(&bare, 300, 300);

    // The Connectors, as a user writes them.
    let dir = ConfigDir::new();
    dir.write("oci-class.yaml", OCI_CLASS);
    dir.basic_auth_secret("credentials", USER, PASSWORD);
    dir.git_connector(&GitConnector {
        name: "git",
        address: git.url("127.0.0.1"),
        repository: None,
        secret: Some("credentials"),
        ca_pem: None,
    });
    let pem = std::fs::read_to_string(&ca_file)?;
    dir.write(
        "registry.yaml",
        &format!(
            "apiVersion: connectors.io/v1alpha1\nkind: Connector\nmetadata: {{name: registry, namespace: default}}\nspec:\n  connectorClassName: oci\n  address: {}\n  caCertSecretRef: {{name: registry-ca}}\n  auth: {{name: basicAuth, secretRef: {{name: credentials}}}}\n---\n{}",
            registry.url("127.0.0.1"),
            connectors_tests::ca_secret_yaml("registry-ca", "default", &pem)
        ),
    );
    let cold = start_agent(&bin, &dir, "0");
    let cached = start_agent(&bin, &dir, "3600");

    let tags_path = "/connectors/v1alpha1/default/registry/path/oci/tags?repository=team/app";
    let repo_url = format!("{}/team/app.git", git.url("127.0.0.1"));
    let refs_path = format!(
        "/connectors/v1alpha1/default/git/path/git/gitrefs?repositoryUrl={}",
        repo_url.replace(':', "%3A").replace('/', "%2F")
    );
    // Correctness first: the same counts as the tools' own clients.
    let skopeo = || -> anyhow::Result<usize> {
        let out = output(
            Command::new("skopeo")
                .args(["list-tags", "--creds", &format!("{USER}:{PASSWORD}")])
                .arg("--cert-dir")
                .arg(ca_dir.path())
                .arg(format!(
                    "docker://{}/team/app",
                    registry.reference_host("127.0.0.1")
                )),
        )?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v["Tags"].as_array().map_or(0, Vec::len))
    };
    let direct = || -> anyhow::Result<usize> {
        direct_tags(&registry.url("127.0.0.1"), &ca_file, "team/app", 1000)
    };
    let ls_remote = || -> anyhow::Result<usize> {
        let url = format!(
            "http://{USER}:{PASSWORD}@127.0.0.1:{}/team/app.git",
            git.addr.port()
        );
        let out = output(git_in(ca_dir.path()).args(["ls-remote", "--heads", "--tags", &url]))?;
        Ok(out.lines().filter(|l| !l.ends_with("^{}")).count())
    };
    let n_tags = skopeo()?;
    let n_refs = ls_remote()?;
    for (what, agent, path, want) in [
        ("tags, cold", &cold, tags_path, n_tags),
        ("tags, cached", &cached, tags_path, n_tags),
        ("refs, cold", &cold, refs_path.as_str(), n_refs),
        ("refs, cached", &cached, refs_path.as_str(), n_refs),
    ] {
        let got = total(&api_get(agent, path)?)? as usize;
        if got != want {
            bail!("{what}: the API counts {got}, the tool's client {want}");
        }
    }
    if direct()? != n_tags {
        bail!("the direct paginated fetch does not count {n_tags} tags");
    }

    let mut t = [(); 7].map(|()| Vec::new());
    for _ in 0..args.rounds {
        t[0].push(timed(|| api_get(&cold, tags_path).map(drop))?);
        t[1].push(timed(|| api_get(&cached, tags_path).map(drop))?);
        t[2].push(timed(|| skopeo().map(drop))?);
        t[3].push(timed(|| direct().map(drop))?);
        t[4].push(timed(|| api_get(&cold, &refs_path).map(drop))?);
        t[5].push(timed(|| api_get(&cached, &refs_path).map(drop))?);
        t[6].push(timed(|| ls_remote().map(drop))?);
    }
    let m: Vec<Duration> = t.iter().map(|s| median(s)).collect();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!();
    println!(
        "unified REST API, standalone agent ({} build), median of {} rounds",
        if args.debug { "debug" } else { "release" },
        args.rounds
    );
    println!();
    println!("{n_tags} image tags (docker-registry, TLS, Basic; page size 1000)");
    println!(
        "  API oci/tags, cold (every page read)   {:9.1} ms",
        ms(m[0])
    );
    println!(
        "  API oci/tags, cached                   {:9.1} ms",
        ms(m[1])
    );
    println!(
        "  skopeo list-tags                       {:9.1} ms",
        ms(m[2])
    );
    println!(
        "  direct paginated fetch (curl, Link)    {:9.1} ms",
        ms(m[3])
    );
    println!(
        "  ratios: cold/skopeo {:.2}x, cold/direct {:.2}x, cached/skopeo {:.3}x, cached/direct {:.3}x",
        ratio(m[0], m[2]),
        ratio(m[0], m[3]),
        ratio(m[1], m[2]),
        ratio(m[1], m[3])
    );
    println!();
    println!("{n_refs} git refs (git http-backend behind nginx, Basic)");
    println!(
        "  API git/gitrefs, cold                  {:9.1} ms",
        ms(m[4])
    );
    println!(
        "  API git/gitrefs, cached                {:9.1} ms",
        ms(m[5])
    );
    println!(
        "  git ls-remote                          {:9.1} ms",
        ms(m[6])
    );
    println!(
        "  ratios: cold/ls-remote {:.2}x, cached/ls-remote {:.3}x",
        ratio(m[4], m[6]),
        ratio(m[5], m[6])
    );
    Ok(())
}

/// Every tag of `repo`, fetched page by page as a client with the credentials does: curl,
/// following `Link: <...>; rel="next"`. Returns the count.
fn direct_tags(base: &str, ca_file: &Path, repo: &str, n: usize) -> anyhow::Result<usize> {
    let mut next = Some(format!("/v2/{repo}/tags/list?n={n}"));
    let mut count = 0;
    let headers = tempfile::NamedTempFile::new()?;
    while let Some(path) = next.take() {
        let body = output(
            Command::new("curl")
                .args(["-sSf", "--cacert"])
                .arg(ca_file)
                .args(["-u", &format!("{USER}:{PASSWORD}"), "-D"])
                .arg(headers.path())
                .arg(format!("{base}{path}")),
        )?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        count += v["tags"].as_array().map_or(0, Vec::len);
        let head = std::fs::read_to_string(headers.path())?;
        next = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            if !name.eq_ignore_ascii_case("link") {
                return None;
            }
            let start = value.find('<')? + 1;
            let end = value.find('>')?;
            Some(value[start..end].to_owned())
        });
    }
    Ok(count)
}
