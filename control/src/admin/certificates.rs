//! `/v1/certificates`: the certificates the gateway's TLS listener serves
//! per host (SNI), kept in the store so that every node of a cluster
//! serves them, and this node's default one. A certificate's private key
//! goes in with an upload and never comes out: the views carry names,
//! validity, issuer and origin only.

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use shoal_api::{CertificateUpload, CertificateView};
use shoal_gateway::tls::{Certificate, now_unix};

use super::{AdminState, ApiError, ApiResult, bad_request, not_found};
use crate::store::CertificateRecord;

/// What the API shows of `certificate`, served for `host`.
fn view(host: Option<String>, certificate: &Certificate) -> CertificateView {
    let info = &certificate.info;
    let now = now_unix();
    let mut warnings = Vec::new();
    if now > info.not_after_unix {
        warnings
            .push(format!("expired on {}: clients refuse it", shoal_gateway::tls::format_unix(info.not_after_unix)));
    } else if let Some(warning) = info.expiry_warning(now) {
        warnings.push(warning);
    }
    CertificateView {
        host,
        names: info.names.clone(),
        not_before_unix: info.not_before_unix,
        not_after_unix: info.not_after_unix,
        issuer: info.issuer.clone(),
        origin: certificate.origin.clone(),
        warnings,
    }
}

/// The view of a stored record; one that no longer loads is shown with
/// what is wrong.
fn stored_view(record: &CertificateRecord) -> CertificateView {
    match Certificate::parse(record.cert_pem.as_bytes(), record.key_pem.as_bytes()) {
        Ok(certificate) => view(Some(record.host.clone()), &certificate.with_origin("store")),
        Err(error) => CertificateView {
            host: Some(record.host.clone()),
            names: Vec::new(),
            not_before_unix: 0,
            not_after_unix: 0,
            issuer: String::new(),
            origin: "store".to_owned(),
            warnings: vec![format!(
                "does not load ({}); the host gets the default certificate",
                error.naming("cert", "key")
            )],
        },
    }
}

/// `GET /v1/certificates`: this node's default certificate (if its
/// gateway has a TLS listener), then the stored ones by host.
pub(super) async fn list(State(state): State<AdminState>) -> ApiResult<Vec<CertificateView>> {
    let mut views: Vec<CertificateView> = state
        .controller
        .gateway()
        .certificates()
        .list()
        .into_iter()
        .filter(|(host, _)| host.is_none())
        .map(|(_, certificate)| view(None, &certificate))
        .collect();
    views.extend(state.store.certificates()?.iter().map(stored_view));
    Ok(Json(views))
}

/// `GET /v1/certificates/{host}`.
pub(super) async fn get(State(state): State<AdminState>, UrlPath(host): UrlPath<String>) -> ApiResult<CertificateView> {
    let host = host.to_ascii_lowercase();
    let records = state.store.certificates()?;
    let record = records.iter().find(|r| r.host == host).ok_or_else(|| not_found("certificate", &host))?;
    Ok(Json(stored_view(record)))
}

/// `PUT /v1/certificates/{host}` with `{cert, key}` (PEM): checks the pair
/// (PEM, key matching, valid now, covering `host`), stores it, and has the
/// TLS listener serve it to new connections at once. `201` when the host
/// had none, `200` when it replaced one.
pub(super) async fn put(
    State(state): State<AdminState>,
    UrlPath(host): UrlPath<String>,
    Json(upload): Json<CertificateUpload>,
) -> Result<(StatusCode, Json<CertificateView>), ApiError> {
    let host = shoal_api::check_host(&host).map_err(|message| bad_request(format!("host: {message}")))?;
    let certificate = Certificate::load(upload.cert.as_bytes(), upload.key.as_bytes(), now_unix())
        .map_err(|error| bad_request(error.naming("cert", "key")))?;
    if !certificate.info.covers(&host) {
        return Err(bad_request(format!(
            "cert: the certificate is not valid for {host}: it names {}",
            if certificate.info.names.is_empty() { "nothing".to_owned() } else { certificate.info.names.join(", ") }
        )));
    }
    let existed = state.store.certificates()?.iter().any(|r| r.host == host);
    let record = CertificateRecord {
        host: host.clone(),
        cert_pem: upload.cert,
        key_pem: upload.key,
        created_unix: shoal_api::now_unix(),
    };
    // Off the runtime's threads: in a cluster a write waits for etcd.
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || store.put_certificate(&record))
        .await
        .map_err(|e| ApiError::internal(format!("storing the certificate failed: {e}")))??;
    // New connections get it now; other nodes on their next pass.
    state.controller.sync_certificates();
    let view = view(Some(host.clone()), &certificate.with_origin("store"));
    let expires = shoal_gateway::tls::format_unix(view.not_after_unix);
    let (status, reason) = if existed { (StatusCode::OK, "Replaced") } else { (StatusCode::CREATED, "Stored") };
    state.events.normal(format!("certificate/{host}"), reason, format!("certificate stored; it expires on {expires}"));
    Ok((status, Json(view)))
}

/// `DELETE /v1/certificates/{host}`: its connections from now on get the
/// default certificate.
pub(super) async fn delete(
    State(state): State<AdminState>,
    UrlPath(host): UrlPath<String>,
) -> ApiResult<serde_json::Value> {
    let host = host.to_ascii_lowercase();
    let (store, key) = (state.store.clone(), host.clone());
    let deleted = tokio::task::spawn_blocking(move || store.delete_certificate(&key))
        .await
        .map_err(|e| ApiError::internal(format!("deleting the certificate failed: {e}")))??;
    if !deleted {
        return Err(not_found("certificate", &host));
    }
    state.controller.sync_certificates();
    state.events.normal(format!("certificate/{host}"), "Deleted", "certificate deleted; the host gets the default one");
    Ok(Json(serde_json::json!({ "deleted": host })))
}
