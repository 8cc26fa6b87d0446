//! A receiver, a protecting sender (control socket, metrics) and a sidecar beside it, each
//! a real `vdrep` process on 127.0.0.1, for the sidecar's end-to-end tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::http::{request, Response};
use crate::images::seeded_raw;
use crate::procs::certs;
use crate::roles::{eventually, Role};

/// The sidecar's bearer token in these tests.
pub const TOKEN: &str = "s3cret-token";

/// Writes `TOKEN` to `DIR/token` with mode 0600: the sidecar refuses a token file that other
/// users can read.
pub fn write_token(dir: &Path) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("token"))
        .unwrap();
    writeln!(f, "{TOKEN}").unwrap();
}

/// Owned arguments.
pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// A receiver, a protecting sender (control socket, metrics) and a sidecar.
pub struct Stack {
    /// The test's folder (store, state, logs).
    pub dir: PathBuf,
    /// Certificates.
    pub tls: PathBuf,
    /// The protected disk (raw, 8 MiB).
    pub disk: PathBuf,
    /// The receiver.
    pub rx: Role,
    /// The sender.
    pub tx: Role,
    /// The sidecar.
    pub sc: Role,
}

impl Stack {
    /// Starts the three roles in `d` and waits until the VM is protected (a cycle committed).
    pub fn start(d: &Path) -> Stack {
        let tls = certs(&d.join("tls"), &["hv01"]);
        let disk = seeded_raw(&d.join("os.raw"), 8 << 20, 3, 1 << 20, 3);
        write_token(d);
        let rx = Role::receiver(d, &tls, "hv01=web", true);
        let mut st = Stack {
            dir: d.to_path_buf(),
            tx: Self::sender(d, &tls, &disk, &rx),
            sc: Self::sidecar(d),
            tls,
            disk,
            rx,
        };
        st.wait_protected();
        st
    }

    /// The arguments of a protecting sender of VM `web`: `--interval 1s`, state in
    /// `d/sender-state`, control socket `d/run/sender.sock`; callers add their own.
    pub fn sender_args(d: &Path, tls: &Path, disk: &Path, rx: &Role) -> Vec<String> {
        let mut args = rx.send_args(tls, "hv01");
        args.extend(s(&[
            "--vm",
            "web",
            disk.to_str().unwrap(),
            "--interval",
            "1s",
            "--no-progress",
            "--state",
            d.join("sender-state").to_str().unwrap(),
            "--control",
            d.join("run/sender.sock").to_str().unwrap(),
        ]));
        args
    }

    /// Starts the sender of [`Stack::sender_args`] with metrics on.
    pub fn sender(d: &Path, tls: &Path, disk: &Path, rx: &Role) -> Role {
        let mut args = Self::sender_args(d, tls, disk, rx);
        args.extend(s(&["--metrics", "127.0.0.1:0"]));
        Role::start(&args, &d.join("sender.log"), &["metrics on "])
    }

    /// The arguments of a sidecar on a free port managing the sender whose control socket
    /// is `control` (the sender of [`Stack::sender_args`]: `d/run/sender.sock`), token
    /// `d/token`, with its state in `state`; callers add their own.
    pub fn sidecar_args(d: &Path, control: &Path, state: &Path) -> Vec<String> {
        s(&[
            "sidecar",
            "--listen",
            "127.0.0.1:0",
            "--sender-control",
            control.to_str().unwrap(),
            "--token-file",
            d.join("token").to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ])
    }

    /// Starts the sidecar with state in `d/sidecar-state`, reading the store `d/store`
    /// for test failovers (written to `d/store-failover`).
    pub fn sidecar(d: &Path) -> Role {
        let mut args = Self::sidecar_args(d, &d.join("run/sender.sock"), &d.join("sidecar-state"));
        args.extend(s(&[
            "--store",
            d.join("store").to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
        ]));
        Role::start(
            &args,
            &d.join("sidecar.log"),
            &["sidecar on ", "metrics on "],
        )
    }

    /// The sidecar's API address.
    pub fn api(&self) -> String {
        self.sc.addr("sidecar on ")
    }

    /// One API call; `token` goes in `Authorization: Bearer`.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let b = body.map(|v| v.to_string());
        request(&self.api(), method, path, token, b.as_deref()).unwrap()
    }

    /// `GET /v1/vms/web`, when it answers 200.
    pub fn vm(&self) -> Option<Value> {
        let r = self.call("GET", "/v1/vms/web", None, None);
        (r.status == 200).then(|| r.json())
    }

    /// Waits (60 s at most) until the VM is protected with a cycle committed.
    pub fn wait_protected(&mut self) {
        let ok = eventually(Duration::from_secs(60), || {
            self.vm().filter(|v| {
                v["protected"] == true && v["disks"][0]["last_cycle"].as_u64() >= Some(1)
            })
        });
        assert!(
            ok.is_some(),
            "never protected; sender log:\n{}\nsidecar log:\n{}",
            self.tx.log_text(),
            self.sc.log_text()
        );
    }

    /// Waits (`secs` at most) until job `id` succeeded or failed; answers it.
    pub fn wait_job(&self, id: &str, secs: u64) -> Value {
        eventually(Duration::from_secs(secs), || {
            let j = self
                .call("GET", &format!("/v1/jobs/{id}"), None, None)
                .json();
            (j["state"] == "succeeded" || j["state"] == "failed").then_some(j)
        })
        .unwrap_or_else(|| panic!("job {id} did not end; sidecar log:\n{}", self.sc.log_text()))
    }
}
