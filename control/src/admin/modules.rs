//! The module routes: upload, list, look up, delete, collect garbage.
//!
//! An upload streams to a file in the store's staging area (64 KiB at a
//! time, through a bounded channel to a blocking writer), so memory does
//! not grow with its size. At most [`MAX_UPLOADS`] run at once; the next
//! ones wait for their turn (their bodies wait in the connection, which
//! costs no memory here), up to [`MAX_WAITING_UPLOADS`] of them for at
//! most [`UPLOAD_WAIT`]; past that, `429` with `Retry-After: 1` (the CLI
//! waits and tries again).
//! The staged file must then pass the check `shoal up -f` makes
//! ([`shoal_runtime::ComponentCache::check_bytes`]): a component that
//! compiles and links as a `wasi:http` proxy. Only then is it stored.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures::StreamExt as _;
use serde::Serialize;
use shoal_api::objects::ModuleInfo;

use super::{AdminState, ApiError, ApiResult, not_found};
use crate::reconciler::ModuleDeletion;
use crate::store::StoreError;

/// The largest module upload.
pub const MAX_MODULE_SIZE: u64 = 256 << 20;

/// Uploads that may run at once.
pub const MAX_UPLOADS: usize = 2;
/// Uploads that may wait for their turn; the next gets `429`.
pub const MAX_WAITING_UPLOADS: usize = 8;
/// How long an upload waits for its turn before it gets `429`.
pub const UPLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Chunks in flight between the request body and the file writer.
const WRITE_QUEUE: usize = 8;
/// How long an upload may go without sending a byte; past it the upload is
/// abandoned and its slot freed (a client that went away silently must not
/// hold one forever).
const UPLOAD_STALL: std::time::Duration = std::time::Duration::from_secs(30);

pub(super) async fn upload(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ModuleInfo>), ApiError> {
    let _permit = match state.uploads.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => {
            let busy = || {
                ApiError::busy(format!(
                    "{MAX_UPLOADS} module uploads are in progress and {MAX_WAITING_UPLOADS} wait; try again in a moment"
                ))
            };
            let Ok(_waiting) = state.waiting_uploads.clone().try_acquire_owned() else { return Err(busy()) };
            match tokio::time::timeout(UPLOAD_WAIT, state.uploads.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                _ => return Err(busy()),
            }
        }
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_MODULE_SIZE) {
        return Err(too_large());
    }

    // The writer: a blocking task fed through a bounded channel.
    let store = state.store.clone();
    let upload = blocking(move || store.begin_module()).await?;
    let (chunks, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(WRITE_QUEUE);
    let writer = tokio::task::spawn_blocking(move || {
        let mut upload = upload;
        while let Some(chunk) = receiver.blocking_recv() {
            upload.write(&chunk)?;
        }
        upload.finish()
    });
    let mut stream = body.into_data_stream();
    let mut size: u64 = 0;
    let mut failure = None;
    loop {
        let chunk = match tokio::time::timeout(UPLOAD_STALL, stream.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(None) => break,
            Ok(Some(Err(error))) => {
                failure = Some(ApiError::bad_request(format!("the upload broke off: {error}")));
                break;
            }
            Err(_) => {
                failure = Some(ApiError(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the upload sent nothing for {}s; abandoned", UPLOAD_STALL.as_secs()),
                ));
                break;
            }
        };
        size += chunk.len() as u64;
        if size > MAX_MODULE_SIZE {
            failure = Some(too_large());
            break;
        }
        // The writer stopped (a full disk): its error says why.
        if chunks.send(chunk).await.is_err() {
            break;
        }
    }
    drop(chunks);
    let written = writer.await.map_err(|e| ApiError::internal(format!("the upload's writer failed: {e}")))?;
    if let Some(failure) = failure {
        // Dropping what was written removes its file.
        drop(written);
        return Err(failure);
    }
    let staged = written?;

    let controller = state.controller.clone();
    let data_dir = state.controller.data_dir().to_owned();
    let staged = blocking(move || match controller.check_module(staged.path(), staged.digest()) {
        Ok(_) => Ok(Ok(staged)),
        Err(error) => Ok(Err(error)),
    })
    .await?
    .map_err(|error| {
        if error.is_disk_full() {
            ApiError::from(StoreError::DiskFull { dir: data_dir.clone(), what: "compile the module".to_owned() })
        } else {
            ApiError::bad_request(error.reason())
        }
    })?;
    let store = state.store.clone();
    let digest = staged.digest().to_owned();
    let info = match blocking(move || store.commit_module(staged)).await {
        Ok(info) => info,
        Err(error) => {
            let controller = state.controller.clone();
            let _ = tokio::task::spawn_blocking(move || controller.upload_abandoned(&digest)).await;
            return Err(error);
        }
    };
    state.controller.module_stored(&info.digest);
    state.events.normal(format!("module/sha256:{}", info.digest), "Uploaded", format!("{} bytes", info.size));
    Ok((StatusCode::CREATED, Json(info)))
}

fn too_large() -> ApiError {
    ApiError(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the module is larger than the limit of {}", shoal_api::format_bytes(MAX_MODULE_SIZE)),
    )
}

/// Runs blocking store work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("store task failed: {e}")))?
        .map_err(Into::into)
}

/// A digest from a URL: `sha256:` and 64 lowercase hex characters (the
/// prefix optional). Anything else is a `400` that quotes at most the first
/// 72 characters of it.
pub(super) fn parse_digest(raw: &str) -> Result<String, ApiError> {
    let digest = raw.strip_prefix("sha256:").unwrap_or(raw);
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if digest.len() == 64 && digest.bytes().all(hex) {
        return Ok(digest.to_owned());
    }
    let shown = cut(raw, 72);
    tracing::debug!(input = %shown, "malformed module digest");
    Err(ApiError::bad_request(format!(
        "{shown:?} is not a module digest (expected sha256: and 64 lowercase hex characters)"
    )))
}

/// At most `max` characters of `text`, with `…` when cut.
pub(super) fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

pub(super) async fn list(State(state): State<AdminState>) -> ApiResult<Vec<ModuleInfo>> {
    Ok(Json(state.store.modules()?))
}

pub(super) async fn get(State(state): State<AdminState>, UrlPath(raw): UrlPath<String>) -> ApiResult<ModuleInfo> {
    let digest = parse_digest(&raw)?;
    state.store.module_info(&digest)?.map(Json).ok_or_else(|| not_found("module", &format!("sha256:{digest}")))
}

/// The module's bytes (`application/wasm`), streamed from its file: how
/// the nodes of a cluster get a module pushed to another node.
pub(super) async fn content(
    State(state): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
) -> Result<axum::response::Response, ApiError> {
    use tokio::io::AsyncReadExt as _;
    let digest = parse_digest(&raw)?;
    let store = state.store.clone();
    let wanted = digest.clone();
    let path = blocking(move || store.module_file(&wanted))
        .await?
        .ok_or_else(|| not_found("module", &format!("sha256:{digest}")))?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal(format!("cannot open {}: {e}", path.display())))?;
    let size = file.metadata().await.map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?.len();
    let chunks = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut chunk = vec![0u8; 64 * 1024];
        match file.read(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok(Bytes::from(chunk)), Some(file)))
            }
            Err(error) => Some((Err(error), None)),
        }
    });
    let mut response = axum::response::Response::new(Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/wasm"));
    headers.insert(header::CONTENT_LENGTH, size.into());
    Ok(response)
}

#[derive(Serialize)]
pub(super) struct Deleted {
    deleted: String,
}

pub(super) async fn delete(State(state): State<AdminState>, UrlPath(raw): UrlPath<String>) -> ApiResult<Deleted> {
    let digest = parse_digest(&raw)?;
    let controller = state.controller.clone();
    let target = digest.clone();
    match blocking(move || controller.delete_module(&target)).await? {
        ModuleDeletion::Deleted => Ok(Json(Deleted { deleted: format!("sha256:{digest}") })),
        ModuleDeletion::NotFound => Err(not_found("module", &format!("sha256:{digest}"))),
        ModuleDeletion::InUse(users) => {
            Err(ApiError(StatusCode::CONFLICT, format!("module sha256:{digest} is in use: {users}")))
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Collected {
    deleted: Vec<ModuleInfo>,
    freed_bytes: u64,
}

/// `POST /v1/modules/gc`: deletes every module no service and no replica
/// uses, like `docker image prune`.
pub(super) async fn gc(State(state): State<AdminState>) -> ApiResult<Collected> {
    let controller = state.controller.clone();
    let deleted = blocking(move || controller.collect_modules(std::time::Duration::ZERO)).await?;
    let freed_bytes = deleted.iter().map(|m| m.size).sum();
    Ok(Json(Collected { deleted, freed_bytes }))
}
