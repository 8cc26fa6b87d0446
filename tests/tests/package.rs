//! The Debian package (`ops/package.sh`) as an operator gets it: its files, units that
//! `systemd-analyze verify` accepts in the unpacked tree, a binary and completions that work
//! from there, and maintainer scripts that make the `vdrep` user on install and keep the
//! state and the user on purge (run by a real dpkg in a throw-away root). The main suite
//! packages the debug binary it already built; the long suite builds the release package.

use std::path::{Path, PathBuf};
use std::process::Command;

use vdrep_tests::{require_tool, run};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the package into `out` and returns its path.
fn package(release: bool, out: &Path) -> PathBuf {
    require_tool("dpkg-deb", "apt-get install dpkg");
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("ops/package.sh"));
    if !release {
        cmd.arg("--debug");
    }
    cmd.arg("--out").arg(out);
    let stdout = String::from_utf8(run(&mut cmd).stdout).unwrap();
    let deb = PathBuf::from(stdout.lines().last().expect("package path").trim());
    assert!(deb.is_file(), "{} not built", deb.display());
    deb
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    String::from_utf8(run(Command::new("dpkg-deb").args(args).arg(deb)).stdout).unwrap()
}

const UNITS: [&str; 3] = [
    "vdrep-sender.service",
    "vdrep-receiver.service",
    "vdrep-sidecar.service",
];

fn contents_are_complete(deb: &Path) {
    let list = dpkg_deb(&["--contents"], deb);
    let mut wanted = vec![
        "./usr/bin/vdrep".to_string(),
        "./usr/share/bash-completion/completions/vdrep".into(),
        "./usr/share/zsh/vendor-completions/_vdrep".into(),
        "./usr/share/fish/vendor_completions.d/vdrep.fish".into(),
        "./usr/share/man/man1/vdrep.1.gz".into(),
        "./usr/share/man/man1/vdrep-send.1.gz".into(),
        "./usr/share/man/man1/vdrep-receive.1.gz".into(),
        "./usr/share/man/man1/vdrep-sidecar.1.gz".into(),
        "./usr/share/man/man1/vdrep-certs-init.1.gz".into(),
        "./usr/share/doc/vdrep/copyright".into(),
        "./usr/share/doc/vdrep/README.md".into(),
    ];
    for u in UNITS {
        wanted.push(format!("./usr/lib/systemd/system/{u}"));
    }
    for role in ["sender", "receiver", "sidecar"] {
        wanted.push(format!("./etc/vdrep/{role}.toml"));
    }
    for w in &wanted {
        assert!(
            list.lines().any(|l| l.ends_with(&format!(" {w}"))),
            "{w} is not in the package:\n{list}"
        );
    }
    assert!(
        !list.contains(".bz2") && !list.contains("tests/"),
        "test images in the package:\n{list}"
    );
    let bin = list
        .lines()
        .find(|l| l.ends_with(" ./usr/bin/vdrep"))
        .unwrap();
    assert!(bin.starts_with("-rwxr-xr-x root/root "), "{bin}");
    let listed = String::from_utf8(
        run(Command::new("dpkg-deb")
            .arg("--info")
            .arg(deb)
            .arg("conffiles"))
        .stdout,
    )
    .unwrap();
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "/etc/vdrep/receiver.toml",
            "/etc/vdrep/sender.toml",
            "/etc/vdrep/sidecar.toml"
        ],
        "conffiles"
    );
}

/// Unpacks `deb` into a throw-away root with the host's systemd units and the `kill` of the
/// package's `procps` dependency (the sender's ExecReload), as an installed host would have.
fn unpacked(deb: &Path, root: &Path) {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root));
    run(Command::new("cp")
        .args(["-an", "/usr/lib/systemd/system/."])
        .arg(root.join("usr/lib/systemd/system")));
    std::fs::copy("/usr/bin/kill", root.join("usr/bin/kill")).expect("the host's /usr/bin/kill");
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
}

fn units_verify_and_the_binary_runs(deb: &Path) {
    require_tool("systemd-analyze", "apt-get install systemd");
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    unpacked(deb, root);
    // `verify` also runs `man` for each unit's Documentation=man:…: MANPATH points it at the
    // pages in the package.
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(UNITS)
        .env("MANPATH", root.join("usr/share/man"))
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("vdrep"),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
    for u in UNITS {
        let text = std::fs::read_to_string(root.join("usr/lib/systemd/system").join(u)).unwrap();
        assert!(text.contains("ExecStart=/usr/bin/vdrep "), "{u}");
    }

    let bin = root.join("usr/bin/vdrep");
    let v = run(Command::new(&bin).arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!("vdrep {}", env!("CARGO_PKG_VERSION"))
    );
    // The bash completion loads and completes the commands and a command's options.
    let script = format!(
        "source {}; complete -p vdrep; COMP_WORDS=(vdrep se); COMP_CWORD=1; _vdrep vdrep se vdrep; \
         echo \"${{COMPREPLY[@]}}\"; COMP_WORDS=(vdrep send --ba); COMP_CWORD=2; \
         _vdrep vdrep --ba send; echo \"${{COMPREPLY[@]}}\"",
        root.join("usr/share/bash-completion/completions/vdrep")
            .display()
    );
    let out = run(Command::new("bash").arg("-c").arg(&script));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("-F _vdrep vdrep"), "{text}");
    assert!(text.lines().any(|l| l.trim() == "send"), "{text}");
    assert!(text.contains("--bandwidth"), "{text}");
    // Every man page is a page man can format.
    let man1 = root.join("usr/share/man/man1");
    let pages: Vec<_> = std::fs::read_dir(&man1).unwrap().collect();
    assert!(pages.len() >= 15, "{} man pages", pages.len());
    if Path::new("/usr/bin/man").exists() {
        let out = run(Command::new("man")
            .arg("-l")
            .arg(man1.join("vdrep-send.1.gz"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100"));
        assert!(String::from_utf8_lossy(&out.stdout).contains("--bandwidth"));
    }
}

/// A root dpkg can install into without chroot: its own database and a copy of the host's
/// user tables (the maintainer scripts honour DPKG_ROOT).
fn dpkg_root(root: &Path) {
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    for f in ["passwd", "group", "shadow", "gshadow"] {
        std::fs::copy(Path::new("/etc").join(f), root.join("etc").join(f)).unwrap();
    }
}

fn dpkg(root: &Path, args: &[&str]) {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
        ])
        .args(args));
}

fn install_and_purge(deb: &Path) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    dpkg_root(root);
    dpkg(root, &["--install", deb.to_str().unwrap()]);
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("vdrep:"))
        .unwrap_or_else(|| panic!("no vdrep user after install:\n{passwd}"));
    assert!(
        user.ends_with(":/var/lib/vdrep:/usr/sbin/nologin"),
        "{user}"
    );
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    assert!(uid < 1000, "not a system user: {user}");
    use std::os::unix::fs::MetadataExt;
    let home = std::fs::metadata(root.join("var/lib/vdrep")).unwrap();
    assert_eq!(
        (home.uid(), home.mode() & 0o777),
        (uid, 0o750),
        "/var/lib/vdrep"
    );
    assert!(root.join("usr/bin/vdrep").is_file());
    // The operator's state, token and an edited config.
    std::fs::write(root.join("var/lib/vdrep/replica.vhd"), b"data").unwrap();
    std::fs::write(root.join("etc/vdrep/sidecar.token"), b"secret").unwrap();
    std::fs::write(root.join("etc/vdrep/sender.toml"), b"# edited\n").unwrap();
    // A second install (an upgrade) keeps the edited conffile and the user.
    dpkg(
        root,
        &["--force-confold", "--install", deb.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read(root.join("etc/vdrep/sender.toml")).unwrap(),
        b"# edited\n"
    );

    dpkg(root, &["--purge", "vdrep"]);
    assert!(!root.join("usr/bin/vdrep").exists(), "binary left");
    assert!(!root.join("etc/vdrep").exists(), "purge left /etc/vdrep");
    assert_eq!(
        std::fs::read(root.join("var/lib/vdrep/replica.vhd")).unwrap(),
        b"data",
        "purge must keep /var/lib/vdrep"
    );
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains("\nvdrep:"), "purge must keep the user");
}

#[test]
fn the_package_holds_binary_units_conffiles_completions_and_man_pages() {
    let t = tempfile::tempdir().unwrap();
    contents_are_complete(&package(false, t.path()));
}

#[test]
fn the_packaged_units_pass_systemd_verify_and_the_binary_runs_from_the_unpacked_tree() {
    let t = tempfile::tempdir().unwrap();
    units_verify_and_the_binary_runs(&package(false, t.path()));
}

#[test]
fn install_makes_the_vdrep_user_and_purge_keeps_state_and_user_but_removes_configs() {
    let t = tempfile::tempdir().unwrap();
    install_and_purge(&package(false, t.path()));
}

#[test]
#[ignore = "long suite: builds the release binary"]
fn the_release_package_passes_the_same_checks() {
    let t = tempfile::tempdir().unwrap();
    let deb = package(true, t.path());
    contents_are_complete(&deb);
    units_verify_and_the_binary_runs(&deb);
    install_and_purge(&deb);
}
