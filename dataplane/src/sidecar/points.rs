//! `GET /v1/vms/{vm}/points`: the recovery points of every disk of a VM, read from the
//! receiver's store the sidecar was given (`--store DIR` or `--azure-url ...`). The answer
//! is the document `vdrep points --vm VM --json` prints, built by the same function (handed
//! in as [`super::failover::ListPoints`]), so the console and the CLI cannot disagree.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::api::{err, valid_vm};
use super::Sidecar;

/// Without a store: 409 with the fix. A VM the store holds no disk of: 404. A store that
/// cannot be read now (unreachable Azure, a missing folder): 503, worth a retry.
pub async fn get_points(State(sc): State<Arc<Sidecar>>, Path(vm): Path<String>) -> Response {
    if let Err(r) = valid_vm(&vm) {
        return r.into_response();
    }
    let Some(target) = sc.failover.clone() else {
        return err(
            StatusCode::CONFLICT,
            "the sidecar cannot read the replica store: start it with --store DIR (or \
             --azure-url ...) naming the receiver's store, or run `vdrep points --store ... \
             --vm VM` where the store is",
        );
    };
    let list = target.points.clone();
    let name = vm.clone();
    // Store reads block (files, or the Azure client's own runtime).
    match tokio::task::spawn_blocking(move || list(&name)).await {
        Ok(Ok(Some(doc))) => Json(doc).into_response(),
        Ok(Ok(None)) => err(
            StatusCode::NOT_FOUND,
            format!("the replica store holds no disks of VM {vm}"),
        ),
        Ok(Err(e)) => err(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => err(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("listing the points: {e}"),
        ),
    }
}
