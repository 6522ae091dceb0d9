//! Media types of `/invocations`: classifying a request body from its `Content-Type`, and
//! choosing the response encoding from `Accept`.

use super::RequestKind;
use crate::server::error::ApiError;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
