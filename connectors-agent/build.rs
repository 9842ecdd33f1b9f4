//! Builds the eBPF programs (`connectors-ebpf`) for `bpfel-unknown-none` with aya-build, so the
//! agent can embed the object (`OUT_DIR/connectors-ebpf`).
//!
//! - bpf-linker is taken from where `cargo xtask setup` installs it
//!   (`~/.cache/connectors/tools-<toolchain>/bin`), else from PATH.
//! - `-Z build-std=core` is needed for the BPF target; `RUSTC_BOOTSTRAP=1` is set for the child
//!   cargo only (this build script's environment), never for the workspace.
//! - The object is built once per target folder (`<target>/ebpf`), not once per profile: clippy,
//!   the debug, test and release builds each run this script, and the eBPF build (with `core`
//!   from source) takes over a minute on two cores. Its own cargo keeps it up to date.
//! - `AYA_BUILD_SKIP=1` skips the eBPF build (quick clippy/check runs): an empty object is
//!   embedded and the agent refuses `--redirect-cgroup` with a message saying so.

use std::env;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

const EBPF_PACKAGE: &str = "connectors-ebpf";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join(EBPF_PACKAGE);
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let root = manifest_dir
        .parent()
        .context("the agent crate has no parent folder")?
        .to_owned();
    let ebpf_dir = root.join(EBPF_PACKAGE);

    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=CONNECTORS_BPF_LINKER_DIR");
    if skipped() {
        // aya-build writes nothing when skipping; the agent still needs a file to embed.
        if !object.is_file() {
            std::fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
        }
        println!(
            "cargo:warning=AYA_BUILD_SKIP is set: the eBPF redirect is not built into this agent"
        );
        return Ok(());
    }

    let toolchain = toolchain(&root)?;
    let linker_dir = bpf_linker_dir(&toolchain)?;
    println!(
        "cargo:rerun-if-changed={}",
        linker_dir.join("bpf-linker").display()
    );
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![linker_dir];
    dirs.extend(env::split_paths(&path));
    let path = env::join_paths(dirs).context("PATH")?;
    // SAFETY: build scripts are single-threaded at this point; the variables only reach the
    // child cargo that aya-build starts.
    unsafe {
        env::set_var("PATH", path);
        env::set_var("RUSTC_BOOTSTRAP", "1");
    }
    let ebpf_dir_str = ebpf_dir.to_str().context("non-UTF-8 path")?;
    // aya-build builds under, and copies the object to, its OUT_DIR: point it at the shared
    // folder for the child build, then copy the object into this profile's own OUT_DIR.
    let shared = shared_dir(&out_dir);
    std::fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    // SAFETY: as above.
    unsafe { env::set_var("OUT_DIR", &shared) };
    let built = aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: ebpf_dir_str,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    );
    // SAFETY: as above.
    unsafe { env::set_var("OUT_DIR", &out_dir) };
    built.context("building the eBPF programs (connectors-ebpf)")?;
    let shared_object = shared.join(EBPF_PACKAGE);
    if !shared_object.is_file() {
        bail!("aya-build did not produce {}", shared_object.display());
    }
    // Through a temporary name, so the embedded file is never half written.
    let partial = out_dir.join(format!("{EBPF_PACKAGE}.partial"));
    std::fs::copy(&shared_object, &partial)
        .with_context(|| format!("copying {}", shared_object.display()))?;
    std::fs::rename(&partial, &object).with_context(|| format!("writing {}", object.display()))?;
    Ok(())
}

/// `<target>/ebpf`, from `OUT_DIR` = `<target>[/<triple>]/<profile>/build/<package>-<hash>/out`;
/// OUT_DIR itself when it is not laid out that way.
fn shared_dir(out_dir: &Path) -> PathBuf {
    let mut up = out_dir.ancestors();
    match (up.nth(2), up.nth(1)) {
        (Some(build), Some(target)) if build.file_name() == Some("build".as_ref()) => {
            target.join("ebpf")
        }
        _ => out_dir.to_owned(),
    }
}

fn skipped() -> bool {
    env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The channel pinned in `rust-toolchain.toml` (bpf-linker is built against its LLVM).
fn toolchain(root: &Path) -> anyhow::Result<String> {
    let file = root.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", file.display());
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .next()
        .with_context(|| format!("no `channel = \"...\"` in {}", file.display()))
}

/// The folder holding bpf-linker.
fn bpf_linker_dir(toolchain: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = env::var_os("CONNECTORS_BPF_LINKER_DIR") {
        let dir = PathBuf::from(dir);
        if dir.join("bpf-linker").is_file() {
            return Ok(dir);
        }
        bail!(
            "CONNECTORS_BPF_LINKER_DIR={} holds no bpf-linker",
            dir.display()
        );
    }
    let home = env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let setup_dir = home.join(format!(".cache/connectors/tools-{toolchain}/bin"));
    if setup_dir.join("bpf-linker").is_file() {
        return Ok(setup_dir);
    }
    if let Some(dir) = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.join("bpf-linker").is_file())
    {
        return Ok(dir);
    }
    bail!(
        "bpf-linker is missing (looked in {} and on PATH). Run `cargo xtask setup` (or \
         `cargo xtask setup --no-apt`), which builds it against the pinned toolchain's LLVM; or set \
         AYA_BUILD_SKIP=1 to build an agent without the eBPF redirect.",
        setup_dir.display()
    )
}
