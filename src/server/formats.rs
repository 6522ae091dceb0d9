//! Request parsing and response encoding for `/invocations`: pure functions, no I/O.
//!
//! Accepted bodies:
//! - raw image bytes (`image/*`, `application/x-image`, `application/octet-stream`);
//! - JSON (`application/json`):
//!   - TF-Serving row form `{"instances": [i, …]}` → `{"predictions": [r, …]}`;
//!   - TF-Serving columnar form `{"inputs": i | [i, …]}` → `{"outputs": r | [r, …]}`;
//!   - the seed container's `{"img_id", "img_data", "score_threshold", "mask_threshold"}` →
//!     `{"img_id", "annotations": [{"bbox": [x, y, w, h], "category_id", "category_name",
//!     "score", "segmentation"}]}`;
//!   - a bare instance (`"<base64>"` or `{"b64": …}`) → one result, and a top-level list of
//!     instances → `{"predictions": […]}`;
//! - JSON Lines (`application/jsonlines`): one instance per non-empty line.
//!
//! An instance is a base64 string, `{"b64": "…"}`, a one-key object naming its input
//! (`{"image_bytes": {"b64": "…"}}`), or a seed object (`{"img_id", "img_data", …}`).
//! Options (`score_threshold`, `mask_threshold`, `max_detections`, `mask_format`) may sit at
//! the top level of a JSON body, in its `parameters` object, or in a seed object; the
//! `X-Amzn-SageMaker-Custom-Attributes` header carries the same keys as `key=value` pairs.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::types::{ImageResult, MaskFormat, PredictOptions};

/// What the body of a request is, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Image,
    Json,
    JsonLines,
}

/// The response encoding chosen from `Accept`; `content_type` is what the response carries
/// (the type the client asked for, so an alias such as `application/x-jsonlines` is echoed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseFormat {
    pub lines: bool,
    pub content_type: String,
}

pub const JSON: &str = "application/json";
pub const JSONLINES: &str = "application/jsonlines";
const JSONLINES_ALIASES: &[&str] = &[
    "application/jsonlines",
    "application/x-jsonlines",
    "application/jsonl",
    "application/x-ndjson",
    "application/json-lines",
    "application/jsons",
];
const IMAGE_TYPES: &[&str] = &["application/x-image", "application/octet-stream"];

/// The lower-cased `type/subtype` of a media type, parameters (`; charset=…`) dropped.
pub fn media_type_essence(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Classifies a request body. A missing `Content-Type` is sniffed (a body starting with `{`
/// or `[` is JSON, anything else raw image bytes) because InvokeEndpoint's ContentType is
/// optional; any other unknown type is 415.
pub fn request_kind(content_type: Option<&str>, body: &[u8]) -> Result<RequestKind, ApiError> {
    let essence = content_type.map(media_type_essence).unwrap_or_default();
    if essence.is_empty() {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        return Ok(match first {
            Some(b'{') | Some(b'[') | Some(b'"') => RequestKind::Json,
            _ => RequestKind::Image,
        });
    }
    if essence == JSON || essence == "text/json" {
        Ok(RequestKind::Json)
    } else if JSONLINES_ALIASES.contains(&essence.as_str()) {
        Ok(RequestKind::JsonLines)
    } else if essence.starts_with("image/") || IMAGE_TYPES.contains(&essence.as_str()) {
        Ok(RequestKind::Image)
    } else {
        Err(ApiError::unsupported_media_type(format!(
            "Unsupported Media Type: {essence}; use image/jpeg, image/png, application/x-image, \
             application/octet-stream, application/json or application/jsonlines"
        )))
    }
}

/// Content negotiation on `Accept`. Missing, empty, `*/*` or `application/*` gives
/// `default` (`SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`); otherwise the acceptable type with
/// the highest q-value wins (ties: first listed); nothing acceptable is 406.
pub fn negotiate(accept: Option<&str>, default: &str) -> Result<ResponseFormat, ApiError> {
    let default_format = || {
        let essence = media_type_essence(default);
        if JSONLINES_ALIASES.contains(&essence.as_str()) {
            ResponseFormat {
                lines: true,
                content_type: essence,
            }
        } else {
            ResponseFormat {
                lines: false,
                content_type: JSON.to_string(),
            }
        }
    };
    let accept = match accept.map(str::trim) {
        None | Some("") => return Ok(default_format()),
        Some(a) => a,
    };
    let mut best: Option<(f32, ResponseFormat)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let essence = media_type_essence(parts.next().unwrap_or(""));
        if essence.is_empty() {
            continue;
        }
        let mut q = 1.0f32;
        for p in parts {
            if let Some((k, v)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    // An unparsable q is treated as 1, as most servers do.
                    q = v.trim().parse::<f32>().unwrap_or(1.0);
                }
            }
        }
        if q <= 0.0 || q.is_nan() {
            continue;
        }
        let format = if essence == "*/*" || essence == "application/*" {
            default_format()
        } else if essence == JSON || essence == "text/json" {
            ResponseFormat {
                lines: false,
                content_type: JSON.to_string(),
            }
        } else if JSONLINES_ALIASES.contains(&essence.as_str()) {
            ResponseFormat {
                lines: true,
                content_type: essence,
            }
        } else {
            continue;
        };
        if best.as_ref().is_none_or(|(bq, _)| q > *bq) {
            best = Some((q, format));
        }
    }
    best.map(|(_, f)| f).ok_or_else(|| {
        ApiError::not_acceptable(format!(
            "Not Acceptable: {accept}; this server answers application/json or \
             application/jsonlines"
        ))
    })
}

/// True when `Accept` leaves the choice to the server (missing, empty, or only wildcards).
pub fn accept_is_wildcard(accept: Option<&str>) -> bool {
    accept.is_none_or(|a| {
        a.split(',')
            .map(media_type_essence)
            .all(|e| e.is_empty() || e == "*/*" || e == "application/*")
    })
}

/// Per-request option overrides; `None` leaves the lower layer's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OptionOverrides {
    pub score_threshold: Option<f32>,
    pub mask_threshold: Option<f32>,
    pub max_detections: Option<usize>,
    pub mask_format: Option<MaskFormat>,
}

impl OptionOverrides {
    /// Layers `self` over `base`.
    pub fn apply(&self, base: &mut PredictOptions) {
        if let Some(v) = self.score_threshold {
            base.score_threshold = Some(v);
        }
        if let Some(v) = self.mask_threshold {
            base.mask_threshold = Some(v);
        }
        if let Some(v) = self.max_detections {
            base.max_detections = Some(v);
        }
        if let Some(v) = self.mask_format {
            base.mask_format = v;
        }
    }
}

/// Upper bound of `max_detections`, far above any model's `detections_per_img`.
const MAX_DETECTIONS_LIMIT: usize = 10_000;

#[derive(Clone, Copy)]
enum OptKey {
    Score,
    Mask,
    MaxDet,
    Format,
}

fn option_key(key: &str) -> Option<OptKey> {
    match key.trim().to_ascii_lowercase().replace('-', "_").as_str() {
        "score_threshold" | "score_thresh" | "min_score" => Some(OptKey::Score),
        "mask_threshold" | "mask_thresh" => Some(OptKey::Mask),
        "max_detections" | "max_dets" | "detections_per_img" => Some(OptKey::MaxDet),
        "mask_format" => Some(OptKey::Format),
        _ => None,
    }
}

fn parse_threshold(s: &str) -> Option<f32> {
    s.trim()
        .parse::<f32>()
        .ok()
        .filter(|v| v.is_finite() && (0.0..=1.0).contains(v))
}

fn parse_max_detections(s: &str) -> Option<usize> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|v| (1..=MAX_DETECTIONS_LIMIT).contains(v))
}

fn parse_mask_format(s: &str) -> Option<MaskFormat> {
    match s.trim().to_ascii_lowercase().as_str() {
        "rle" | "coco_rle" => Some(MaskFormat::Rle),
        "polygon" | "polygons" => Some(MaskFormat::Polygon),
        "png" => Some(MaskFormat::Png),
        "none" => Some(MaskFormat::None),
        _ => None,
    }
}

/// Parses `X-Amzn-SageMaker-Custom-Attributes`: `key=value` pairs separated by `,` or `;`.
/// Never fails: SageMaker forwards this header verbatim and it may carry other tools' keys
/// (`tfs-model-name=…`, a trace id), so unknown keys and invalid values are ignored.
pub fn parse_custom_attributes(header: &str) -> OptionOverrides {
    let mut out = OptionOverrides::default();
    for pair in header.split([',', ';']) {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        match option_key(key) {
            Some(OptKey::Score) => {
                if let Some(v) = parse_threshold(value) {
                    out.score_threshold = Some(v);
                }
            }
            Some(OptKey::Mask) => {
                if let Some(v) = parse_threshold(value) {
                    out.mask_threshold = Some(v);
                }
            }
            Some(OptKey::MaxDet) => {
                if let Some(v) = parse_max_detections(value) {
                    out.max_detections = Some(v);
                }
            }
            Some(OptKey::Format) => {
                if let Some(v) = parse_mask_format(value) {
                    out.mask_format = Some(v);
                }
            }
            None => {}
        }
    }
    out
}

/// True when the custom attributes carry `debug_panic=1` (or `true`): the test hook of
/// `--debug-allow-panic`, ignored by a server started without that flag.
pub fn debug_panic_requested(header: &str) -> bool {
    header.split([',', ';']).any(|pair| {
        pair.split_once('=').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("debug_panic")
                && matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true")
        })
    })
}

/// Reads options from a JSON object. Unlike the header, a body the client wrote on purpose
/// gets a 400 for an invalid value. Numbers may be given as numbers or numeric strings (the
/// seed's clients send either).
fn options_from_json(obj: &Map<String, Value>, what: &str) -> Result<OptionOverrides, ApiError> {
    let mut out = OptionOverrides::default();
    for (key, value) in obj {
        let Some(k) = option_key(key) else { continue };
        if value.is_null() {
            continue;
        }
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        let bad = |expected: &str| {
            ApiError::bad_request(format!(
                "{what}: invalid {key} {value}: expected {expected}"
            ))
        };
        match k {
            OptKey::Score => {
                out.score_threshold =
                    Some(parse_threshold(&text).ok_or_else(|| bad("a number in [0, 1]"))?)
            }
            OptKey::Mask => {
                out.mask_threshold =
                    Some(parse_threshold(&text).ok_or_else(|| bad("a number in [0, 1]"))?)
            }
            OptKey::MaxDet => {
                out.max_detections = Some(
                    parse_max_detections(&text).ok_or_else(|| bad("an integer in [1, 10000]"))?,
                )
            }
            OptKey::Format => {
                out.mask_format = Some(
                    parse_mask_format(&text)
                        .ok_or_else(|| bad("one of rle, polygon, png, none"))?,
                )
            }
        }
    }
    Ok(out)
}

/// How the response is shaped, from how the request was shaped.
#[derive(Debug, Clone, PartialEq)]
pub enum Envelope {
    /// Raw image bytes, or a single JSON instance (bare or seed form): one result.
    Single,
    /// `{"instances": […]}` or a top-level list: `{"predictions": […]}`.
    Instances,
    /// `{"inputs": …}`: `{"outputs": …}`, a list when the input was a list.
    Inputs { batched: bool },
    /// JSON Lines: one result per line (or `{"predictions": […]}` when JSON is asked for).
    Lines,
}

/// How one instance's result is written.
#[derive(Debug, Clone, PartialEq)]
pub enum InstanceKind {
    /// maskserve's own result object (`width`, `height`, `detections`).
    Plain,
    /// The seed container's `{"img_id", "annotations"}`; `img_id` is only echoed.
    Seed { img_id: Value },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub image: Vec<u8>,
    pub kind: InstanceKind,
    pub options: OptionOverrides,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    pub envelope: Envelope,
    pub instances: Vec<Instance>,
    /// Request-level options from the JSON body (over the header's, under per-instance ones).
    pub options: OptionOverrides,
}

impl ParsedRequest {
    /// The options of instance `i`: defaults ← custom attributes ← body ← instance.
    pub fn options_for(&self, i: usize, header: &OptionOverrides) -> PredictOptions {
        let mut o = PredictOptions::default();
        header.apply(&mut o);
        self.options.apply(&mut o);
        if let Some(inst) = self.instances.get(i) {
            inst.options.apply(&mut o);
        }
        o
    }
}

/// Base64 as clients really send it: standard or URL-safe alphabet, padding optional,
/// line breaks (MIME) allowed, an optional `data:…;base64,` prefix.
pub fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    let s = match s.strip_prefix("data:") {
        Some(rest) => match rest.split_once(',') {
            Some((_, data)) => data,
            None => rest,
        },
        None => s,
    };
    let cleaned: String;
    let s = if s.bytes().any(|b| b.is_ascii_whitespace()) {
        cleaned = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        cleaned.as_str()
    } else {
        s
    };
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let standard = GeneralPurpose::new(&alphabet::STANDARD, config);
    let url_safe = GeneralPurpose::new(&alphabet::URL_SAFE, config);
    let bytes = standard
        .decode(s)
        .or_else(|e| url_safe.decode(s).map_err(|_| e))
        .map_err(|e| format!("invalid base64: {e}"))?;
    if bytes.is_empty() {
        return Err("empty image data".to_string());
    }
    Ok(bytes)
}

fn b64_field(v: &Value, what: &str) -> Result<Vec<u8>, ApiError> {
    let s = match v {
        Value::String(s) => s.as_str(),
        Value::Object(o) => match o.get("b64") {
            Some(Value::String(s)) => s.as_str(),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "{what}: expected a base64 string or {{\"b64\": \"…\"}}"
                )))
            }
        },
        _ => {
            return Err(ApiError::bad_request(format!(
                "{what}: expected a base64 string or {{\"b64\": \"…\"}}"
            )))
        }
    };
    decode_base64(s).map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
}

/// One instance: a base64 string, `{"b64"}`, a seed object, or `{"<input name>": <one of
/// those>}`.
fn parse_instance(v: &Value, what: &str) -> Result<Instance, ApiError> {
    match v {
        Value::String(_) => Ok(Instance {
            image: b64_field(v, what)?,
            kind: InstanceKind::Plain,
            options: OptionOverrides::default(),
        }),
        Value::Object(o) if o.contains_key("b64") => Ok(Instance {
            image: b64_field(v, what)?,
            kind: InstanceKind::Plain,
            options: OptionOverrides::default(),
        }),
        Value::Object(o) if o.contains_key("img_data") => {
            let data = o.get("img_data").unwrap_or(&Value::Null);
            Ok(Instance {
                image: b64_field(data, &format!("{what}: img_data"))?,
                kind: InstanceKind::Seed {
                    img_id: o.get("img_id").cloned().unwrap_or(Value::Null),
                },
                options: options_from_json(o, what)?,
            })
        }
        Value::Object(o) if o.len() == 1 => {
            // A named input, TF-Serving style: {"image_bytes": {"b64": "…"}}.
            let (name, inner) = o.iter().next().ok_or_else(|| bad_instance(what))?;
            match inner {
                Value::String(_) | Value::Object(_) => {
                    parse_instance(inner, &format!("{what}: {name}"))
                }
                _ => Err(bad_instance(what)),
            }
        }
        _ => Err(bad_instance(what)),
    }
}

fn bad_instance(what: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{what}: expected a base64 string, {{\"b64\": \"…\"}} or {{\"img_id\": …, \"img_data\": \"…\"}}"
    ))
}

fn parse_list(items: &[Value], max: usize, what: &str) -> Result<Vec<Instance>, ApiError> {
    if items.is_empty() {
        return Err(ApiError::bad_request(format!("{what} is empty")));
    }
    if items.len() > max {
        return Err(ApiError::bad_request(format!(
            "{what} has {} entries; at most {max} are allowed in one request",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| parse_instance(v, &format!("{what}[{i}]")))
        .collect()
}

fn parse_json_value(text: &[u8], what: &str) -> Result<Value, ApiError> {
    // serde_json stops at nesting depth 128 with an error (no stack overflow), so a deeply
    // nested body is an ordinary 400 here.
    serde_json::from_slice(text)
        .map_err(|e| ApiError::bad_request(format!("{what}: invalid JSON: {e}")))
}

/// Parses an `/invocations` body. `max_instances` bounds the images of one request.
pub fn parse_request(
    kind: RequestKind,
    body: &[u8],
    max_instances: usize,
) -> Result<ParsedRequest, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request("empty request body"));
    }
    match kind {
        RequestKind::Image => Ok(ParsedRequest {
            envelope: Envelope::Single,
            instances: vec![Instance {
                image: body.to_vec(),
                kind: InstanceKind::Plain,
                options: OptionOverrides::default(),
            }],
            options: OptionOverrides::default(),
        }),
        RequestKind::Json => parse_json_request(body, max_instances),
        RequestKind::JsonLines => {
            let mut instances = Vec::new();
            for (n, line) in body.split(|&b| b == b'\n').enumerate() {
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                if instances.len() == max_instances {
                    return Err(ApiError::bad_request(format!(
                        "more than {max_instances} lines; at most {max_instances} instances \
                         are allowed in one request"
                    )));
                }
                let what = format!("line {}", n + 1);
                let v = parse_json_value(line, &what)?;
                instances.push(parse_instance(&v, &what)?);
            }
            Ok(ParsedRequest {
                envelope: Envelope::Lines,
                instances,
                options: OptionOverrides::default(),
            })
        }
    }
}

fn parse_json_request(body: &[u8], max_instances: usize) -> Result<ParsedRequest, ApiError> {
    let v = parse_json_value(body, "body")?;
    match &v {
        Value::Object(o) => {
            let mut options = options_from_json(o, "body")?;
            if let Some(Value::Object(p)) = o.get("parameters") {
                options_from_json(p, "parameters")?.apply_over(&mut options);
            }
            let has_instances = o.contains_key("instances");
            let has_inputs = o.contains_key("inputs");
            if has_instances && has_inputs {
                return Err(ApiError::bad_request(
                    "body has both \"instances\" and \"inputs\"; send one of them",
                ));
            }
            if has_instances {
                let Some(Value::Array(items)) = o.get("instances") else {
                    return Err(ApiError::bad_request("\"instances\" must be a list"));
                };
                return Ok(ParsedRequest {
                    envelope: Envelope::Instances,
                    instances: parse_list(items, max_instances, "instances")?,
                    options,
                });
            }
            if has_inputs {
                let inputs = o.get("inputs").unwrap_or(&Value::Null);
                return match inputs {
                    Value::Array(items) => Ok(ParsedRequest {
                        envelope: Envelope::Inputs { batched: true },
                        instances: parse_list(items, max_instances, "inputs")?,
                        options,
                    }),
                    // {"inputs": {"image_bytes": [ … ]}}: a named batched input.
                    Value::Object(named) if named.len() == 1 && !named.contains_key("b64") => {
                        match named.values().next() {
                            Some(Value::Array(items)) => Ok(ParsedRequest {
                                envelope: Envelope::Inputs { batched: true },
                                instances: parse_list(items, max_instances, "inputs")?,
                                options,
                            }),
                            _ => Ok(ParsedRequest {
                                envelope: Envelope::Inputs { batched: false },
                                instances: vec![parse_instance(inputs, "inputs")?],
                                options,
                            }),
                        }
                    }
                    _ => Ok(ParsedRequest {
                        envelope: Envelope::Inputs { batched: false },
                        instances: vec![parse_instance(inputs, "inputs")?],
                        options,
                    }),
                };
            }
            if o.contains_key("img_data") || o.contains_key("b64") {
                let inst = parse_instance(&v, "body")?;
                return Ok(ParsedRequest {
                    envelope: Envelope::Single,
                    instances: vec![inst],
                    // The seed object's own options are already in the instance.
                    options: if o.contains_key("img_data") {
                        OptionOverrides::default()
                    } else {
                        options
                    },
                });
            }
            Err(ApiError::bad_request(
                "expected {\"instances\": […]}, {\"inputs\": …}, {\"img_id\": …, \"img_data\": \"…\"} \
                 or {\"b64\": \"…\"}",
            ))
        }
        Value::Array(items) => Ok(ParsedRequest {
            envelope: Envelope::Instances,
            instances: parse_list(items, max_instances, "body")?,
            options: OptionOverrides::default(),
        }),
        Value::String(_) => Ok(ParsedRequest {
            envelope: Envelope::Single,
            instances: vec![parse_instance(&v, "body")?],
            options: OptionOverrides::default(),
        }),
        _ => Err(bad_instance("body")),
    }
}

impl OptionOverrides {
    /// Layers `self` over another override set (for `parameters` over top-level keys).
    fn apply_over(&self, base: &mut OptionOverrides) {
        if self.score_threshold.is_some() {
            base.score_threshold = self.score_threshold;
        }
        if self.mask_threshold.is_some() {
            base.mask_threshold = self.mask_threshold;
        }
        if self.max_detections.is_some() {
            base.max_detections = self.max_detections;
        }
        if self.mask_format.is_some() {
            base.mask_format = self.mask_format;
        }
    }
}

/// The seed container's response for one image.
pub fn seed_response(img_id: &Value, result: &ImageResult) -> Value {
    let annotations: Vec<Value> = result
        .detections
        .iter()
        .map(|d| {
            let [x1, y1, x2, y2] = d.bbox;
            let mut a = Map::new();
            a.insert("bbox".into(), serde_json::json!([x1, y1, x2 - x1, y2 - y1]));
            a.insert("category_id".into(), d.class_id.into());
            a.insert("category_name".into(), d.class_name.clone().into());
            a.insert("score".into(), serde_json::json!(d.score));
            if let Some(rle) = &d.mask {
                a.insert("segmentation".into(), serde_json::json!(rle));
            } else if let Some(polys) = &d.polygons {
                a.insert("segmentation".into(), serde_json::json!(polys));
            }
            if let Some(png) = &d.mask_png {
                a.insert("mask_png".into(), png.clone().into());
            }
            Value::Object(a)
        })
        .collect();
    serde_json::json!({"img_id": img_id, "annotations": annotations})
}

fn item_value(kind: &InstanceKind, result: &ImageResult) -> Value {
    match kind {
        InstanceKind::Plain => serde_json::to_value(result).unwrap_or(Value::Null),
        InstanceKind::Seed { img_id } => seed_response(img_id, result),
    }
}

/// Encodes the results (one per instance, in order) in the negotiated format.
pub fn encode_response(
    request: &ParsedRequest,
    results: &[ImageResult],
    format: &ResponseFormat,
) -> Result<Vec<u8>, ApiError> {
    let items: Vec<Value> = request
        .instances
        .iter()
        .zip(results)
        .map(|(inst, r)| item_value(&inst.kind, r))
        .collect();
    let encode_err =
        |e: serde_json::Error| ApiError::internal(format!("encoding the response: {e}"));
    if format.lines {
        let mut out = Vec::new();
        for item in &items {
            serde_json::to_writer(&mut out, item).map_err(encode_err)?;
            out.push(b'\n');
        }
        return Ok(out);
    }
    let doc = match (&request.envelope, items.len()) {
        (Envelope::Single, 1) | (Envelope::Inputs { batched: false }, 1) => {
            let item = items.into_iter().next().unwrap_or(Value::Null);
            if let Envelope::Inputs { .. } = request.envelope {
                serde_json::json!({ "outputs": item })
            } else {
                item
            }
        }
        (Envelope::Inputs { .. }, _) => serde_json::json!({ "outputs": items }),
        _ => serde_json::json!({ "predictions": items }),
    };
    serde_json::to_vec(&doc).map_err(encode_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Detection, Rle, StageTimings};
    use base64::engine::general_purpose::STANDARD;

    fn result() -> ImageResult {
        ImageResult {
            width: 20,
            height: 10,
            detections: vec![Detection {
                class_id: 2,
                class_name: "square".into(),
                score: 0.9,
                bbox: [1.0, 2.0, 5.0, 8.0],
                mask: Some(Rle {
                    size: [10, 20],
                    counts: "abc".into(),
                }),
                polygons: None,
                mask_png: None,
            }],
            timings: StageTimings::default(),
        }
    }

    #[test]
    fn debug_panic_attribute() {
        assert!(debug_panic_requested("a=b, debug_panic=1"));
        assert!(debug_panic_requested("DEBUG_PANIC = true"));
        assert!(!debug_panic_requested("debug_panic=2;x=1"));
        assert!(!debug_panic_requested("debug_panic"));
        assert!(!debug_panic_requested(""));
    }

    #[test]
    fn content_types() {
        use RequestKind::*;
        for (ct, kind) in [
            ("image/jpeg", Image),
            ("image/png", Image),
            ("application/x-image", Image),
            ("application/octet-stream", Image),
            ("Application/JSON; charset=utf-8", Json),
            ("application/jsonlines", JsonLines),
            ("application/x-jsonlines;charset=UTF-8", JsonLines),
        ] {
            assert_eq!(request_kind(Some(ct), b"x").unwrap(), kind, "{ct}");
        }
        let e = request_kind(Some("text/csv"), b"1,2").unwrap_err();
        assert_eq!(e.status.as_u16(), 415);
        assert!(e.message.contains("text/csv"));
        assert_eq!(request_kind(None, b" {\"a\":1}").unwrap(), Json);
        assert_eq!(request_kind(None, b"\x89PNG").unwrap(), Image);
    }

    #[test]
    fn accept_negotiation() {
        let n = |a: Option<&str>| negotiate(a, JSON);
        assert_eq!(n(None).unwrap().content_type, JSON);
        assert_eq!(n(Some("*/*")).unwrap().content_type, JSON);
        assert_eq!(
            n(Some("application/json; charset=utf-8"))
                .unwrap()
                .content_type,
            JSON
        );
        let l = n(Some("application/jsonlines")).unwrap();
        assert!(l.lines);
        assert_eq!(l.content_type, JSONLINES);
        assert_eq!(
            n(Some("application/json;q=0.5, application/jsonlines"))
                .unwrap()
                .content_type,
            JSONLINES
        );
        assert_eq!(
            n(Some("text/html, application/json;q=0.1"))
                .unwrap()
                .content_type,
            JSON
        );
        assert_eq!(n(Some("text/csv")).unwrap_err().status.as_u16(), 406);
        assert_eq!(
            n(Some("application/json;q=0")).unwrap_err().status.as_u16(),
            406
        );
        // The default follows SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT.
        assert!(
            negotiate(Some("*/*"), "application/jsonlines")
                .unwrap()
                .lines
        );
        assert!(!negotiate(None, "text/csv").unwrap().lines);
        assert!(accept_is_wildcard(None));
        assert!(accept_is_wildcard(Some("*/*; q=0.8, application/*")));
        assert!(!accept_is_wildcard(Some("*/*, application/json")));
    }

    #[test]
    fn custom_attributes_never_fail() {
        let o = parse_custom_attributes(
            "score_threshold=0.3, mask_threshold=0.6;max_detections=5,mask_format=polygon",
        );
        assert_eq!(o.score_threshold, Some(0.3));
        assert_eq!(o.mask_threshold, Some(0.6));
        assert_eq!(o.max_detections, Some(5));
        assert_eq!(o.mask_format, Some(MaskFormat::Polygon));
        for junk in [
            "",
            "Trace ID: 123",
            "tfs-model-name=x,tfs-method=predict",
            "score_threshold=abc,max_detections=-1,mask_format=gif",
            "score_threshold=7",
            "====,,,;;",
            &"a".repeat(1024),
        ] {
            assert_eq!(
                parse_custom_attributes(junk),
                OptionOverrides::default(),
                "{junk}"
            );
        }
    }

    #[test]
    fn base64_variants() {
        let data = vec![0xfbu8, 0xff, 0x01, 0x02];
        let std = STANDARD.encode(&data);
        assert_eq!(decode_base64(&std).unwrap(), data);
        assert_eq!(decode_base64(std.trim_end_matches('=')).unwrap(), data);
        let url = std.replace('+', "-").replace('/', "_");
        assert_eq!(decode_base64(&url).unwrap(), data);
        assert_eq!(
            decode_base64(&format!("data:image/png;base64,{std}")).unwrap(),
            data
        );
        assert_eq!(decode_base64(" +/8B\nAg== ").unwrap(), data);
        assert!(decode_base64("not base64!").is_err());
        assert!(decode_base64("").is_err());
    }

    fn b64(s: &[u8]) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn tf_serving_instances() {
        let body = format!(
            r#"{{"instances": [{{"b64": "{}"}}, "{}", {{"image_bytes": {{"b64": "{}"}}}}],
                "score_threshold": 0.25, "parameters": {{"mask_format": "none"}}}}"#,
            b64(b"one"),
            b64(b"two"),
            b64(b"three")
        );
        let r = parse_request(RequestKind::Json, body.as_bytes(), 64).unwrap();
        assert_eq!(r.envelope, Envelope::Instances);
        let images: Vec<&[u8]> = r.instances.iter().map(|i| i.image.as_slice()).collect();
        assert_eq!(images, vec![&b"one"[..], b"two", b"three"]);
        let o = r.options_for(
            1,
            &parse_custom_attributes("score_threshold=0.9,max_detections=3"),
        );
        assert_eq!(o.score_threshold, Some(0.25)); // the body wins over the header
        assert_eq!(o.max_detections, Some(3));
        assert_eq!(o.mask_format, MaskFormat::None);

        let out = encode_response(
            &r,
            &[result(), result(), result()],
            &negotiate(None, JSON).unwrap(),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["predictions"].as_array().unwrap().len(), 3);
        assert_eq!(v["predictions"][0]["detections"][0]["class_name"], "square");
    }

    #[test]
    fn tf_serving_inputs() {
        let single = format!(r#"{{"inputs": {{"b64": "{}"}}}}"#, b64(b"x"));
        let r = parse_request(RequestKind::Json, single.as_bytes(), 64).unwrap();
        assert_eq!(r.envelope, Envelope::Inputs { batched: false });
        let v: Value = serde_json::from_slice(
            &encode_response(&r, &[result()], &negotiate(None, JSON).unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(v["outputs"]["width"], 20);

        let list = format!(r#"{{"inputs": ["{}", "{}"]}}"#, b64(b"x"), b64(b"y"));
        let r = parse_request(RequestKind::Json, list.as_bytes(), 64).unwrap();
        assert_eq!(r.envelope, Envelope::Inputs { batched: true });
        let v: Value = serde_json::from_slice(
            &encode_response(&r, &[result(), result()], &negotiate(None, JSON).unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(v["outputs"].as_array().unwrap().len(), 2);

        let named = format!(r#"{{"inputs": {{"image_bytes": ["{}"]}}}}"#, b64(b"x"));
        let r = parse_request(RequestKind::Json, named.as_bytes(), 64).unwrap();
        assert_eq!(r.envelope, Envelope::Inputs { batched: true });
    }

    #[test]
    fn seed_round_trip() {
        let body = format!(
            r#"{{"img_id": "../../etc/passwd", "img_data": "{}", "score_threshold": "0.4", "mask_threshold": 0.6}}"#,
            b64(b"img")
        );
        let r = parse_request(RequestKind::Json, body.as_bytes(), 64).unwrap();
        assert_eq!(r.envelope, Envelope::Single);
        let o = r.options_for(0, &OptionOverrides::default());
        assert_eq!(o.score_threshold, Some(0.4));
        assert_eq!(o.mask_threshold, Some(0.6));
        let out = encode_response(&r, &[result()], &negotiate(None, JSON).unwrap()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["img_id"], "../../etc/passwd");
        let a = &v["annotations"][0];
        assert_eq!(a["bbox"], serde_json::json!([1.0, 2.0, 4.0, 6.0]));
        assert_eq!(a["category_id"], 2);
        assert_eq!(a["category_name"], "square");
        assert!((a["score"].as_f64().unwrap() - 0.9).abs() < 1e-6);
        assert_eq!(
            a["segmentation"],
            serde_json::json!({"size": [10, 20], "counts": "abc"})
        );
        // Numeric ids are echoed as they came.
        let body = format!(r#"{{"img_id": 7, "img_data": "{}"}}"#, b64(b"img"));
        let r = parse_request(RequestKind::Json, body.as_bytes(), 64).unwrap();
        let out = encode_response(&r, &[result()], &negotiate(None, JSON).unwrap()).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap()["img_id"], 7);
    }

    #[test]
    fn jsonlines_in_and_out() {
        let body = format!(
            "{{\"b64\": \"{}\"}}\n\n\"{}\"\r\n{{\"img_id\": \"a\", \"img_data\": \"{}\"}}\n",
            b64(b"1"),
            b64(b"2"),
            b64(b"3")
        );
        let r = parse_request(RequestKind::JsonLines, body.as_bytes(), 64).unwrap();
        assert_eq!(r.instances.len(), 3);
        let lines_fmt = negotiate(Some("application/jsonlines"), JSON).unwrap();
        let out = encode_response(&r, &[result(), result(), result()], &lines_fmt).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            serde_json::from_str::<Value>(lines[2]).unwrap()["img_id"],
            "a"
        );
        // JSON asked for: one document.
        let out = encode_response(
            &r,
            &[result(), result(), result()],
            &negotiate(None, JSON).unwrap(),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["predictions"].as_array().unwrap().len(), 3);
        // A bad line names itself.
        let e = parse_request(RequestKind::JsonLines, b"\"AAAA\"\n{oops\n", 64).unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert!(e.message.contains("line 2"), "{}", e.message);
    }

    #[test]
    fn client_errors_are_400() {
        let cases: Vec<(RequestKind, Vec<u8>, &str)> = vec![
            (RequestKind::Json, b"{not json".to_vec(), "invalid JSON"),
            (RequestKind::Json, b"   ".to_vec(), "empty"),
            (RequestKind::Image, Vec::new(), "empty"),
            (
                RequestKind::Json,
                br#"{"instances": [{"b64": "@@@"}]}"#.to_vec(),
                "base64",
            ),
            (
                RequestKind::Json,
                br#"{"instances": [], "x": 1}"#.to_vec(),
                "empty",
            ),
            (
                RequestKind::Json,
                br#"{"instances": {"b64": "AAAA"}}"#.to_vec(),
                "list",
            ),
            (
                RequestKind::Json,
                br#"{"instances": ["AAAA"], "inputs": "AAAA"}"#.to_vec(),
                "both",
            ),
            (
                RequestKind::Json,
                br#"{"foo": 1, "bar": 2}"#.to_vec(),
                "expected",
            ),
            (
                RequestKind::Json,
                br#"{"instances": [42]}"#.to_vec(),
                "instances[0]",
            ),
            (
                RequestKind::Json,
                br#"{"img_id": 1, "img_data": 5}"#.to_vec(),
                "img_data",
            ),
            (
                RequestKind::Json,
                br#"{"instances": ["AAAA"], "score_threshold": 2}"#.to_vec(),
                "score_threshold",
            ),
            (
                RequestKind::Json,
                br#"{"img_data": "AAAA", "max_detections": "many"}"#.to_vec(),
                "max_detections",
            ),
            (RequestKind::Json, b"12".to_vec(), "expected"),
        ];
        for (kind, body, needle) in cases {
            let e = parse_request(kind, &body, 64).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{}", String::from_utf8_lossy(&body));
            assert!(e.message.contains(needle), "{:?} lacks {needle}", e.message);
        }
    }

    #[test]
    fn instance_limit_and_nesting() {
        let many = format!(
            r#"{{"instances": [{}]}}"#,
            vec!["\"AAAA\""; 10_000].join(",")
        );
        let e = parse_request(RequestKind::Json, many.as_bytes(), 64).unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert!(e.message.contains("at most 64"), "{}", e.message);
        let lines = "\"AAAA\"\n".repeat(65);
        let e = parse_request(RequestKind::JsonLines, lines.as_bytes(), 64).unwrap_err();
        assert!(e.message.contains("at most 64"), "{}", e.message);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse_request(RequestKind::Json, deep.as_bytes(), 64).unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert!(e.message.contains("recursion"), "{}", e.message);
    }

    #[test]
    fn raw_single_result_shape() {
        let r = parse_request(RequestKind::Image, b"\x89PNG....", 64).unwrap();
        assert_eq!(r.instances[0].image, b"\x89PNG....");
        let v: Value = serde_json::from_slice(
            &encode_response(&r, &[result()], &negotiate(None, JSON).unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(v["height"], 10);
        assert_eq!(
            v["detections"][0]["box"],
            serde_json::json!([1.0, 2.0, 5.0, 8.0])
        );
    }
}
