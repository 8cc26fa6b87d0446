//! An Azurite blob server for one test: a free port on 127.0.0.1, a temp `--location`,
//! killed by pid when dropped. Fails with an install hint when Azurite is missing.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's well-known development account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// Its published key.
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The `azurite-blob` binary installed by `ops/setup.sh` (npm, pinned in `ops/`).
pub fn azurite_bin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = root.join("ops/node_modules/.bin/azurite-blob");
    assert!(
        bin.is_file(),
        "Azurite is not installed ({} missing): run `bash ops/setup.sh` (or `cd ops && npm ci`)",
        bin.display()
    );
    bin
}

/// A running Azurite blob service.
pub struct Azurite {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Azurite {
    /// Starts Azurite on a free port and waits until it accepts connections.
    pub fn start() -> Azurite {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut a = Azurite {
            child: None,
            port,
            dir,
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let child = Command::new(azurite_bin())
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(self.port.to_string())
            .arg("--location")
            .arg(self.dir.path())
            .args([
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
                "--silent",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite-blob");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Azurite did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The account URL (path style).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// An account SAS for the development account.
    pub fn sas(&self) -> String {
        vdrep::sink::azure::rest::account_sas(ACCOUNT, KEY, "2035-01-01T00:00:00Z").expect("sas")
    }

    /// Pid of the server process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the server (SIGKILL, by pid) and waits for it; data in `--location` stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server as an outage would: SIGTERM by pid, then waits for it. (Azurite
    /// saves its blob index lazily, every few seconds, so a SIGKILL loses recent metadata —
    /// containers, blobs — which Azure never does; SIGTERM makes it flush first.)
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and location (after [`Azurite::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
