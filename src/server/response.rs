//! Response encoding for `/invocations`: the results of a [`ParsedRequest`], shaped after
//! its envelope (see [`super::request`]) in the negotiated format. Pure functions, no I/O.

use serde_json::{Map, Value};

use super::error::ApiError;
use super::request::negotiation::ResponseFormat;
use super::request::{Envelope, InstanceKind, ParsedRequest};
use crate::types::ImageResult;

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
    use crate::server::request::negotiation::{negotiate, JSON};
    use crate::server::request::options::{parse_custom_attributes, OptionOverrides};
    use crate::server::request::{parse_request, RequestKind};
    use crate::types::{Detection, MaskFormat, Rle, StageTimings};
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;

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
