//! The body forms of `/invocations` past the raw image: base64 as clients send it, one
//! instance and lists of them, the JSON envelopes (`instances`, `inputs`, seed, bare), and
//! JSON Lines.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde_json::{Map, Value};

use super::options::{options_from_json, OptionOverrides};
use super::{Envelope, Instance, InstanceKind, ParsedRequest};
use crate::server::error::ApiError;

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

/// A JSON Lines body: one instance per non-empty line, at most `max_instances` of them.
pub(super) fn parse_json_lines(
    body: &[u8],
    max_instances: usize,
) -> Result<ParsedRequest, ApiError> {
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

/// A JSON body: an object (one of the envelopes), a top-level list of instances, or a bare
/// base64 string.
pub(super) fn parse_json_request(
    body: &[u8],
    max_instances: usize,
) -> Result<ParsedRequest, ApiError> {
    let v = parse_json_value(body, "body")?;
    match &v {
        Value::Object(o) => parse_json_object(&v, o, max_instances),
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

/// A JSON object body (`body` is `o` as a value): its request-level options (top-level keys,
/// `parameters` over them), then the envelope its keys name.
fn parse_json_object(
    body: &Value,
    o: &Map<String, Value>,
    max_instances: usize,
) -> Result<ParsedRequest, ApiError> {
    let mut options = options_from_json(o, "body")?;
    if let Some(Value::Object(p)) = o.get("parameters") {
        options_from_json(p, "parameters")?.apply_over(&mut options);
    }
    match (o.get("instances"), o.get("inputs")) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "body has both \"instances\" and \"inputs\"; send one of them",
        )),
        (Some(instances), None) => parse_instances_envelope(instances, options, max_instances),
        (None, Some(inputs)) => parse_inputs_envelope(inputs, options, max_instances),
        (None, None) if o.contains_key("img_data") || o.contains_key("b64") => {
            let inst = parse_instance(body, "body")?;
            Ok(ParsedRequest {
                envelope: Envelope::Single,
                instances: vec![inst],
                // The seed object's own options are already in the instance.
                options: if o.contains_key("img_data") {
                    OptionOverrides::default()
                } else {
                    options
                },
            })
        }
        (None, None) => Err(ApiError::bad_request(
            "expected {\"instances\": […]}, {\"inputs\": …}, {\"img_id\": …, \"img_data\": \"…\"} \
             or {\"b64\": \"…\"}",
        )),
    }
}

/// TF-Serving's row form, `{"instances": [i, …]}`.
fn parse_instances_envelope(
    instances: &Value,
    options: OptionOverrides,
    max_instances: usize,
) -> Result<ParsedRequest, ApiError> {
    let Value::Array(items) = instances else {
        return Err(ApiError::bad_request("\"instances\" must be a list"));
    };
    Ok(ParsedRequest {
        envelope: Envelope::Instances,
        instances: parse_list(items, max_instances, "instances")?,
        options,
    })
}

/// TF-Serving's columnar form, `{"inputs": i | [i, …]}`; a one-key object holding a list
/// (`{"inputs": {"image_bytes": [ … ]}}`) is a named batched input.
fn parse_inputs_envelope(
    inputs: &Value,
    options: OptionOverrides,
    max_instances: usize,
) -> Result<ParsedRequest, ApiError> {
    let batch = match inputs {
        Value::Array(items) => Some(items),
        Value::Object(named) if named.len() == 1 && !named.contains_key("b64") => {
            match named.values().next() {
                Some(Value::Array(items)) => Some(items),
                _ => None,
            }
        }
        _ => None,
    };
    let (batched, instances) = match batch {
        Some(items) => (true, parse_list(items, max_instances, "inputs")?),
        None => (false, vec![parse_instance(inputs, "inputs")?]),
    };
    Ok(ParsedRequest {
        envelope: Envelope::Inputs { batched },
        instances,
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{parse_request, RequestKind};
    use super::*;
    use base64::engine::general_purpose::STANDARD;

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
}
