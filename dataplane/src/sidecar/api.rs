//! The HTTP/JSON routes, and the console page beside them ([`super::console`]). Who may
//! call what is [`super::auth`]'s: state-changing calls need the bearer token, reads need
//! one only with `--read-token-file`. Errors are `{"error": "..."}` with a 4xx status;
//! bodies are parsed here (not by extractors) so every malformed request gets the
//! documented JSON error.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::auth::{authorized, ApiError};
use super::jobs::{FAILOVER_STEPS, PROTECT_STEPS, RESYNC_STEPS};
use super::policy::ReplicationPolicy;
use super::state::{new_job, JobKind, JobState};
use super::target::Target;
use super::{console, Sidecar, OPENAPI};
use crate::health::State as Health;
use crate::metrics::events;
use crate::throttle::PolicyDocument;

type Sc = State<Arc<Sidecar>>;

/// The API's routes and the console's.
pub fn router(sc: Arc<Sidecar>) -> Router {
    let v1 = Router::new()
        .route("/v1/vms", get(list_vms))
        .route("/v1/vms/{vm}", get(get_vm))
        .route("/v1/vms/{vm}/points", get(super::points::get_points))
        .route("/v1/vms/{vm}/policy", get(get_policy).put(put_policy))
        .route("/v1/vms/{vm}/protection", post(enable_protection))
        .route("/v1/vms/{vm}/resync", post(resync))
        .route("/v1/vms/{vm}/test-failover", post(test_failover))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/bandwidth", get(get_bandwidth).put(put_bandwidth))
        .route_layer(axum::middleware::from_fn_with_state(
            sc.clone(),
            super::auth::reads,
        ));
    Router::new()
        .route("/", get(console::index))
        .route("/assets/{name}", get(console::asset))
        .route("/openapi.json", get(openapi))
        .merge(v1)
        .fallback(|| async {
            err(
                StatusCode::NOT_FOUND,
                "no such endpoint (see /openapi.json)",
            )
        })
        .layer(axum::middleware::from_fn(count_requests))
        .layer(axum::middleware::from_fn(console::security_headers))
        .with_state(sc)
}

async fn count_requests(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = req.method().as_str().to_string();
    let resp = next.run(req).await;
    events::api_request(&method, resp.status().as_u16());
    resp
}

pub(super) fn err(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

fn body<T: DeserializeOwned + Default>(b: &Bytes) -> Result<T, ApiError> {
    if b.iter().all(|c| c.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(b)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))
}

pub(super) fn valid_vm(vm: &str) -> Result<(), ApiError> {
    crate::sink::validate_name("VM name", vm)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// The VMs as the sender last reported them, with their policies.
fn vms_view(sc: &Sidecar) -> (Value, Vec<Value>) {
    let now = events::now_unix();
    let cached = sc.cached_status();
    let up = sc.sender_up.load(std::sync::atomic::Ordering::Relaxed);
    let sender = match &cached {
        Some((st, at)) => json!({
            "reachable": up, "pid": st.pid, "identity": st.identity, "receiver": st.receiver,
            "status_age_seconds": now.saturating_sub(*at),
            "bandwidth_bytes_per_second": st.bandwidth_bytes_per_second,
        }),
        None => json!({ "reachable": false, "pid": null, "identity": null, "receiver": null,
                        "status_age_seconds": null, "bandwidth_bytes_per_second": null }),
    };
    let policies = sc.read(|s| s.policies.clone()).unwrap_or_default();
    let mut vms: std::collections::BTreeMap<String, Vec<crate::sender::DiskStatus>> =
        Default::default();
    let mut health: Vec<crate::health::VmHealth> = Vec::new();
    if let Some((st, _)) = cached {
        for d in st.disks {
            vms.entry(d.vm.clone()).or_default().push(d);
        }
        health = st.health;
    }
    let unix = |t: &str| {
        t.parse::<jiff::Timestamp>()
            .ok()
            .map(|t| t.as_second().max(0) as u64)
    };
    let list = vms
        .into_iter()
        .map(|(vm, disks)| {
            let policy = policies.get(&vm).cloned().unwrap_or_default();
            // Health, reason, RPO and next retry are the sender's health model's, as its
            // health.json and health gauge say; nothing is recomputed here.
            let h = health.iter().find(|h| h.vm == vm);
            let state = h.map_or(Health::Normal, |h| h.state).as_str();
            json!({
                "vm": vm,
                "health": state,
                "reason": h.and_then(|h| h.reasons.first().cloned()).unwrap_or_default(),
                "protected": disks.iter().all(|d| d.phase == "protected"),
                "rpo_seconds": h.and_then(|h| h.rpo_seconds).map(|r| r as u64),
                // The threshold the sender's health model applies (the console shows it).
                "rpo_threshold_seconds": h.map(|h| h.rpo_threshold_seconds.round() as u64),
                // The VM's newest point (its RPO is this point's age), from the health model.
                "latest_point": h.and_then(|h| h.latest_point.clone()),
                "last_cycle_unix": disks.iter().filter_map(|d| d.last_cycle_unix).min(),
                "next_cycle_unix": disks.iter().filter_map(|d| d.next_cycle_unix).min(),
                "next_retry_unix": h.and_then(|h| h.next_retry.as_deref()).and_then(unix),
                "policy": policy,
                "disks": disks,
            })
        })
        .collect();
    (sender, list)
}

async fn list_vms(State(sc): Sc) -> Response {
    let (sender, vms) = vms_view(&sc);
    Json(json!({ "sender": sender, "vms": vms })).into_response()
}

async fn get_vm(State(sc): Sc, Path(vm): Path<String>) -> Response {
    let (_, vms) = vms_view(&sc);
    match vms.into_iter().find(|v| v["vm"] == vm.as_str()) {
        Some(mut v) => {
            let jobs: Vec<Value> = sc
                .read(|s| {
                    s.jobs
                        .iter()
                        .rev()
                        .filter(|j| j.record.vm == vm)
                        .take(20)
                        .map(|j| json!(j))
                        .collect()
                })
                .unwrap_or_default();
            v["jobs"] = json!(jobs);
            Json(v).into_response()
        }
        None => err(
            StatusCode::NOT_FOUND,
            format!("VM {vm} is not replicated by this host's sender"),
        ),
    }
}

async fn get_policy(State(sc): Sc, Path(vm): Path<String>) -> Response {
    if let Err(r) = valid_vm(&vm) {
        return r.into_response();
    }
    let p = sc
        .read(|s| s.policies.get(&vm).cloned())
        .flatten()
        .unwrap_or_default();
    Json(json!(p)).into_response()
}

async fn put_policy(State(sc): Sc, Path(vm): Path<String>, h: HeaderMap, b: Bytes) -> Response {
    if let Err(r) = authorized(&sc, &h).and_then(|_| valid_vm(&vm)) {
        return r.into_response();
    }
    let p: ReplicationPolicy = match body(&b) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    if let Err(e) = p.validate() {
        return err(StatusCode::BAD_REQUEST, e);
    }
    if let Err(e) = sc.update(|s| s.policies.insert(vm.clone(), p.clone())) {
        return err(StatusCode::SERVICE_UNAVAILABLE, e);
    }
    sc.push_policy(&vm, &p).await;
    Json(json!(p)).into_response()
}

fn created(sc: &Sidecar, job: super::state::SidecarJob) -> Response {
    let view = json!(job);
    match sc.update(|s| s.jobs.push(job)) {
        Ok(()) => (StatusCode::ACCEPTED, Json(view)).into_response(),
        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// The body of an enable-protection request: the replication policy's fields plus what
/// to protect ([`Target`]: `disks`, the absolute paths of the VM's disk images on the
/// sender's host, or a running qemu VM's `qmp` socket with its `drives` and `nbd`; needed
/// for a VM the sender does not list yet).
fn protection_body(b: &Bytes) -> Result<(ReplicationPolicy, Target), ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    if b.iter().all(|c| c.is_ascii_whitespace()) {
        return Ok((ReplicationPolicy::default(), Target::default()));
    }
    let mut v: Value = serde_json::from_slice(b).map_err(|e| bad(format!("invalid body: {e}")))?;
    let target = match v.as_object_mut() {
        None => return Err(bad("invalid body: expected a JSON object".into())),
        Some(o) => Target::take(o).map_err(bad)?,
    };
    let policy: ReplicationPolicy =
        serde_json::from_value(v).map_err(|e| bad(format!("invalid body: {e}")))?;
    policy.validate().map_err(bad)?;
    Ok((policy, target))
}

async fn enable_protection(
    State(sc): Sc,
    Path(vm): Path<String>,
    h: HeaderMap,
    b: Bytes,
) -> Response {
    if let Err(r) = authorized(&sc, &h).and_then(|_| valid_vm(&vm)) {
        return r.into_response();
    }
    let (p, target) = match protection_body(&b) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    // A VM the sender protects already with other disks is refused now; while the sender
    // is unreachable the job finds out when it answers.
    if let Some((st, _)) = sc.cached_status() {
        let listed: Vec<String> = st
            .disks
            .iter()
            .filter(|d| d.vm == vm)
            .map(|d| d.path.clone())
            .collect();
        if !listed.is_empty() && !target.disks.is_empty() && listed != target.disks {
            return err(
                StatusCode::CONFLICT,
                format!(
                    "VM {vm} is already protected with other disks ({}): disable its protection first",
                    listed.join(", ")
                ),
            );
        }
    }
    let busy = sc
        .read(|s| {
            s.jobs.iter().any(|j| {
                j.record.vm == vm
                    && j.record.kind == JobKind::EnableProtection
                    && !j.record.state.is_final()
            })
        })
        .unwrap_or(false);
    if busy {
        return err(
            StatusCode::CONFLICT,
            format!("an enable-protection job of VM {vm} is already running"),
        );
    }
    let now = events::now_unix();
    let job = match sc.update(|s| {
        s.policies.insert(vm.clone(), p.clone());
        new_job(s, JobKind::EnableProtection, &vm, &PROTECT_STEPS, now)
    }) {
        Ok(mut j) => {
            if !target.is_empty() {
                j.result = Some(json!(target));
            }
            j
        }
        Err(e) => return err(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    created(&sc, job)
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResyncBody {
    #[serde(default)]
    now: bool,
}

/// A VM the sender is known not to replicate gets 404; while the sender is unreachable the
/// request is queued and checked when it answers.
fn known_vm(sc: &Sidecar, vm: &str) -> Result<(), ApiError> {
    valid_vm(vm)?;
    match sc.cached_status() {
        Some((st, _)) if !st.disks.iter().any(|d| d.vm == vm) => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("VM {vm} is not replicated by this host's sender"),
        )),
        _ => Ok(()),
    }
}

async fn resync(State(sc): Sc, Path(vm): Path<String>, h: HeaderMap, b: Bytes) -> Response {
    if let Err(r) = authorized(&sc, &h).and_then(|_| known_vm(&sc, &vm)) {
        return r.into_response();
    }
    let rb: ResyncBody = match body(&b) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let now = events::now_unix();
    let Some(policy) = sc.read(|s| s.policies.get(&vm).cloned().unwrap_or_default()) else {
        return err(StatusCode::SERVICE_UNAVAILABLE, "state lock poisoned");
    };
    let job = match sc.update(|s| new_job(s, JobKind::Resync, &vm, &RESYNC_STEPS, now)) {
        Ok(mut j) => {
            if !rb.now {
                j.not_before_unix = Some(policy.next_resync_window(now as i64).max(0) as u64);
            }
            j
        }
        Err(e) => return err(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    created(&sc, job)
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FailoverBody {
    #[serde(default)]
    point: Option<u64>,
}

async fn test_failover(State(sc): Sc, Path(vm): Path<String>, h: HeaderMap, b: Bytes) -> Response {
    if let Err(r) = authorized(&sc, &h).and_then(|_| known_vm(&sc, &vm)) {
        return r.into_response();
    }
    let fb: FailoverBody = match body(&b) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let now = events::now_unix();
    match sc.update(|s| new_job(s, JobKind::TestFailover, &vm, &FAILOVER_STEPS, now)) {
        Ok(mut j) => {
            j.result = Some(json!({ "requested_point": fb.point }));
            created(&sc, j)
        }
        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `GET /v1/jobs?vm=&state=`: either filter may be left out.
#[derive(serde::Deserialize, Default)]
struct JobFilter {
    vm: Option<String>,
    state: Option<JobState>,
}

async fn list_jobs(State(sc): Sc, q: Result<Query<JobFilter>, QueryRejection>) -> Response {
    let f = match q {
        Ok(Query(f)) => f,
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("invalid filter (vm=NAME, state=queued|running|succeeded|failed): {e}"),
            )
        }
    };
    if let Some(Err(r)) = f.vm.as_deref().map(valid_vm) {
        return r.into_response();
    }
    let jobs: Vec<Value> = sc
        .read(|s| {
            s.jobs
                .iter()
                .rev()
                .filter(|j| f.vm.as_ref().is_none_or(|v| *v == j.record.vm))
                .filter(|j| f.state.is_none_or(|st| st == j.record.state))
                .map(|j| json!(j))
                .collect()
        })
        .unwrap_or_default();
    Json(json!({ "jobs": jobs })).into_response()
}

async fn get_job(State(sc): Sc, Path(id): Path<String>) -> Response {
    match sc
        .read(|s| s.jobs.iter().find(|j| j.record.id == id).cloned())
        .flatten()
    {
        Some(j) => Json(json!(j)).into_response(),
        None => err(StatusCode::NOT_FOUND, format!("no job {id}")),
    }
}

/// The policy and what the sender runs: `applied` when the sender reports this schedule in
/// force, and then its limit now; otherwise the limit the policy gives for now.
fn bandwidth_view(sc: &Sidecar) -> Value {
    let p = sc.read(|s| s.bandwidth.clone()).unwrap_or_default();
    let now = events::now_unix() as i64;
    let st = sc
        .cached_status()
        .filter(|_| sc.sender_up.load(std::sync::atomic::Ordering::Relaxed));
    let applied = st
        .as_ref()
        .is_some_and(|(s, _)| s.bandwidth_schedule.as_ref() == Some(&p));
    json!({
        "current_bytes_per_second": match &st {
            Some((s, _)) if applied => s.bandwidth_bytes_per_second,
            _ => p.rate_at(now),
        },
        "applied": applied,
        "sender_policy": st.as_ref().map(|(s, _)| s.bandwidth_policy.clone()),
        "work_hours_now": st.as_ref().map(|(s, _)| s.work_hours_now),
        "policy": p,
    })
}

async fn get_bandwidth(State(sc): Sc) -> Response {
    Json(bandwidth_view(&sc)).into_response()
}

async fn put_bandwidth(State(sc): Sc, h: HeaderMap, b: Bytes) -> Response {
    if let Err(r) = authorized(&sc, &h) {
        return r.into_response();
    }
    if b.iter().all(|c| c.is_ascii_whitespace()) {
        return err(StatusCode::BAD_REQUEST, "a bandwidth policy is required");
    }
    let p: PolicyDocument = match serde_json::from_slice(&b) {
        Ok(p) => p,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
    };
    if let Err(e) = p.validate() {
        return err(StatusCode::BAD_REQUEST, e);
    }
    if let Err(e) = sc.update(|s| s.bandwidth = p) {
        return err(StatusCode::SERVICE_UNAVAILABLE, e);
    }
    sc.policy_changed();
    // Apply at once rather than at the next tick, so the answer says whether it took.
    if sc.sender_up.load(std::sync::atomic::Ordering::Relaxed) {
        sc.apply_bandwidth().await;
    }
    Json(bandwidth_view(&sc)).into_response()
}
