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
    // The repository root: the nearest ancestor with `ops/` (this file is compiled into
    // `vdrep-tests` and into `vdrep-store`'s tests, at different depths).
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = here
        .ancestors()
        .find(|d| d.join("ops").is_dir())
        .unwrap_or(here);
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
    /// HTTPS with `--oauth basic`: the CA file that signs its certificate.
    ca_file: Option<PathBuf>,
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
            ca_file: None,
        };
        a.spawn();
        a
    }

    /// Starts Azurite over HTTPS with `--oauth basic`, which accepts a bearer JWT whose
    /// audience, issuer and lifetime are right without checking its signature (Azurite's
    /// `BlobTokenAuthenticator.authenticateBasic`). The certificate for 127.0.0.1 is signed
    /// by a test CA written to [`Azurite::ca_file`].
    pub fn start_oauth() -> Azurite {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("cert");
        let tls = dir.path().join("tls");
        std::fs::create_dir(&tls).expect("tls dir");
        std::fs::write(tls.join("ca.pem"), ca_cert.pem()).expect("ca.pem");
        std::fs::write(tls.join("cert.pem"), cert.pem()).expect("cert.pem");
        std::fs::write(tls.join("key.pem"), key.serialize_pem()).expect("key.pem");
        let mut a = Azurite {
            child: None,
            port: free_port(),
            dir,
            ca_file: Some(tls.join("ca.pem")),
        };
        a.spawn();
        a
    }

    /// The CA file of an [`Azurite::start_oauth`] server.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(azurite_bin());
        if let Some(ca) = &self.ca_file {
            let tls = ca.parent().expect("tls dir");
            cmd.args(["--oauth", "basic", "--cert"])
                .arg(tls.join("cert.pem"))
                .arg("--key")
                .arg(tls.join("key.pem"));
        }
        let child = cmd
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
        let scheme = if self.ca_file.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// An account SAS for the development account.
    pub fn sas(&self) -> String {
        vdrep_store::sink::azure::rest::account_sas(ACCOUNT, KEY, "2035-01-01T00:00:00Z")
            .expect("sas")
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
