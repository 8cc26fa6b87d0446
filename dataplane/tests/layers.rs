//! The crate's layers, checked from its source (ARCHITECTURE.md): every `crate::X` a module
//! names points to a module of its own layer or a lower one, the modules import each other in
//! no cycle, the two roles do not reach into each other, and only the clock reads the system
//! clocks. A new module must be given a layer here; a wrong arrow fails with the files that
//! draw it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of `dataplane/src` and its layer, lowest first. `vdrep-proto`
/// (formats and protocol) lies below all of them. `jobs`, `layout`, `resync` and `sink` are
/// `vdrep-store`'s modules re-exported (that crate cannot import this one: Cargo keeps its
/// arrows pointing down); they keep their layers here for the modules that name them.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "0 shared models and services",
        &[
            "error",
            "clock",
            "memory",
            "signals",
            "layout",
            "codec",
            "jobs",
            "health",
            "retry",
            "metrics",
            "tls",
            "transport",
            "throttle",
            "resync",
            "secret",
        ],
    ),
    (
        "1 sources and stores",
        &[
            "io", "disk", "hrl", "tracking", "digest", "sink", "pipeline", "cpu",
        ],
    ),
    ("2 roles", &["sender", "receiver"]),
    ("3 control", &["sidecar"]),
    ("4 command line", &["cli", "demo"]),
];

/// Arrows that the layers allow but the design does not: the roles are peers that share
/// only what lies below them, and the sender's pipeline is the sender's.
const FORBIDDEN: &[(&str, &str)] = &[
    ("receiver", "sender"),
    ("receiver", "pipeline"),
    ("sender", "receiver"),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            // `vendor/`: third-party crates kept as upstream wrote them (a patched quinn);
            // the project's rules are for the project's code.
            if p.file_name()
                .is_some_and(|n| n == "target" || n == "node_modules" || n == "vendor")
            {
                continue;
            }
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The text without `//` comments (doc links name modules without importing them).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules a file names through `crate::X` or `crate::{X, Y::…}`.
fn targets(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        out.insert(ident(&group[j..]).to_string());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(after).to_string());
        }
        rest = after;
    }
    out
}

/// `module → (target → files)` over the whole of `src/`.
fn edges() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let modules = layer_of();
    let mut edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&root).unwrap().to_string_lossy().to_string();
        let top = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for t in targets(&code(&text)) {
            if t != top && modules.contains_key(t.as_str()) {
                edges
                    .entry(top.clone())
                    .or_default()
                    .entry(t)
                    .or_default()
                    .insert(rel.clone());
            }
        }
    }
    edges
}

fn layer_of() -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for (i, (_, mods)) in LAYERS.iter().enumerate() {
        for md in *mods {
            assert!(m.insert(*md, i).is_none(), "{md} is in two layers");
        }
    }
    m
}

#[test]
fn every_module_has_a_layer() {
    let layers = layer_of();
    let mut missing = Vec::new();
    for e in std::fs::read_dir(src()).unwrap().flatten() {
        let name = e
            .file_name()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if name != "lib" && name != "main" && !layers.contains_key(name.as_str()) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "modules without a layer in tests/layers.rs: {missing:?}"
    );
}

#[test]
fn no_module_imports_a_higher_layer_or_a_forbidden_peer() {
    let layers = layer_of();
    let mut wrong = Vec::new();
    for (from, tos) in edges() {
        for (to, files) in tos {
            // A module without a layer is reported by `every_module_has_a_layer`.
            let (Some(&a), Some(&b)) = (layers.get(from.as_str()), layers.get(to.as_str())) else {
                continue;
            };
            if b > a {
                wrong.push(format!(
                    "{from} (layer {}) → {to} (layer {}) in {files:?}",
                    LAYERS[a].0, LAYERS[b].0
                ));
            }
            if FORBIDDEN.contains(&(from.as_str(), to.as_str())) {
                wrong.push(format!("{from} → {to} (forbidden) in {files:?}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "upward or forbidden imports:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_modules_import_each_other_in_no_cycle() {
    let edges = edges();
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for t in edges.get(n).into_iter().flat_map(|m| m.keys()) {
            if let Some(c) = visit(t, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, &edges, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", c.join(" → "));
        }
    }
}

#[test]
fn the_parser_sees_grouped_and_plain_imports() {
    let t =
        targets("use crate::{a::B, c};\nlet x = crate::d::e();\nuse crate::{f::{g, h}, i as j};");
    assert_eq!(t.into_iter().collect::<Vec<_>>(), ["a", "c", "d", "f", "i"]);
}

#[test]
fn only_the_clock_reads_the_system_clocks() {
    let dataplane = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The one clock: `vdrep::clock`, which re-exports std's readers from the store crate's
    // `clock.rs` (the lowest crate that needs them) and reads tokio's itself.
    let clock = [
        dataplane.join("src/clock.rs"),
        dataplane.join("store/src/clock.rs"),
    ];
    let mut files = Vec::new();
    rust_files(dataplane, &mut files);
    rust_files(&dataplane.join("../proto"), &mut files);
    let this = dataplane.join("tests/layers.rs");
    let patterns = [concat!("SystemTime", "::now"), concat!("Instant", "::now")];
    let mut hits = Vec::new();
    for f in files.iter().filter(|f| !clock.contains(f) && **f != this) {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            if patterns.iter().any(|p| line.contains(p)) {
                hits.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "read the time through dataplane/src/clock.rs (or vdrep_store::clock below it, or take it as a value):\n{}",
        hits.join("\n")
    );
}

/// What would let a typed error into `anyhow` without its class: `anyhow`'s own `?`
/// conversion (a function or closure returning `anyhow::Result` or `Result<_, anyhow::Error>`),
/// `anyhow::Context` and an explicit `anyhow::Error::new`/`from`. The command line uses
/// `CliResult`, its own `Context` and `IntoAnyhow` instead (`cli/error.rs`).
const CLASS_LOSING: &[&str] = &[
    "anyhow::Result",
    "anyhow::Error>",
    "anyhow::Context",
    "anyhow::Error::new",
    "anyhow::Error::from",
    "Into<anyhow::Error>",
    "use anyhow::{",
];

/// The lines of `text` (comments left out) that name a [`CLASS_LOSING`] form.
fn class_losing_lines(text: &str) -> Vec<(usize, String)> {
    code(text)
        .lines()
        .enumerate()
        .filter(|(_, l)| CLASS_LOSING.iter().any(|p| l.contains(p)))
        .map(|(i, l)| (i + 1, l.trim().to_string()))
        .collect()
}

#[test]
fn the_checker_sees_each_way_a_class_is_lost() {
    let bad = "fn a() -> anyhow::Result<()> {}\n\
               fn b() -> Result<(), anyhow::Error> {}\n\
               use anyhow::Context;\n\
               let e = anyhow::Error::new(x);\n\
               let f = x.map_err(anyhow::Error::from);\n\
               use anyhow::{bail, Context};\n";
    assert_eq!(class_losing_lines(bad).len(), 6);
    let good = "fn a() -> CliResult<()> { bail!(\"x\") }\n\
                // anyhow::Result in a comment\n\
                let e = anyhow::anyhow!(\"m\");\n\
                let f = x.map_err(anyhow::Error::msg);\n";
    assert_eq!(class_losing_lines(good), vec![]);
}

#[test]
fn the_command_line_never_converts_into_anyhow_directly() {
    let cli = src().join("cli");
    let mut files = Vec::new();
    rust_files(&cli, &mut files);
    assert!(
        files.len() > 10,
        "no command-line sources under {}",
        cli.display()
    );
    let mut hits = Vec::new();
    for f in files.iter().filter(|f| !f.ends_with("cli/error.rs")) {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, l) in class_losing_lines(&text) {
            hits.push(format!("{}:{n}: {l}", f.display()));
        }
    }
    assert!(
        hits.is_empty(),
        "these would drop a typed error's transient/permanent class (exit 75 would read as 1): \
         return CliResult<T> and use cli::Context / IntoAnyhow (cli/error.rs):\n{}",
        hits.join("\n")
    );
}

/// One clock in two files: `vdrep_store::clock` (std's readers, in the lowest crate that
/// reads time; it has no tokio and cannot import `vdrep`) is the lower half of
/// `vdrep::clock`, which re-exports every reader of it and adds tokio's. So `vdrep` code
/// names only `crate::clock`, and the store's file is never a second clock to choose from.
#[test]
fn the_store_clock_is_re_exported_whole_and_named_only_by_the_clock() {
    let dataplane = Path::new(env!("CARGO_MANIFEST_DIR"));
    let store = std::fs::read_to_string(dataplane.join("store/src/clock.rs")).unwrap();
    let store = code(&store);
    let readers: BTreeSet<&str> = store
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub fn "))
        .map(ident)
        .collect();
    assert!(readers.contains("system_time") && readers.contains("std_now"));
    let clock = std::fs::read_to_string(src().join("clock.rs")).unwrap();
    let export = code(&clock)
        .lines()
        .find(|l| l.starts_with("pub use vdrep_store::clock::"))
        .map(str::to_string)
        .expect("dataplane/src/clock.rs re-exports vdrep_store::clock");
    for r in &readers {
        assert!(
            export.contains(r),
            "vdrep::clock does not re-export the store clock's {r}: {export}"
        );
    }
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let stray: Vec<String> = files
        .iter()
        .filter(|f| **f != src().join("clock.rs"))
        .filter(|f| code(&std::fs::read_to_string(f).unwrap()).contains("vdrep_store::clock"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        stray.is_empty(),
        "use crate::clock, not vdrep_store::clock: {stray:?}"
    );
}
