//! Routes, handlers and the request middleware (request id, metrics, logs, JSON errors).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Serialize;
use tracing::Instrument;

use super::connection::PeerSocket;
use super::error::{json_error, ApiError};
use super::request::{self, negotiation, options};
use super::response;
use crate::engine::{Engine, JobError, JobResult, Refused};
use crate::metrics::{self, Metrics};
use crate::models::{ModelError, Registry};
use crate::types::{ImageResult, PredictOptions};

pub const REQUEST_ID_HEADER: &str = "x-request-id";
const INBOUND_ID_HEADERS: &[&str] = &[
    "x-request-id",
    "x-amzn-requestid",
    "x-amzn-sagemaker-inference-id",
];
pub const CUSTOM_ATTRIBUTES_HEADER: &str = "x-amzn-sagemaker-custom-attributes";
/// Names the model of a multi-model endpoint on `/invocations`.
pub const TARGET_MODEL_HEADER: &str = "x-amzn-sagemaker-target-model";
/// Bytes read and thrown away past the body limit so the client gets a clean 413 instead of
/// a reset connection; beyond this the response is sent without reading the rest.
const DRAIN_CAP: usize = 16 << 20;
/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_LOADING: u32 = 5;
const RETRY_AFTER_OVERLOADED: u32 = 1;
/// How often a waiting invocation checks that its client is still connected.
const PEER_CHECK: Duration = Duration::from_millis(50);
/// nginx's status for a request whose client went away (logged; nobody receives it).
fn client_closed_request() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

/// `GET /execution-parameters` for batch transform.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ExecutionParameters {
    #[serde(rename = "MaxConcurrentTransforms")]
    pub max_concurrent_transforms: u32,
    #[serde(rename = "BatchStrategy")]
    pub batch_strategy: String,
    #[serde(rename = "MaxPayloadInMB")]
    pub max_payload_in_mb: u32,
}

/// Serving settings resolved from flags and SAGEMAKER_* variables.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub payload_limit: usize,
    pub timeout: Duration,
    pub max_instances: usize,
    /// Longest wait for the next piece of the request body (408 after it): a client that
    /// stalls mid-body is cut off instead of holding its connection open indefinitely.
    pub body_timeout: Duration,
    /// Honour the `debug_panic=1` custom attribute (hidden `--debug-allow-panic` test hook).
    pub allow_debug_panic: bool,
    pub default_accept: String,
    /// Answer a JSON Lines request in JSON Lines when Accept is missing or a wildcard.
    pub mirror_jsonlines: bool,
    /// Largest total size of a request's header fields; more is a 431.
    pub max_header_bytes: usize,
}

/// The loaded model, ready to serve.
pub struct Ready {
    pub engine: Engine,
    /// Batch transform's parameters (they depend on the backends the model got).
    pub execution_parameters: ExecutionParameters,
}

pub struct AppState {
    pub settings: HttpSettings,
    pub metrics: Arc<Metrics>,
    /// Unset while loading; `Err` holds the load error, reported by `/ping` and
    /// `/invocations` (503) so a broken model never looks healthy. Single-model mode only.
    pub model: OnceLock<Result<Ready, String>>,
    /// Multi-model mode: the models loaded through `POST /models`.
    pub models: Option<Arc<Registry>>,
}

/// What an invocation runs on: an engine and the metrics its requests count in.
pub struct Target<'a> {
    pub engine: &'a Engine,
    pub metrics: &'a Metrics,
}

impl AppState {
    fn ready(&self) -> Result<&Ready, ApiError> {
        match self.model.get() {
            None => Err(ApiError::unavailable(
                "model is loading; retry later",
                RETRY_AFTER_LOADING,
            )),
            Some(Err(e)) => Err(ApiError::unavailable(
                format!("model failed to load: {e}"),
                RETRY_AFTER_LOADING,
            )),
            Some(Ok(ready)) => Ok(ready),
        }
    }
}

/// The request id, for handlers that log.
#[derive(Clone)]
pub struct RequestId(pub String);

/// Registers the routes of the main port.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/ping")
            .route(web::get().to(ping))
            .route(web::head().to(ping))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/invocations")
            .route(web::post().to(invocations))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/execution-parameters")
            .route(web::get().to(execution_parameters))
            .default_service(web::to(method_not_allowed)),
    );
    metrics_routes(cfg);
}

/// `/metrics` alone, also used for the optional second port.
pub fn metrics_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/metrics")
            .route(web::get().to(metrics_page))
            .default_service(web::to(method_not_allowed)),
    );
}

pub async fn not_found() -> HttpResponse {
    json_error(StatusCode::NOT_FOUND, "Not Found", None)
}

pub async fn method_not_allowed() -> HttpResponse {
    json_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed", None)
}

/// Health: 200 with an empty body when the model is ready, 503 + JSON otherwise. It only
/// reads a `OnceLock`, so it answers at once however busy the inference threads are.
async fn ping(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // A multi-model server is healthy without any model: SageMaker loads them on demand.
    if state.models.is_none() {
        state.ready()?;
    }
    Ok(HttpResponse::Ok().finish())
}

async fn execution_parameters(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.models.is_some() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "batch transform's execution parameters belong to single-model mode",
        ));
    }
    Ok(HttpResponse::Ok().json(&state.ready()?.execution_parameters))
}

async fn metrics_page(state: web::Data<AppState>) -> HttpResponse {
    let body = match &state.models {
        None => state.metrics.render(),
        Some(registry) => {
            let loaded = registry.loaded();
            for s in &loaded {
                // The arenas grow with the shapes a model meets: read them at each scrape.
                if let Some(a) = s.engine.arena() {
                    s.metrics.set_model_memory("arena", a.bytes);
                }
            }
            let mut all: Vec<&Metrics> = vec![&state.metrics];
            all.extend(loaded.iter().map(|s| s.metrics.as_ref()));
            metrics::render_all(&all)
        }
    };
    HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .body(body)
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Reads the body up to `limit` bytes. Past the limit it keeps reading (and dropping) up to
/// [`DRAIN_CAP`] more, so that an ordinary client that writes its whole body before reading
/// sees the 413 rather than a connection reset. A body that stalls for `idle` or is not
/// complete by `deadline` is a 408: a slow or stuck client never reaches the inference queue
/// and only costs an idle socket until then.
async fn read_body(
    mut payload: web::Payload,
    limit: usize,
    content_length: Option<usize>,
    idle: Duration,
    deadline: Instant,
) -> Result<Vec<u8>, ApiError> {
    let too_large = |n: usize| {
        ApiError::payload_too_large(format!(
            "request body of {n} bytes exceeds the limit of {limit} bytes"
        ))
    };
    if let Some(n) = content_length {
        if n > limit.saturating_add(DRAIN_CAP) {
            return Err(too_large(n));
        }
    }
    let mut buf = Vec::with_capacity(content_length.unwrap_or(0).min(limit));
    let mut total = 0usize;
    loop {
        let wait_until = (Instant::now() + idle).min(deadline);
        let next = match tokio::time::timeout_at(
            tokio::time::Instant::from_std(wait_until),
            payload.next(),
        )
        .await
        {
            Ok(next) => next,
            Err(_) => {
                return Err(ApiError::request_timeout(format!(
                    "the request body was not received in time ({total} bytes arrived{}); \
                         send the whole body promptly",
                    content_length
                        .map(|n| format!(" of {n}"))
                        .unwrap_or_default()
                )))
            }
        };
        let Some(chunk) = next else { break };
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        total = total.saturating_add(chunk.len());
        if total > limit {
            if total > limit.saturating_add(DRAIN_CAP) {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&chunk);
    }
    if total > limit {
        return Err(too_large(total));
    }
    Ok(buf)
}

/// A request read and parsed: what to run and how to answer.
struct Invocation {
    parsed: request::ParsedRequest,
    format: negotiation::ResponseFormat,
    items: Vec<(Vec<u8>, PredictOptions)>,
    /// The response's `X-Amzn-SageMaker-Custom-Attributes` (only when the request had one).
    attributes_reply: Option<String>,
}

async fn invocations(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some(registry) = &state.models else {
        let ready = state.ready()?;
        let target = Target {
            engine: &ready.engine,
            metrics: &state.metrics,
        };
        return invoke(&req, payload, &state, target).await;
    };
    let Some(name) = header_str(req.headers(), TARGET_MODEL_HEADER) else {
        return Err(ApiError::bad_request(
            "multi-model mode: name the model in X-Amzn-SageMaker-Target-Model, or POST to \
             /models/{name}/invoke",
        ));
    };
    let served = registry.get(name).map_err(invocation_error)?;
    let target = Target {
        engine: &served.engine,
        metrics: &served.metrics,
    };
    invoke(&req, payload, &state, target).await
}

/// A model that cannot be invoked right now: loading or unloading is transient (503 and
/// retry), a model that is not loaded is a 404.
pub fn invocation_error(e: ModelError) -> ApiError {
    match e {
        ModelError::Loading(_) | ModelError::Unloading(_) => {
            ApiError::unavailable(e.to_string(), RETRY_AFTER_LOADING)
        }
        e => e.into(),
    }
}

/// Reads, runs and answers one invocation on `target` (`/invocations` and
/// `/models/{name}/invoke`).
pub async fn invoke(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    target: Target<'_>,
) -> Result<HttpResponse, ApiError> {
    let start = Instant::now();
    let deadline = start + state.settings.timeout;
    let inv = read_invocation(req, payload, state, target.metrics, start, deadline).await?;
    let peer = req.conn_data::<PeerSocket>().copied();
    let results = infer(&target, state, inv.items, deadline, peer).await?;
    let t_encode = Instant::now();
    let body = response::encode_response(&inv.parsed, &results, &inv.format)?;
    target
        .metrics
        .stage_seconds
        .with_label_values(&["encode"])
        .observe(t_encode.elapsed().as_secs_f64());
    let mut res = HttpResponse::Ok();
    res.content_type(inv.format.content_type);
    if let Some(attrs) = inv.attributes_reply {
        res.insert_header((CUSTOM_ATTRIBUTES_HEADER, attrs));
    }
    Ok(res.body(body))
}

/// Negotiates the response type, reads the body (bounded in size and time) and parses it into
/// one item per image with its options: defaults ← custom attributes ← body ← instance.
async fn read_invocation(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    metrics: &Metrics,
    start: Instant,
    deadline: Instant,
) -> Result<Invocation, ApiError> {
    let settings = &state.settings;
    let headers = req.headers();
    let accept = header_str(headers, header::ACCEPT);
    let format = negotiation::negotiate(accept, &settings.default_accept)?;
    let content_type = header_str(headers, header::CONTENT_TYPE).map(str::to_owned);
    if content_type.is_some() {
        // Refuse an unsupported type before reading a possibly large body.
        negotiation::request_kind(content_type.as_deref(), b"")?;
    }
    let attributes = header_str(headers, CUSTOM_ATTRIBUTES_HEADER);
    let (header_options, attributes_reply) = match attributes {
        Some(a) => {
            let parsed = options::read_custom_attributes(a);
            let reply = parsed.reply();
            (parsed.overrides, reply)
        }
        None => (Default::default(), None),
    };
    let debug_panic =
        settings.allow_debug_panic && attributes.is_some_and(options::debug_panic_requested);
    let content_length = header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse().ok());

    let body = read_body(
        payload,
        settings.payload_limit,
        content_length,
        settings.body_timeout,
        deadline,
    )
    .await?;
    let kind = negotiation::request_kind(content_type.as_deref(), &body)?;
    let format = if settings.mirror_jsonlines
        && kind == request::RequestKind::JsonLines
        && negotiation::accept_is_wildcard(accept)
    {
        negotiation::ResponseFormat {
            lines: true,
            content_type: negotiation::JSONLINES.to_string(),
        }
    } else {
        format
    };
    let t_parse = Instant::now();
    metrics
        .stage_seconds
        .with_label_values(&["read_body"])
        .observe((t_parse - start).as_secs_f64());

    // JSON and base64 of a 6 MiB body take milliseconds of CPU: keep them off the executor.
    let max_instances = settings.max_instances;
    let mut parsed = web::block(move || request::parse_body(kind, body, max_instances))
        .await
        .map_err(|_| ApiError::internal("request parser failed"))??;
    metrics
        .stage_seconds
        .with_label_values(&["parse"])
        .observe(t_parse.elapsed().as_secs_f64());
    let items = (0..parsed.instances.len())
        .map(|i| {
            let mut opts = parsed.options_for(i, &header_options);
            opts.debug_panic = debug_panic;
            (std::mem::take(&mut parsed.instances[i].image), opts)
        })
        .collect();
    Ok(Invocation {
        parsed,
        format,
        items,
        attributes_reply,
    })
}

/// Submits the images to the engine and waits for all of them until `deadline`.
enum Waited {
    Done(JobResult),
    Deadline,
    ClientGone,
    Stopped,
}

/// Waits for the engine's answer until `deadline`, checking every [`PEER_CHECK`] that the
/// client is still there.
async fn wait(
    mut rx: tokio::sync::oneshot::Receiver<JobResult>,
    deadline: Instant,
    peer: Option<PeerSocket>,
) -> Waited {
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut tick = tokio::time::interval(PEER_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = &mut rx => return r.map_or(Waited::Stopped, Waited::Done),
            () = tokio::time::sleep_until(deadline) => return Waited::Deadline,
            _ = tick.tick() => {
                if peer.is_some_and(|p| p.closed()) {
                    return Waited::ClientGone;
                }
            }
        }
    }
}

async fn infer(
    target: &Target<'_>,
    state: &AppState,
    items: Vec<(Vec<u8>, PredictOptions)>,
    deadline: Instant,
    peer: Option<PeerSocket>,
) -> Result<Vec<ImageResult>, ApiError> {
    let n = items.len();
    let metrics = target.metrics;
    let rx = target.engine.submit(items, deadline).map_err(|e| match e {
        Refused::QueueFull => {
            metrics.discarded.with_label_values(&["overloaded"]).inc();
            ApiError::unavailable(
                "server overloaded: the inference queue is full; retry later",
                RETRY_AFTER_OVERLOADED,
            )
        }
        Refused::Stopping => ApiError::unavailable(
            "the model is being unloaded; load it again to invoke it",
            RETRY_AFTER_LOADING,
        ),
    })?;
    let timeout_msg = || {
        ApiError::gateway_timeout(format!(
            "inference did not finish within the server timeout of {} s",
            state.settings.timeout.as_secs_f64()
        ))
    };
    let outcome = match wait(rx, deadline, peer).await {
        // Dropping the receiver here tells the engine to drop the images not yet run.
        Waited::Deadline => {
            metrics.discarded.with_label_values(&["deadline"]).inc();
            return Err(timeout_msg());
        }
        // The engine counts it (`client_gone`) when it drops the images.
        Waited::ClientGone => {
            return Err(ApiError::new(
                client_closed_request(),
                "the client closed the connection",
            ));
        }
        // Only an unload stops an engine while the server runs.
        Waited::Stopped => {
            return Err(ApiError::unavailable(
                "the model was unloaded before this request finished",
                RETRY_AFTER_LOADING,
            ))
        }
        Waited::Done(outcome) => outcome,
    };
    match outcome {
        Ok(r) => Ok(r),
        Err(JobError::DeadlineExceeded) => Err(timeout_msg()),
        Err(JobError::Predict { index, error }) => {
            let prefix = if n > 1 {
                format!("instance {index}: ")
            } else {
                String::new()
            };
            let err = ApiError::from_predict(&error, &prefix);
            if err.status.is_server_error() {
                tracing::error!(error = %error, "inference failed");
            }
            Err(err)
        }
    }
}

/// Bytes of the request's header fields as sent (`name: value\r\n` each).
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

fn request_id(headers: &HeaderMap) -> String {
    // Accept a caller's id only if it is a sane token, since it is echoed and logged.
    for name in INBOUND_ID_HEADERS {
        if let Some(v) = header_str(headers, *name) {
            let v = v.trim();
            if !v.is_empty() && v.len() <= 200 && v.bytes().all(|b| b.is_ascii_graphic()) {
                return v.to_string();
            }
        }
    }
    uuid::Uuid::new_v4().to_string()
}

fn route_label(path: &str) -> &'static str {
    match path {
        "/ping" => "/ping",
        "/invocations" => "/invocations",
        "/execution-parameters" => "/execution-parameters",
        "/metrics" => "/metrics",
        "/models" => "/models",
        // Model names stay out of the label: one label per route keeps the set bounded.
        p => match p
            .strip_prefix("/models/")
            .map(|rest| rest.split('/').collect::<Vec<_>>())
        {
            Some(parts) if parts.len() == 1 => "/models/{name}",
            Some(parts) if parts.len() == 2 && parts[1] == "invoke" => "/models/{name}/invoke",
            _ => "other",
        },
    }
}

fn content_type_label(headers: &HeaderMap) -> &'static str {
    let Some(v) = header_str(headers, header::CONTENT_TYPE) else {
        return "none";
    };
    match negotiation::media_type_essence(v).as_str() {
        "image/jpeg" => "image/jpeg",
        "image/png" => "image/png",
        "application/x-image" => "application/x-image",
        "application/octet-stream" => "application/octet-stream",
        "application/json" => "application/json",
        "application/jsonlines" => "application/jsonlines",
        "application/x-jsonlines" => "application/x-jsonlines",
        "" => "none",
        _ => "other",
    }
}

fn is_json(res: &HttpResponse<BoxBody>) -> bool {
    header_str(res.headers(), header::CONTENT_TYPE)
        .map(|v| negotiation::media_type_essence(v) == negotiation::JSON)
        .unwrap_or(false)
}

/// An error response actix wrote itself (plain text), rewritten as our JSON error with the
/// same status, `Allow` and `Retry-After`.
fn as_json_error(res: ServiceResponse<BoxBody>) -> ServiceResponse<BoxBody> {
    let status = res.status();
    let message = res
        .response()
        .error()
        .map(|e| e.to_string())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    let (request, old) = res.into_parts();
    let mut new = json_error(status, &message, None);
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = old.headers().get(&name) {
            new.headers_mut().insert(name.clone(), v.clone());
        }
    }
    ServiceResponse::new(request, new)
}

/// Middleware around every request: request id (taken or generated, echoed in
/// `X-Request-Id`), a tracing span, request metrics, one log line, and JSON bodies for the
/// errors actix produces itself (unknown routes, payload errors, panics in extractors).
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let id = request_id(req.headers());
    req.extensions_mut().insert(RequestId(id.clone()));
    let route = route_label(req.path());
    let content_type = content_type_label(req.headers());
    let method = req.method().to_string();
    let path = req.path().to_owned();
    let start = Instant::now();
    let invocation = route == "/invocations" || route == "/models/{name}/invoke";
    if invocation {
        if let Some(s) = &state {
            s.metrics.inflight.inc();
        }
    }
    let span = tracing::info_span!("request", request_id = %id);
    let limit = state
        .as_ref()
        .map_or(usize::MAX, |s| s.settings.max_header_bytes);
    let header_bytes = header_bytes(req.headers());
    let result = if header_bytes > limit {
        // Answered before routing: no handler sees an oversized head.
        let msg =
            format!("request headers of {header_bytes} bytes exceed the limit of {limit} bytes");
        Ok(req
            .into_response(json_error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &msg,
                None,
            ))
            .map_into_boxed_body())
    } else {
        next.call(req)
            .instrument(span.clone())
            .await
            .map(ServiceResponse::map_into_boxed_body)
    };
    if invocation {
        if let Some(s) = &state {
            s.metrics.inflight.dec();
        }
    }
    let mut res = match result {
        Ok(res) => res,
        Err(e) => {
            // Handlers' errors arrive as responses; an `Err` here comes from actix itself.
            // No request is left to build a response from (holding a clone of it would break
            // routing), so hand back the error re-typed as a JSON one.
            let status = e.as_response_error().status_code();
            if let Some(s) = &state {
                s.metrics
                    .requests
                    .with_label_values(&[route, status.as_str(), content_type])
                    .inc();
            }
            return Err(ApiError::new(status, e.to_string()).into());
        }
    };
    let status = res.status();
    if (status.is_client_error() || status.is_server_error()) && !is_json(res.response()) {
        res = as_json_error(res);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
    }
    let elapsed = start.elapsed();
    if let Some(s) = &state {
        s.metrics
            .requests
            .with_label_values(&[route, status.as_str(), content_type])
            .inc();
        s.metrics
            .request_seconds
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }
    let _enter = span.enter();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    if route == "/ping" || route == "/metrics" {
        // SageMaker pings every few seconds and scrapers poll: keep them out of info logs.
        tracing::debug!(%method, %path, status = status.as_u16(), latency_ms, "request");
    } else if status.is_server_error() {
        tracing::warn!(%method, %path, status = status.as_u16(), latency_ms, "request");
    } else {
        tracing::info!(%method, %path, status = status.as_u16(), latency_ms, "request");
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        assert_eq!(request_id(&h).len(), 36);
        h.insert(
            HeaderName::from_static("x-amzn-requestid"),
            HeaderValue::from_static("abc-123"),
        );
        assert_eq!(request_id(&h), "abc-123");
        h.insert(
            HeaderName::from_static("x-request-id"),
            HeaderValue::from_static("has space"),
        );
        assert_eq!(request_id(&h), "abc-123");
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(route_label("/ping"), "/ping");
        assert_eq!(route_label("/etc/passwd"), "other");
        assert_eq!(route_label("/models"), "/models");
        assert_eq!(route_label("/models/a1b2"), "/models/{name}");
        assert_eq!(route_label("/models/a1b2/invoke"), "/models/{name}/invoke");
        assert_eq!(route_label("/models/a1b2/x/invoke"), "other");
        let mut h = HeaderMap::new();
        assert_eq!(content_type_label(&h), "none");
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("image/PNG; q=1"),
        );
        assert_eq!(content_type_label(&h), "image/png");
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/x-whatever"),
        );
        assert_eq!(content_type_label(&h), "other");
    }
}
