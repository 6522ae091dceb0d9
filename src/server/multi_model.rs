//! SageMaker's multi-model container API (with `SAGEMAKER_MULTI_MODEL=true`): `POST /models`
//! loads a model directory under an opaque name, `GET /models` lists (paged), `GET` and
//! `DELETE /models/{name}` describe and unload, `POST /models/{name}/invoke` is `/invocations`
//! for that model. The work happens in [`crate::models::Registry`]; loads and unloads block,
//! so they run on actix's blocking pool and never hold up other requests.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;

use super::error::ApiError;
use super::http::{invocation_error, invoke, AppState, Target};
use crate::models::{Registry, Served};

/// `GET /models` page size when the caller names none, and the largest it may ask for.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// Longest model name accepted (SageMaker's are hashes; this only bounds memory and logs).
const MAX_NAME: usize = 1024;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/models")
            .route(web::post().to(load))
            .route(web::get().to(list))
            .default_service(web::to(super::http::method_not_allowed)),
    )
    .service(
        web::resource("/models/{name}")
            .route(web::get().to(describe))
            .route(web::delete().to(unload))
            .default_service(web::to(super::http::method_not_allowed)),
    )
    .service(
        web::resource("/models/{name}/invoke")
            .route(web::post().to(invoke_model))
            .default_service(web::to(super::http::method_not_allowed)),
    );
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Memory {
    host_bytes: u64,
    /// ONNX Runtime's arenas on the graphs' device: GPU memory under CUDA, host memory on CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    arena_bytes: Option<u64>,
    /// GPU memory held after the load's warm-up (GPU providers).
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_bytes: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelInfo<'a> {
    model_name: &'a str,
    model_url: &'a str,
    execution_provider: &'a str,
    memory: Memory,
    load_seconds: f64,
    /// Images submitted and not yet answered.
    inflight_images: usize,
}

fn info(s: &Served) -> ModelInfo<'_> {
    ModelInfo {
        model_name: &s.name,
        model_url: &s.url,
        execution_provider: s.engine.provider(),
        memory: Memory {
            host_bytes: s.host_bytes.load(Ordering::Relaxed),
            arena_bytes: s.engine.arena().map(|a| a.bytes),
            gpu_bytes: s.gpu_bytes,
        },
        load_seconds: s.load_seconds,
        inflight_images: s.engine.active(),
    }
}

fn registry(state: &AppState) -> Result<&Arc<Registry>, ApiError> {
    state.models.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "the multi-model API is off: start the server with SAGEMAKER_MULTI_MODEL=true",
        )
    })
}

/// A required non-empty string field of the load request.
fn field<'a>(body: &'a Value, key: &str) -> Result<&'a str, ApiError> {
    match body.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_NAME => Ok(s),
        Some(Value::String(s)) if s.len() > MAX_NAME => Err(ApiError::bad_request(format!(
            "{key} is longer than {MAX_NAME} bytes"
        ))),
        Some(_) => Err(ApiError::bad_request(format!(
            "{key} must be a non-empty string"
        ))),
        None => Err(ApiError::bad_request(format!(
            "the body must be a JSON object with \"model_name\" and \"url\"; {key} is missing"
        ))),
    }
}

/// `POST /models` `{"model_name": "...", "url": "/opt/ml/models/.../model"}`.
async fn load(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let registry = Arc::clone(registry(&state)?);
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    let name = field(&body, "model_name")?.to_string();
    let url = field(&body, "url")?.to_string();
    if name.contains('/') {
        return Err(ApiError::bad_request(
            "model_name must not contain '/' (it is a path segment of /models/{name})",
        ));
    }
    let served = web::block(move || registry.load(&name, &url))
        .await
        .map_err(|_| ApiError::internal("the model loader failed"))??;
    let mut reply = serde_json::to_value(info(&served))
        .map_err(|e| ApiError::internal(format!("serialising the reply: {e}")))?;
    reply["status"] = Value::from("loaded");
    Ok(HttpResponse::Ok().json(reply))
}

/// The `next_page_token` of a page ending with model `name`: hex, so any name is URL-safe.
fn token(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn untoken(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListReply<'a> {
    models: Vec<ModelInfo<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

/// `GET /models?limit=N&next_page_token=T`.
async fn list(
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let registry = registry(&state)?;
    let limit = match query.get("limit").or_else(|| query.get("max_results")) {
        None => DEFAULT_PAGE,
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit must be an integer in [1, {MAX_PAGE}]"))
            })?,
    };
    let after = match query.get("next_page_token").map(|t| t.trim()) {
        None | Some("") => None,
        Some(t) => {
            Some(untoken(t).ok_or_else(|| ApiError::bad_request("invalid next_page_token"))?)
        }
    };
    let page = registry.page(limit, after.as_deref());
    let reply = ListReply {
        models: page.models.iter().map(|s| info(s)).collect(),
        next_page_token: page.next.as_deref().map(token),
    };
    Ok(HttpResponse::Ok().json(reply))
}

fn name(req: &HttpRequest) -> String {
    req.match_info().get("name").unwrap_or_default().to_string()
}

/// `GET /models/{name}`.
async fn describe(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let served = registry(&state)?.get(&name(&req))?;
    Ok(HttpResponse::Ok().json(info(&served)))
}

/// `DELETE /models/{name}`: answers once the model's sessions and memory are freed.
async fn unload(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let registry = Arc::clone(registry(&state)?);
    let name = name(&req);
    // Invocations in flight end by their deadline anyway; give them that long.
    let grace = state.settings.timeout;
    let n = name.clone();
    let freed = web::block(move || registry.unload(&n, grace))
        .await
        .map_err(|_| ApiError::internal("the model unloader failed"))??;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "modelName": name,
        "status": "unloaded",
        "freedHostBytes": freed,
    })))
}

/// `POST /models/{name}/invoke`: `/invocations` for one model (every format, limit and error).
async fn invoke_model(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let served: Arc<Served> = registry(&state)?
        .get(&name(&req))
        .map_err(invocation_error)?;
    let target = Target {
        engine: &served.engine,
        metrics: &served.metrics,
    };
    invoke(&req, payload, &state, target).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip() {
        for name in ["a", "model-7", "ünïcode name", "x%2F"] {
            assert_eq!(untoken(&token(name)).as_deref(), Some(name));
        }
        assert_eq!(untoken("abc"), None);
        assert_eq!(untoken("zz"), None);
        assert_eq!(untoken("ff"), None);
    }
}
