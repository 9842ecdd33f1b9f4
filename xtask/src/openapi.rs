//! `cargo xtask gen-openapi`: writes `docs/openapi.json`, the OpenAPI document of the unified
//! REST API, from the API crate and the built-in classes' declarations (`deploy/classes`). The
//! API serves that file; `cargo xtask test` runs [`check`], which fails when it is stale.

use std::path::PathBuf;

use anyhow::Context as _;
use connectors_crd::ConnectorClass;

use crate::cmd::root;

fn path() -> PathBuf {
    root().join("docs/openapi.json")
}

/// The document as it must be.
fn rendered() -> anyhow::Result<String> {
    let dir = root().join("deploy/classes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut classes = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let class: ConnectorClass =
            serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
        classes.push(class);
    }
    Ok(connectors_api::openapi::render(&classes))
}

/// Writes the document.
pub fn generate() -> anyhow::Result<()> {
    let text = rendered()?;
    let p = path();
    let unchanged = std::fs::read_to_string(&p).is_ok_and(|t| t == text);
    if !unchanged {
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    eprintln!(
        "{} {}",
        if unchanged { "unchanged" } else { "wrote" },
        p.display()
    );
    Ok(())
}

/// Fails when the committed document differs from what [`generate`] writes.
pub fn check() -> anyhow::Result<()> {
    let text = rendered()?;
    if std::fs::read_to_string(path()).ok().as_deref() != Some(text.as_str()) {
        anyhow::bail!(
            "stale docs/openapi.json: run `cargo xtask gen-openapi` and commit the result"
        );
    }
    eprintln!("docs/openapi.json is up to date");
    Ok(())
}
