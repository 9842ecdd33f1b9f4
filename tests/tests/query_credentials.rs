//! A class that injects its credential as a query parameter (`?private_token=...`, as GitLab
//! accepts) must not have the tool hand it back to the workload: nginx's trailing-slash redirect
//! (`Location`), a `Link`, a `Content-Location`, or any header echoing it. The tool still gets it.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use connectors_tests::{AgentProcess, ConfigDir, GitServer, GitServerOptions, TestCa, run};

const TOKEN: &str = "glpat-S3cr3tT0ken-xyz";

const CLASS: &str = r#"
apiVersion: connectors.io/v1alpha1
kind: ConnectorClass
metadata: {name: tokened}
spec:
  address: {schemes: [https]}
  auth:
    types:
      - name: patAuth
        secretType: Opaque
        params: [{name: token}]
        injection:
          query: {name: private_token, value: "${secret.token}"}
"#;

#[test]
fn an_injected_query_credential_never_comes_back_in_response_headers() {
    let www = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(www.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let dir = www.path().join("team/dir");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("index.html"), "hello\n").expect("index");
    for d in [www.path().join("team"), dir.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let ca = TestCa::new("tools CA");
    let server = GitServer::start(GitServerOptions {
        tls: Some((&ca, vec!["git.test"])),
        users: vec![],
        extra: format!(
            r#"location /team/ {{
                 root {www};
                 add_header Link "<$scheme://$host:$server_port$request_uri>; rel=\"self\", <https://git.test/team/p?page=2&private_token=$arg_private_token>; rel=\"next\"" always;
                 add_header Content-Location $request_uri always;
                 add_header X-Echo "you sent $arg_private_token" always;
                 add_header Refresh "30; url=$request_uri" always;
               }}"#,
            www = www.path().display()
        ),
        ..Default::default()
    });
    let port = server.addr.port();
    let config = ConfigDir::new();
    config.write("class.yaml", CLASS);
    config.write(
        "connector.yaml",
        &format!(
            "apiVersion: connectors.io/v1alpha1\nkind: Connector\nmetadata: {{name: tok, namespace: default}}\nspec:\n  connectorClassName: tokened\n  address: https://git.test:{port}/team\n  auth: {{secretRef: {{name: tok}}}}\n  caCertSecretRef: {{name: tok-ca}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: tok, namespace: default}}\ntype: Opaque\nstringData: {{token: {TOKEN}}}\n---\n{}",
            connectors_tests::ca_secret_yaml("tok-ca", "default", &ca.cert_pem)
        ),
    );
    let hosts = config.hosts_file(&[("127.0.0.1", "git.test")]);
    let agent = AgentProcess::start(
        config.path(),
        "debug",
        &["--hosts-file", hosts.to_str().expect("utf-8")],
    );

    for (path, status) in [
        // nginx redirects a folder to its trailing-slash form, query and all.
        ("/team/dir", "301"),
        ("/team/dir?x=1", "301"),
        ("/team/dir/", "200"),
        ("/team/dir/?private_token=mine", "200"),
    ] {
        let out = run(Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-D", "-", "--max-time", "10"])
            .args(["-w", "status=%{http_code}"])
            .arg("--cacert")
            .arg(agent.ca_path())
            .arg("-x")
            .arg(agent.proxy_url())
            .arg(format!("https://git.test:{port}{path}")));
        let head = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            head.ends_with(&format!("status={status}")),
            "{path}: {head}\n{}",
            agent.log()
        );
        assert!(
            !head.contains(TOKEN),
            "{path}: the token came back:\n{head}"
        );
        assert!(
            !head.to_ascii_lowercase().contains("x-echo"),
            "{path}: {head}"
        );
        if status == "301" {
            assert!(
                head.to_ascii_lowercase()
                    .contains("location: https://git.test"),
                "{head}"
            );
        }
        assert!(head.to_ascii_lowercase().contains("\nlink: "), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("\ncontent-location: "),
            "{head}"
        );
    }
    // The tool did get the credential, replacing the one the client sent.
    let log = server.access_log();
    let with_token = log
        .lines()
        .filter(|l| l.contains(&format!("private_token={TOKEN}")))
        .count();
    assert_eq!(with_token, 4, "{log}");
    assert!(!log.contains("private_token=mine"), "{log}");
    agent.assert_never_shows(&[TOKEN]);
    assert!(
        agent.log().contains("carried the injected credential"),
        "the removal was not logged"
    );
}
