//! `vdrep jobs (--store DIR | --azure-*) [--vm VM] [--json]`: the jobs recorded in the store
//! beside the replicas (enable protection, initial replication, finalize protection, test
//! failover), oldest first per VM. `vdrep jobs --state DIR` lists instead the jobs a sender
//! keeps in its state folder because they failed before they could be reported.

use std::path::PathBuf;

use serde::Serialize;

use super::store_args::StoreArgs;
use super::CliError;
use crate::jobs::pending::PendingJobs;
use crate::jobs::Job;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  vdrep jobs --store /srv/vdrep --vm vm1\n  vdrep jobs --state ~/.local/state/vdrep\n  vdrep jobs job-000004   # through the sidecar"
)]
pub struct Args {
    /// With neither a store nor --state: show this job of the sidecar with its steps.
    id: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// The sidecar's API address, asked when neither a store nor --state is given.
    #[arg(long, env = "VDREP_SIDECAR", default_value = "127.0.0.1:9640")]
    sidecar: String,
    /// A sender's state folder (`send --state`): list its unreported jobs instead.
    #[arg(long, conflicts_with_all = ["store", "azure_url"])]
    state: Option<PathBuf>,
    /// Only this VM's jobs.
    #[arg(long)]
    vm: Option<String>,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// A step as `--json` prints it.
#[derive(Serialize)]
struct StepJson<'a> {
    name: &'a str,
    state: &'static str,
    start: Option<String>,
    end: Option<String>,
    detail: &'a str,
}

/// A job as `--json` prints it.
#[derive(Serialize)]
struct JobJson<'a> {
    id: &'a str,
    kind: &'static str,
    vm: &'a str,
    state: &'static str,
    /// RFC 3339 UTC with milliseconds.
    start: String,
    end: Option<String>,
    start_unix_ms: u64,
    end_unix_ms: Option<u64>,
    steps: Vec<StepJson<'a>>,
    error: Option<&'a crate::jobs::JobError>,
}

impl<'a> JobJson<'a> {
    fn of(j: &'a Job) -> Self {
        JobJson {
            id: &j.id,
            kind: j.kind.as_str(),
            vm: &j.vm,
            state: j.state.as_str(),
            start: rfc3339_ms(j.start_ms),
            end: j.end_ms.map(rfc3339_ms),
            start_unix_ms: j.start_ms,
            end_unix_ms: j.end_ms,
            steps: j
                .steps
                .iter()
                .map(|s| StepJson {
                    name: &s.name,
                    state: s.state.as_str(),
                    start: s.start_ms.map(rfc3339_ms),
                    end: s.end_ms.map(rfc3339_ms),
                    detail: &s.detail,
                })
                .collect(),
            error: j.error.as_ref(),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of Unix milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    let s = super::points::rfc3339(ms / 1000);
    format!("{}.{:03}Z", s.trim_end_matches('Z'), ms % 1000)
}

pub fn run(a: Args) -> Result<(), CliError> {
    if a.state.is_none() && a.store.store.is_none() && a.store.azure_url.is_none() {
        return super::ops::jobs(&a.sidecar, a.id.as_deref(), a.json);
    }
    if a.id.is_some() {
        return Err(CliError {
            error: anyhow::anyhow!(
                "a job id is shown by the sidecar: drop --store/--azure-url/--state"
            ),
            recoverable: false,
            usage: true,
        });
    }
    let jobs = match &a.state {
        Some(dir) => PendingJobs::new(dir).list(a.vm.as_deref())?,
        None => a.store.open_existing()?.jobs(a.vm.as_deref())?,
    };
    if a.json {
        let v: Vec<JobJson> = jobs.iter().map(JobJson::of).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if jobs.is_empty() {
        println!("no jobs");
        return Ok(());
    }
    println!(
        "{:<44}  {:<20}  {:<12}  {:<9}  {:<24}  {:>9}",
        "ID", "KIND", "VM", "STATE", "START (UTC)", "SECONDS"
    );
    for j in &jobs {
        let secs = j
            .end_ms
            .map(|e| format!("{:.1}", e.saturating_sub(j.start_ms) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<44}  {:<20}  {:<12}  {:<9}  {:<24}  {:>9}",
            j.id,
            j.kind.as_str(),
            j.vm,
            j.state.as_str(),
            rfc3339_ms(j.start_ms),
            secs
        );
        for s in &j.steps {
            let detail = if s.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", s.detail)
            };
            println!("    {:<9} {}{detail}", s.state.as_str(), s.name);
        }
        if let Some(e) = &j.error {
            let what = if e.recoverable {
                "recoverable"
            } else {
                "not recoverable"
            };
            println!("    error ({what}): {}", e.message);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn job_times_print_with_milliseconds() {
        assert_eq!(
            super::rfc3339_ms(1_700_000_000_042),
            "2023-11-14T22:13:20.042Z"
        );
    }
}
