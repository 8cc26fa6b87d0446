//! The long suite's short fuzz run (issue 16): every cargo-fuzz target of `tests/fuzz` for
//! 20 seconds (`VDREP_FUZZ_SECONDS` to change it), through `tests/fuzz/run.sh`, which
//! installs cargo-fuzz 0.13.1 from crates.io when it is missing and builds the targets
//! (nightly toolchain, or RUSTC_BOOTSTRAP=1 without one; AddressSanitizer). A crash fails
//! the test naming the input that caused it (`tests/fuzz/artifacts/TARGET/`). The campaign
//! (≥ 10 million executions or 30 minutes per target) is the same script with other
//! arguments; its figures are in `tests/fuzz/README.md`.

use std::path::Path;
use std::process::Command;

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
