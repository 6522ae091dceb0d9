//! Request parsing of `/invocations` (src/server/request/, src/server/response.rs): content-type
//! classification, content negotiation on Accept, custom attributes, and every body form (raw
//! image, JSON envelopes, JSON Lines, base64 variants), then encoding a response for what was
//! parsed.
//!
//! Input layout: `content-type \n accept \n custom-attributes \n body` (missing parts empty).
//! Invariants: nothing panics; options that parse also pass the pipeline's validation; the
//! number of instances respects the limit; the encoded response is valid JSON (Lines).

#![no_main]

use libfuzzer_sys::fuzz_target;
use maskserve::server::request::negotiation::{
    accept_is_wildcard, media_type_essence, negotiate, request_kind,
};
use maskserve::server::request::options::{debug_panic_requested, parse_custom_attributes};
use maskserve::server::request::parse::decode_base64;
use maskserve::server::request::{parse_request, RequestKind};
use maskserve::server::response::encode_response;
use maskserve::types::{Detection, ImageResult, Rle, StageTimings};

const MAX_INSTANCES: usize = 8;

fn fake_result(i: usize) -> ImageResult {
    ImageResult {
        width: 4 + i as u32,
        height: 3,
        detections: vec![Detection {
            class_id: 1,
            class_name: "thing".into(),
            score: 0.5,
            bbox: [0.0, 0.0, 2.0, 2.0],
            mask: Some(Rle {
                size: [3, 4 + i as u32],
                counts: "0".into(),
            }),
            polygons: None,
            mask_png: None,
        }],
        timings: StageTimings::default(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == b'\n');
    let ct = String::from_utf8_lossy(parts.next().unwrap_or(b""));
    let accept = String::from_utf8_lossy(parts.next().unwrap_or(b""));
    let attrs = String::from_utf8_lossy(parts.next().unwrap_or(b""));
    let body = parts.next().unwrap_or(b"");

    let _ = media_type_essence(&ct);
    let _ = accept_is_wildcard(Some(&accept));
    let _ = debug_panic_requested(&attrs);
    let header = parse_custom_attributes(&attrs);
    let format = negotiate(Some(&accept), "application/json");
    if let Ok(f) = &format {
        assert!(f.content_type.is_ascii() && !f.content_type.is_empty());
    }
    let _ = decode_base64(&String::from_utf8_lossy(body));

    // The declared type, the sniffed type, and each kind forced.
    let mut kinds = Vec::new();
    if let Ok(k) = request_kind(Some(&ct), body) {
        kinds.push(k);
    }
    if let Ok(k) = request_kind(None, body) {
        kinds.push(k);
    }
    kinds.extend([RequestKind::Json, RequestKind::JsonLines]);
    kinds.dedup();
    for kind in kinds {
        let Ok(req) = parse_request(kind, body, MAX_INSTANCES) else {
            continue;
        };
        assert!(!req.instances.is_empty() && req.instances.len() <= MAX_INSTANCES);
        for i in 0..req.instances.len() {
            let o = req.options_for(i, &header);
            assert!(
                maskserve::pipeline::validate(&o).is_ok(),
                "parsed options fail validation: {o:?}"
            );
            assert!(!o.debug_panic);
            assert!(!req.instances[i].image.is_empty());
        }
        let results: Vec<ImageResult> = (0..req.instances.len()).map(fake_result).collect();
        let formats = [
            format.clone().ok(),
            negotiate(Some("application/jsonlines"), "application/json").ok(),
        ];
        for f in formats.into_iter().flatten() {
            let out = encode_response(&req, &results, &f).expect("encoding cannot fail");
            if f.lines {
                for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    serde_json::from_slice::<serde_json::Value>(line).expect("JSON line");
                }
            } else {
                serde_json::from_slice::<serde_json::Value>(&out).expect("JSON body");
            }
        }
    }
});
