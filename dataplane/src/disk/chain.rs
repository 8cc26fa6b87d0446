//! Differencing chains: finding a parent from the locators a Windows host wrote, and refusing
//! cycles and runaway depth.

use std::path::{Path, PathBuf};

use super::DiskError;

/// Deepest chain vdrep follows; Hyper-V checkpoints rarely pass a few dozen levels.
pub const MAX_CHAIN_DEPTH: usize = 64;

/// State of one chain walk.
#[derive(Debug, Default)]
pub struct OpenContext {
    seen: Vec<PathBuf>,
}

impl OpenContext {
    /// Records that `path` is being opened; a file seen before is a cycle.
    pub fn enter(&mut self, path: &Path) -> Result<(), DiskError> {
        let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if let Some(child) = self.seen.last() {
            if self.seen.contains(&canon) {
                return Err(DiskError::BrokenChain {
                    path: child.clone(),
                    problem: format!("parent {} is already in the chain (cycle)", canon.display()),
                });
            }
            if self.seen.len() >= MAX_CHAIN_DEPTH {
                return Err(DiskError::BrokenChain {
                    path: child.clone(),
                    problem: format!("chain deeper than {MAX_CHAIN_DEPTH} images"),
                });
            }
        }
        self.seen.push(canon);
        Ok(())
    }
}

/// Maps parent locators written on Windows to an existing file on this host.
///
/// `candidates` are the locator strings in the order the image prefers them (relative first).
/// A relative locator (`.\base.vhd`, `..\dir\base.vhdx`) is resolved against the child's
/// folder with `\` read as `/`; an absolute one (`C:\VMs\base.vhd`, `\\?\C:\...`) is tried as
/// is (after the separator mapping) and then by its file name in the child's folder, which is
/// where a copied chain usually lives. Returns the first candidate that exists.
pub fn resolve_parent_path(child: &Path, candidates: &[String]) -> Result<PathBuf, DiskError> {
    let dir = child.parent().unwrap_or(Path::new("."));
    let mut tried = Vec::new();
    for raw in candidates {
        let s = raw.trim_end_matches('\0');
        if s.is_empty() {
            continue;
        }
        let s = s.strip_prefix(r"\\?\").unwrap_or(s);
        let unix = s.replace('\\', "/");
        let is_windows_abs = unix.len() >= 2 && unix.as_bytes()[1] == b':';
        let mut options = Vec::new();
        if is_windows_abs {
            options.push(PathBuf::from(&unix[2..]));
        } else if unix.starts_with('/') {
            options.push(PathBuf::from(&unix));
        } else {
            options.push(dir.join(&unix));
        }
        if let Some(name) = Path::new(&unix).file_name() {
            options.push(dir.join(name));
        }
        for p in options {
            if p.is_file() {
                return Ok(p.canonicalize().unwrap_or(p));
            }
            tried.push(p.display().to_string());
        }
    }
    Err(DiskError::BrokenChain {
        path: child.to_path_buf(),
        problem: if candidates.is_empty() {
            "no parent locator".to_string()
        } else {
            format!(
                "parent not found (locators {:?}; tried {})",
                candidates,
                tried.join(", ")
            )
        },
    })
}
