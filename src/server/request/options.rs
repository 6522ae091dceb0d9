//! Per-request options: overrides of the pipeline's defaults from the
//! `X-Amzn-SageMaker-Custom-Attributes` header (lenient: bad values are ignored) or from a
//! JSON body (strict: bad values are a 400).

use serde_json::{Map, Value};

use crate::server::error::ApiError;
use crate::types::{MaskFormat, PredictOptions};

/// Per-request option overrides; `None` leaves the lower layer's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OptionOverrides {
    pub score_threshold: Option<f32>,
    pub mask_threshold: Option<f32>,
    pub max_detections: Option<usize>,
    pub mask_format: Option<MaskFormat>,
    pub tile_size: Option<usize>,
    pub tile_overlap: Option<usize>,
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
        if let Some(v) = self.tile_size {
            base.tile_size = Some(v);
        }
        if let Some(v) = self.tile_overlap {
            base.tile_overlap = Some(v);
        }
    }

    /// Layers `self` over another override set (for `parameters` over top-level keys).
    pub(super) fn apply_over(&self, base: &mut OptionOverrides) {
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
        if self.tile_size.is_some() {
            base.tile_size = self.tile_size;
        }
        if self.tile_overlap.is_some() {
            base.tile_overlap = self.tile_overlap;
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
    TileSize,
    TileOverlap,
}

/// Largest tile side: far above any model's input size.
const MAX_TILE: usize = 16_384;

fn option_key(key: &str) -> Option<OptKey> {
    match key.trim().to_ascii_lowercase().replace('-', "_").as_str() {
        "score_threshold" | "score_thresh" | "min_score" => Some(OptKey::Score),
        "mask_threshold" | "mask_thresh" => Some(OptKey::Mask),
        "max_detections" | "max_dets" | "detections_per_img" => Some(OptKey::MaxDet),
        "mask_format" => Some(OptKey::Format),
        "tile_size" => Some(OptKey::TileSize),
        "tile_overlap" => Some(OptKey::TileOverlap),
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

/// A tile side: 0 (no tiling) or 32..=16384 pixels.
fn parse_tile_size(s: &str) -> Option<usize> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|v| *v == 0 || (32..=MAX_TILE).contains(v))
}

fn parse_tile_overlap(s: &str) -> Option<usize> {
    s.trim().parse::<usize>().ok().filter(|v| *v < MAX_TILE)
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

/// The options read from `X-Amzn-SageMaker-Custom-Attributes`, and what became of each of
/// our keys (for the response's header of the same name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomAttributes {
    pub overrides: OptionOverrides,
    /// `key=value` of each option applied, in canonical spelling.
    pub applied: Vec<String>,
    /// Our keys whose values were invalid and therefore not applied.
    pub invalid: Vec<String>,
}

/// Longest custom-attributes value InvokeEndpoint carries.
const MAX_ATTRIBUTES: usize = 1024;

impl CustomAttributes {
    /// The response's `X-Amzn-SageMaker-Custom-Attributes`: the options applied and our keys
    /// that were not (`invalid=a|b`); `None` when there is nothing to say.
    pub fn reply(&self) -> Option<String> {
        let mut parts = self.applied.clone();
        if !self.invalid.is_empty() {
            parts.push(format!("invalid={}", self.invalid.join("|")));
        }
        if parts.is_empty() {
            return None;
        }
        let mut s = parts.join(",");
        // Every byte is ASCII (our key names and canonical numbers): cutting is safe.
        s.truncate(MAX_ATTRIBUTES);
        Some(s)
    }
}

/// Parses `X-Amzn-SageMaker-Custom-Attributes`: `key=value` pairs separated by `,` or `;`.
/// Never fails: SageMaker forwards this header verbatim and it may carry other tools' keys
/// (`tfs-model-name=…`, a trace id), so unknown keys are left alone and invalid values of
/// ours are not applied (and named in [`CustomAttributes::invalid`]).
pub fn read_custom_attributes(header: &str) -> CustomAttributes {
    let mut out = CustomAttributes::default();
    for pair in header.split([',', ';']) {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        let Some(k) = option_key(key) else { continue };
        let o = &mut out.overrides;
        // Each value is parsed once: applied when valid, named in `invalid` otherwise.
        let (name, applied) = match k {
            OptKey::Score => {
                let v = parse_threshold(value);
                o.score_threshold = v.or(o.score_threshold);
                ("score_threshold", v.map(|v| v.to_string()))
            }
            OptKey::Mask => {
                let v = parse_threshold(value);
                o.mask_threshold = v.or(o.mask_threshold);
                ("mask_threshold", v.map(|v| v.to_string()))
            }
            OptKey::MaxDet => {
                let v = parse_max_detections(value);
                o.max_detections = v.or(o.max_detections);
                ("max_detections", v.map(|v| v.to_string()))
            }
            OptKey::Format => {
                let v = parse_mask_format(value);
                o.mask_format = v.or(o.mask_format);
                ("mask_format", v.map(|f| mask_format_name(f).to_string()))
            }
            OptKey::TileSize => {
                let v = parse_tile_size(value);
                o.tile_size = v.or(o.tile_size);
                ("tile_size", v.map(|v| v.to_string()))
            }
            OptKey::TileOverlap => {
                let v = parse_tile_overlap(value);
                o.tile_overlap = v.or(o.tile_overlap);
                ("tile_overlap", v.map(|v| v.to_string()))
            }
        };
        match applied {
            Some(v) => {
                out.applied.retain(|a| !a.starts_with(&format!("{name}=")));
                out.applied.push(format!("{name}={v}"));
            }
            None if !out.invalid.iter().any(|i| i == name) => out.invalid.push(name.into()),
            None => {}
        }
    }
    out
}

fn mask_format_name(f: MaskFormat) -> &'static str {
    match f {
        MaskFormat::Rle => "rle",
        MaskFormat::Polygon => "polygon",
        MaskFormat::Png => "png",
        MaskFormat::None => "none",
    }
}

/// The option overrides of `X-Amzn-SageMaker-Custom-Attributes` (see [`read_custom_attributes`]).
pub fn parse_custom_attributes(header: &str) -> OptionOverrides {
    read_custom_attributes(header).overrides
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
pub(super) fn options_from_json(
    obj: &Map<String, Value>,
    what: &str,
) -> Result<OptionOverrides, ApiError> {
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
            OptKey::TileSize => {
                out.tile_size = Some(
                    parse_tile_size(&text)
                        .ok_or_else(|| bad("0 (no tiling) or an integer in [32, 16384]"))?,
                )
            }
            OptKey::TileOverlap => {
                out.tile_overlap =
                    Some(parse_tile_overlap(&text).ok_or_else(|| bad("an integer in [0, 16384)"))?)
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_panic_attribute() {
        assert!(debug_panic_requested("a=b, debug_panic=1"));
        assert!(debug_panic_requested("DEBUG_PANIC = true"));
        assert!(!debug_panic_requested("debug_panic=2;x=1"));
        assert!(!debug_panic_requested("debug_panic"));
        assert!(!debug_panic_requested(""));
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
    fn custom_attributes_reply_says_what_was_applied() {
        let a = read_custom_attributes(
            "Trace ID: 7, min_score=0.25, max_dets=abc, mask_format=PNG, score_threshold=0.5",
        );
        assert_eq!(a.overrides.score_threshold, Some(0.5));
        assert_eq!(
            a.reply().as_deref(),
            Some("mask_format=png,score_threshold=0.5,invalid=max_detections")
        );
        assert_eq!(read_custom_attributes("Trace ID: 7").reply(), None);
        assert_eq!(
            read_custom_attributes("score_threshold=2")
                .reply()
                .as_deref(),
            Some("invalid=score_threshold")
        );
    }
}
