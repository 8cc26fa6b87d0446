//! Operator commands that are clients of the sidecar's API: `vdrep status`, `vdrep jobs`,
//! `vdrep resync --vm VM [--now]`, and `vdrep failover --test --vm VM [--point N]` when no
//! store is given (`cli/failover.rs`).
//!
//! The sidecar is found at `--sidecar ADDR` (env `VDREP_SIDECAR`, default
//! 127.0.0.1:9640); state-changing calls send the token from `--token-file` (env
//! `VDREP_TOKEN_FILE`, default /etc/vdrep/sidecar.token).

use super::CliResult;
use std::path::PathBuf;
use std::time::Duration;

use super::Context;
use serde_json::Value;

use super::CliError;

#[derive(clap::Args, Debug)]
pub struct Conn {
    /// The sidecar's API address.
    #[arg(long, env = "VDREP_SIDECAR", default_value = "127.0.0.1:9640")]
    sidecar: String,
    /// Token file for state-changing calls.
    #[arg(
        long,
        env = "VDREP_TOKEN_FILE",
        default_value = "/etc/vdrep/sidecar.token"
    )]
    token_file: PathBuf,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  vdrep status\n  vdrep status --watch")]
pub struct StatusArgs {
    #[command(flatten)]
    conn: Conn,
    /// Keep refreshing: a live table (phase, percent, rate, ETA, RPO, health) redrawn in
    /// place on a terminal, timestamped plain lines otherwise.
    #[arg(long)]
    watch: bool,
    /// With --watch: seconds between refreshes.
    #[arg(long, value_name = "SECONDS", default_value_t = 2, requires = "watch",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    every: u64,
    /// With --watch: stop after this many refreshes [default: until interrupted].
    #[arg(long, value_name = "N", requires = "watch")]
    count: Option<u64>,
}

struct SidecarJobs<'a> {
    id: Option<&'a str>,
    conn: Conn,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  vdrep resync --vm web --now")]
pub struct ResyncArgs {
    /// The VM to resynchronise.
    #[arg(long)]
    vm: String,
    /// Start at once instead of in the VM's resync window.
    #[arg(long)]
    now: bool,
    #[command(flatten)]
    conn: Conn,
}

fn call(conn: &Conn, method: &str, path: &str, body: Option<Value>) -> CliResult<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let url = format!("http://{}{path}", conn.sidecar);
    let mut b = ureq::http::Request::builder().method(method).uri(&url);
    if method == "GET" {
        // A sidecar with --read-token-file wants a token for reads too; the write token
        // serves, when this user can read it.
        if let Ok(token) = super::sidecar::read_token(&conn.token_file) {
            b = b.header("Authorization", format!("Bearer {token}"));
        }
    } else {
        let token = super::sidecar::read_token(&conn.token_file)?;
        b = b
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/json");
    }
    let req = b
        .body(body.map(|v| v.to_string()).unwrap_or_default())
        .context("bad request")?;
    let mut resp = agent
        .run(req)
        .with_context(|| format!("sidecar {}: is `vdrep sidecar` running?", conn.sidecar))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .context("reading the answer")?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("sidecar answered {status} with non-JSON: {text}"))?;
    if status >= 400 {
        bail!(
            "sidecar: {} ({status})",
            v["error"].as_str().unwrap_or(&text)
        );
    }
    Ok(v)
}

fn ago(now: u64, t: &Value) -> String {
    match t.as_u64() {
        Some(t) if t <= now => format!("{} ago", secs(now - t)),
        Some(t) => format!("in {}", secs(t - now)),
        None => "-".into(),
    }
}

fn secs(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// The phase, and for a copy under way its percent, rate and end: `initial 45% 12.0 MB/s
/// ETA 2m`.
fn phase(now: u64, d: &Value) -> String {
    let name = d["phase"].as_str().unwrap_or("-");
    if !matches!(name, "initial" | "resyncing") {
        return name.to_string();
    }
    let (done, size) = (
        d["copied_bytes"].as_u64().unwrap_or(0),
        d["size_bytes"].as_u64().unwrap_or(0),
    );
    let mut out = format!("{name} {}%", (done * 100).checked_div(size).unwrap_or(100));
    if let Some(r) = d["rate_bytes_per_second"].as_u64() {
        out.push_str(&format!(" {:.1} MB/s", r as f64 / 1e6));
    }
    if let Some(t) = d["eta_unix"].as_u64() {
        out.push_str(&format!(" ETA {}", secs(t.saturating_sub(now))));
    }
    out
}

fn table(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let w: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<width$}", width = w[i]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn status(a: StatusArgs) -> Result<(), CliError> {
    if a.watch {
        super::watch::watch(
            Duration::from_secs(a.every),
            a.count,
            || call(&a.conn, "GET", "/v1/vms", None),
            table,
        )?;
        return Ok(());
    }
    let v = call(&a.conn, "GET", "/v1/vms", None)?;
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let now = crate::metrics::events::now_unix();
    let mut rows = vec![[
        "VM",
        "DISK",
        "HEALTH",
        "REASON",
        "RPO",
        "LAST CYCLE",
        "NEXT RETRY",
        "FORMAT",
        "PHASE",
    ]
    .map(String::from)
    .to_vec()];
    for vm in v["vms"].as_array().into_iter().flatten() {
        for d in vm["disks"].as_array().into_iter().flatten() {
            let s = |k: &str| d[k].as_str().unwrap_or("").to_string();
            rows.push(vec![
                s("vm"),
                s("disk"),
                s("health"),
                if s("reason").is_empty() {
                    "-".into()
                } else {
                    s("reason")
                },
                d["rpo_seconds"]
                    .as_u64()
                    .map(secs)
                    .unwrap_or_else(|| "-".into()),
                match d["last_cycle"].as_u64() {
                    Some(c) => format!("#{c} {}", ago(now, &d["last_cycle_unix"])),
                    None => "-".into(),
                },
                // A retry whose time has passed is under way.
                match d["next_retry_unix"].as_u64() {
                    Some(t) if t <= now => "now".into(),
                    _ => ago(now, &d["next_retry_unix"]),
                },
                s("format"),
                phase(now, d),
            ]);
        }
    }
    println!("{}", table(&rows));
    // The limit in force, in the unit limits are set in.
    if v["sender"]["reachable"] == Value::Bool(true) {
        match v["sender"]["bandwidth_bytes_per_second"].as_u64() {
            Some(b) => println!(
                "bandwidth limit now: {}",
                crate::sender::progress::mbit(b as f64)
            ),
            None => println!("bandwidth limit now: unlimited"),
        }
    }
    if v["sender"]["reachable"] != Value::Bool(true) {
        eprintln!("vdrep: warning: the sender is unreachable; the status shown may be old");
    }
    Ok(())
}

/// `vdrep jobs` without a store: the sidecar's jobs, or job `id` with its steps.
pub fn jobs(sidecar: &str, id: Option<&str>, json: bool) -> Result<(), CliError> {
    let a = SidecarJobs {
        id,
        conn: Conn {
            sidecar: sidecar.to_string(),
            token_file: PathBuf::new(),
            json,
        },
    };
    let path = match &a.id {
        Some(id) => format!("/v1/jobs/{id}"),
        None => "/v1/jobs".into(),
    };
    let v = call(&a.conn, "GET", &path, None)?;
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let now = crate::metrics::events::now_unix();
    if a.id.is_some() {
        println!(
            "{} {} {} {}",
            v["id"].as_str().unwrap_or(""),
            v["kind"].as_str().unwrap_or(""),
            v["vm"].as_str().unwrap_or(""),
            v["state"].as_str().unwrap_or("")
        );
        let mut rows = vec![["STEP", "STATE", "STARTED", "MESSAGE"]
            .map(String::from)
            .to_vec()];
        for s in v["steps"].as_array().into_iter().flatten() {
            rows.push(vec![
                s["name"].as_str().unwrap_or("").into(),
                s["state"].as_str().unwrap_or("").into(),
                ago(now, &s["started_unix"]),
                s["message"].as_str().unwrap_or("").into(),
            ]);
        }
        println!("{}", table(&rows));
        for e in v["errors"].as_array().into_iter().flatten() {
            println!("error: {}", e.as_str().unwrap_or(""));
        }
        if !v["result"].is_null() {
            println!("result: {}", v["result"]);
        }
        return Ok(());
    }
    let mut rows = vec![["ID", "KIND", "VM", "STATE", "CREATED"]
        .map(String::from)
        .to_vec()];
    for j in v["jobs"].as_array().into_iter().flatten() {
        rows.push(vec![
            j["id"].as_str().unwrap_or("").into(),
            j["kind"].as_str().unwrap_or("").into(),
            j["vm"].as_str().unwrap_or("").into(),
            j["state"].as_str().unwrap_or("").into(),
            ago(now, &j["created_unix"]),
        ]);
    }
    println!("{}", table(&rows));
    Ok(())
}

fn print_job(conn: &Conn, v: &Value) {
    if conn.json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!(
            "{} {} for {}: {} (follow with `vdrep jobs {}`)",
            v["id"].as_str().unwrap_or(""),
            v["kind"].as_str().unwrap_or(""),
            v["vm"].as_str().unwrap_or(""),
            v["state"].as_str().unwrap_or(""),
            v["id"].as_str().unwrap_or("")
        );
    }
}

pub fn resync(a: ResyncArgs) -> Result<(), CliError> {
    let v = call(
        &a.conn,
        "POST",
        &format!("/v1/vms/{}/resync", a.vm),
        Some(serde_json::json!({"now": a.now})),
    )?;
    print_job(&a.conn, &v);
    Ok(())
}

/// `vdrep failover --test --vm VM` without a store: the sidecar runs it where the store is.
pub fn failover(
    sidecar: &str,
    token_file: &std::path::Path,
    vm: &str,
    point: Option<u64>,
    json: bool,
) -> Result<(), CliError> {
    let conn = Conn {
        sidecar: sidecar.to_string(),
        token_file: token_file.to_path_buf(),
        json,
    };
    let v = call(
        &conn,
        "POST",
        &format!("/v1/vms/{vm}/test-failover"),
        Some(serde_json::json!({ "point": point })),
    )?;
    print_job(&conn, &v);
    Ok(())
}
