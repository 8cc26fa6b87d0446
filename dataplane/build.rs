//! Names the git commit the binary is built from (`VDREP_COMMIT`, for `vdrep_build_info`):
//! `git rev-parse --short=12 HEAD`, or "unknown" outside a git
//! checkout (a source tarball). An explicit `VDREP_COMMIT` in the environment wins.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=VDREP_COMMIT");
    let commit = std::env::var("VDREP_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Rebuild when HEAD moves: HEAD itself (a checkout) and its reflog (a commit).
    for p in ["HEAD", "logs/HEAD"] {
        if let Some(path) = git(&["rev-parse", "--git-path", p]) {
            let path = std::path::Path::new(&path);
            let abs = if path.is_absolute() {
                path.to_path_buf()
            } else {
                std::env::current_dir().unwrap_or_default().join(path)
            };
            if abs.exists() {
                println!("cargo:rerun-if-changed={}", abs.display());
            }
        }
    }
    println!("cargo:rustc-env=VDREP_COMMIT={commit}");
}
