//! The long suite's short fuzz run (issue 16): every cargo-fuzz target of `tests/fuzz` for
//! 20 seconds (`VDREP_FUZZ_SECONDS` to change it), through `tests/fuzz/run.sh`, which
//! installs cargo-fuzz 0.13.1 from crates.io when it is missing and builds the targets
//! (nightly toolchain, or RUSTC_BOOTSTRAP=1 without one; AddressSanitizer). A crash fails
//! the test naming the input that caused it (`tests/fuzz/artifacts/TARGET/`). The campaign
//! (≥ 10 million executions or 30 minutes per target) is the same script with other
//! arguments; its figures are in `tests/fuzz/README.md`.

use std::path::Path;
use std::process::Command;

/// The `[patch.crates-io]` table of a Cargo manifest, each entry's `path` resolved against
/// the manifest's folder (empty when the manifest has none).
fn patches(manifest: &Path) -> Vec<(String, std::path::PathBuf)> {
    let text =
        std::fs::read_to_string(manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let doc: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let dir = manifest.parent().expect("a manifest has a folder");
    let mut out = Vec::new();
    if let Some(t) = doc
        .get("patch")
        .and_then(|p| p.get("crates-io"))
        .and_then(|c| c.as_table())
    {
        for (name, v) in t {
            let path = v
                .get("path")
                .and_then(|p| p.as_str())
                .unwrap_or_else(|| panic!("{}: patch {name} has no path", manifest.display()));
            let full = dir
                .join(path)
                .canonicalize()
                .unwrap_or_else(|e| panic!("{}: patch {name} -> {path}: {e}", manifest.display()));
            out.push((name.clone(), full));
        }
    }
    out.sort();
    out
}

/// The fuzz targets build vdrep in a workspace of their own, which does not inherit the root
/// workspace's `[patch]`: without the same entries they build against crates.io's quinn, and
/// a method only the vendored one has breaks the long suite's fuzz build (session 16 found it
/// so). Checked here, in the main suite, because the fuzz build itself only runs in the long one.
#[test]
fn the_fuzz_workspace_patches_the_same_crates_as_the_root_workspace() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = patches(&tests.join("../Cargo.toml"));
    let fuzz = patches(&tests.join("fuzz/Cargo.toml"));
    assert!(
        !root.is_empty(),
        "the root workspace patches nothing: this check is stale"
    );
    assert_eq!(
        fuzz, root,
        "tests/fuzz/Cargo.toml's [patch.crates-io] must name the same crates at the same \
         folders as the root Cargo.toml's"
    );
}

#[test]
#[ignore = "long suite: builds the fuzz targets (nightly, ASan; minutes the first time) and runs each 20 s"]
fn every_fuzz_target_runs_without_a_crash() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/run.sh");
    let secs = std::env::var("VDREP_FUZZ_SECONDS").unwrap_or_else(|_| "20".into());
    let status = Command::new("bash")
        .arg(&script)
        .arg(&secs)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        status.success(),
        "the fuzz run failed ({status}): a target crashed (its input is named above, under \
         tests/fuzz/artifacts/), or the set-up failed — it needs cargo (cargo-fuzz is installed \
         from crates.io by the script) and a nightly toolchain (`rustup toolchain install \
         nightly`; without one the script sets RUSTC_BOOTSTRAP=1)"
    );
}
