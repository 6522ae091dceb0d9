//! Request parsing for `/invocations`: pure functions, no I/O. The response side (shaping
//! results after the request's envelope) is [`super::response`].
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
//!
//! - [`negotiation`]: `Content-Type` classification and `Accept` negotiation;
//! - [`options`]: per-request option overrides, from the header or a JSON body;
//! - [`parse`]: base64 and the JSON / JSON Lines body forms.

pub mod negotiation;
pub mod options;
pub mod parse;

use serde_json::Value;

use self::options::OptionOverrides;
use crate::server::error::ApiError;
use crate::types::PredictOptions;

/// What the body of a request is, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Image,
    Json,
    JsonLines,
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

/// [`parse_request`] on an owned body: a raw image body becomes the instance as it is, so a
/// large image (asynchronous inference takes up to 1 GB) is held once, not copied.
pub fn parse_body(
    kind: RequestKind,
    body: Vec<u8>,
    max_instances: usize,
) -> Result<ParsedRequest, ApiError> {
    if kind != RequestKind::Image || body.iter().all(|b| b.is_ascii_whitespace()) {
        return parse_request(kind, &body, max_instances);
    }
    Ok(ParsedRequest {
        envelope: Envelope::Single,
        instances: vec![Instance {
            image: body,
            kind: InstanceKind::Plain,
            options: OptionOverrides::default(),
        }],
        options: OptionOverrides::default(),
    })
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
        RequestKind::Json => parse::parse_json_request(body, max_instances),
        RequestKind::JsonLines => parse::parse_json_lines(body, max_instances),
    }
}
