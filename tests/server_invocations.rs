//! `/invocations` over real HTTP against the real binary: content types, TF-Serving and seed
//! JSON, JSON Lines, Accept, custom attributes, every error status, body limits, request ids,
//! `/execution-parameters` and `/metrics`.
#![cfg(feature = "ort")]

mod server_support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use server_support::{b64, request, sample_images, Server};

const READY: Duration = Duration::from_secs(120);
const MIB: usize = 1 << 20;

fn ready_server(model: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut s = Server::start(Some(model), args, env);
    s.wait_ready(READY);
    s
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-3
}

#[test]
fn content_types_formats_accept_and_options() {
    let model = model_or_skip!();
    let images = sample_images(&model);
    let png = &images[0];
    let s = ready_server(&model, &[], &[]);

    // Raw image bytes under every accepted content type give the same result.
    let base = s.post("image/png", png, &[]);
    assert_eq!(base.status, 200, "{}", base.text());
    assert_eq!(base.header("content-type"), Some("application/json"));
    let plain = base.json();
    let decoded = image::load_from_memory(png).expect("sample decodes");
    assert_eq!(plain["width"], decoded.width());
    assert_eq!(plain["height"], decoded.height());
    assert!(plain["detections"].is_array());
    for ct in [
        "image/png; charset=binary",
        "application/x-image",
        "application/octet-stream",
        "IMAGE/PNG",
    ] {
        let r = s.post(ct, png, &[]);
        assert_eq!(r.status, 200, "{ct}: {}", r.text());
        assert_eq!(r.json(), plain, "{ct}");
    }
    // No Content-Type at all: sniffed.
    let r = request(s.port, "POST", "/invocations", &[], png).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), plain);
    // JPEG.
    let jpeg = server_support::encode(&decoded, image::ImageFormat::Jpeg);
    let r = s.post("image/jpeg", &jpeg, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["width"], decoded.width());

    // TF-Serving row form: {"b64"} and bare strings, order kept.
    let other = images.get(1).unwrap_or(png);
    let other_plain = s.post("image/png", other, &[]).json();
    let body =
        json!({"instances": [{"b64": b64(png)}, b64(other), {"image_bytes": {"b64": b64(png)}}]});
    let r = s.post("application/json", body.to_string().as_bytes(), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let preds = r.json()["predictions"]
        .as_array()
        .cloned()
        .expect("predictions");
    assert_eq!(
        preds,
        vec![plain.clone(), other_plain.clone(), plain.clone()]
    );

    // TF-Serving columnar form.
    let body = json!({"inputs": {"b64": b64(png)}});
    let r = s.post(
        "application/json; charset=utf-8",
        body.to_string().as_bytes(),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"outputs": plain}));
    let body = json!({"inputs": [b64(other), {"b64": b64(png)}]});
    let r = s.post("application/json", body.to_string().as_bytes(), &[]);
    assert_eq!(r.json(), json!({"outputs": [other_plain, plain]}));

    // The seed container's form: img_id echoed (never used as a path), COCO annotations.
    let body = json!({"img_id": "../../tmp/x.png", "img_data": b64(png), "score_threshold": 0.0, "mask_threshold": 0.5});
    let r = s.post("application/json", body.to_string().as_bytes(), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let seed = r.json();
    assert_eq!(seed["img_id"], "../../tmp/x.png");
    let anns = seed["annotations"].as_array().expect("annotations");
    let base_opts = s.post(
        "application/json",
        json!({"b64": b64(png), "score_threshold": 0.0, "mask_threshold": 0.5})
            .to_string()
            .as_bytes(),
        &[],
    );
    assert_eq!(base_opts.status, 200, "{}", base_opts.text());
    let dets = base_opts.json()["detections"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(anns.len(), dets.len());
    for (a, d) in anns.iter().zip(&dets) {
        let b: Vec<f64> = d["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let bb: Vec<f64> = a["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(close(bb[0], b[0]) && close(bb[1], b[1]), "{a} vs {d}");
        assert!(
            close(bb[2], b[2] - b[0]) && close(bb[3], b[3] - b[1]),
            "{a} vs {d}"
        );
        assert_eq!(a["category_id"], d["class_id"]);
        assert_eq!(a["category_name"], d["class_name"]);
        assert_eq!(a["score"], d["score"]);
        assert_eq!(a["segmentation"], d["mask"]);
        assert!(a["segmentation"]["counts"].is_string());
        assert_eq!(
            a["segmentation"]["size"],
            json!([plain["height"], plain["width"]])
        );
    }

    // JSON Lines in; JSON Lines or JSON out.
    let body = format!(
        "{}\n\n{}\n",
        json!({"b64": b64(png)}),
        json!({"img_id": 7, "img_data": b64(other)})
    );
    let r = s.post(
        "application/jsonlines",
        body.as_bytes(),
        &[("Accept", "application/jsonlines")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/jsonlines"));
    let text = r.text();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], plain);
    assert_eq!(lines[1]["img_id"], 7);
    let r = s.post("application/jsonlines", body.as_bytes(), &[]);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["predictions"].as_array().map(Vec::len), Some(2));

    // Accept negotiation.
    for (accept, ct) in [
        ("*/*", "application/json"),
        ("application/json", "application/json"),
        ("application/*", "application/json"),
        (
            "text/html;q=0.9, application/jsonlines;q=0.5",
            "application/jsonlines",
        ),
        ("application/jsonlines", "application/jsonlines"),
    ] {
        let r = s.post("image/png", png, &[("Accept", accept)]);
        assert_eq!(r.status, 200, "{accept}: {}", r.text());
        assert_eq!(r.header("content-type"), Some(ct), "{accept}");
    }
    let r = s.post("image/png", png, &[("Accept", "application/jsonlines")]);
    assert_eq!(r.text().lines().count(), 1);
    for accept in ["text/csv", "image/png", "application/json;q=0"] {
        let msg = s
            .post("image/png", png, &[("Accept", accept)])
            .assert_error(406);
        assert!(msg.contains("Not Acceptable"), "{msg}");
    }

    // Custom attributes: options, and junk that never causes an error.
    let r = s.post(
        "image/png",
        png,
        &[(
            "X-Amzn-SageMaker-Custom-Attributes",
            "max_detections=1,mask_format=none,score_threshold=0",
        )],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The response's custom attributes say what was applied, in canonical spelling.
    assert_eq!(
        r.header("x-amzn-sagemaker-custom-attributes"),
        Some("max_detections=1,mask_format=none,score_threshold=0")
    );
    let few = r.json()["detections"].as_array().cloned().unwrap();
    assert!(few.len() <= 1);
    assert_eq!(few.len(), dets.len().min(1));
    assert!(few.iter().all(|d| d.get("mask").is_none()), "{few:?}");
    let junk = format!("Trace ID: {}", "x".repeat(1024 - 10));
    assert_eq!(junk.len(), 1024);
    for attr in [
        junk.as_str(),
        "score_threshold=banana,max_detections=-3",
        "tfs-model-name=m,,==;",
    ] {
        let r = s.post(
            "image/png",
            png,
            &[
                ("X-Amzn-SageMaker-Custom-Attributes", attr),
                ("X-Amzn-SageMaker-Target-Variant", "v1"),
                ("X-Amzn-SageMaker-Inference-Id", "abc"),
                ("X-Something-Unknown", "1"),
            ],
        );
        assert_eq!(r.status, 200, "{attr}: {}", r.text());
        assert_eq!(r.json(), plain, "{attr}");
        // Other tools' keys get no reply; ours that were invalid are named.
        let reply = r.header("x-amzn-sagemaker-custom-attributes");
        if attr.starts_with("score_threshold=banana") {
            assert_eq!(reply, Some("invalid=score_threshold|max_detections"));
        } else {
            assert_eq!(reply, None, "{attr}");
        }
    }
    // Options in the body win over the header.
    let body = json!({"instances": [b64(png)], "max_detections": 2, "mask_format": "polygon"});
    let r = s.post(
        "application/json",
        body.to_string().as_bytes(),
        &[("X-Amzn-SageMaker-Custom-Attributes", "max_detections=1")],
    );
    let d = r.json()["predictions"][0]["detections"]
        .as_array()
        .cloned()
        .unwrap();
    assert!(d.len() <= 2);
    assert!(d.iter().all(|d| d.get("polygons").is_some()), "{d:?}");
}

#[test]
fn errors_limits_ids_and_side_routes() {
    let model = model_or_skip!();
    let png = sample_images(&model).remove(0);
    let s = ready_server(&model, &[], &[]);

    // 400s.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "application/json",
            b"{\"instances\": [".to_vec(),
            "invalid JSON",
        ),
        (
            "application/json",
            br#"{"instances": [{"b64": "%%%not base64%%%"}]}"#.to_vec(),
            "base64",
        ),
        (
            "application/json",
            br#"{"instances": ["AAAA"], "inputs": ["AAAA"]}"#.to_vec(),
            "both",
        ),
        (
            "application/json",
            br#"{"hello": "world"}"#.to_vec(),
            "expected",
        ),
        (
            "application/json",
            br#"{"instances": [{"b64": 5}]}"#.to_vec(),
            "instances[0]",
        ),
        (
            "application/json",
            br#"{"img_id": 1, "img_data": "AAAA", "score_threshold": 3}"#.to_vec(),
            "score_threshold",
        ),
        ("image/png", b"this is not an image".to_vec(), "image"),
        (
            "application/json",
            format!("{{\"b64\": \"{}\"}}", b64(b"GIF89a garbage")).into_bytes(),
            "image",
        ),
        (
            "application/jsonlines",
            b"\"AAAA\"\nnot json\n".to_vec(),
            "line 2",
        ),
        ("application/json", Vec::new(), "empty"),
    ];
    for (ct, body, needle) in &cases {
        let msg = s.post(ct, body, &[]).assert_error(400);
        assert!(
            msg.contains(needle),
            "{ct} {:?}: {msg}",
            String::from_utf8_lossy(body)
        );
    }
    // An instance list far over the limit is refused before any work.
    let many = format!(
        "{{\"instances\": [{}]}}",
        vec!["\"AAAA\""; 10_000].join(",")
    );
    let t0 = Instant::now();
    let msg = s
        .post("application/json", many.as_bytes(), &[])
        .assert_error(400);
    assert!(msg.contains("at most 64"), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Deep nesting is a clean 400, not a crash.
    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    let msg = s
        .post("application/json", deep.as_bytes(), &[])
        .assert_error(400);
    assert!(msg.contains("recursion"), "{msg}");
    // 415.
    for ct in [
        "text/csv",
        "application/xml",
        "multipart/form-data; boundary=x",
    ] {
        let msg = s.post(ct, b"1,2,3", &[]).assert_error(415);
        assert!(msg.contains("Unsupported Media Type"), "{msg}");
    }
    // actix's own errors are JSON too.
    request(s.port, "GET", "/nope", &[], b"")
        .unwrap()
        .assert_error(404);
    request(s.port, "GET", "/invocations", &[], b"")
        .unwrap()
        .assert_error(405);
    request(s.port, "POST", "/ping", &[], b"x")
        .unwrap()
        .assert_error(405);
    let r = request(
        s.port,
        "POST",
        "/invocations",
        &[
            ("Content-Type", "image/png"),
            ("Transfer-Encoding", "chunked"),
        ],
        b"zz\r\nbroken",
    )
    .unwrap();
    assert!(r.status >= 400, "{}", r.status);

    // Body limit: exactly 6 MiB accepted, one byte more is 413.
    let padded = |len: usize| {
        let mut b = json!({"instances": [b64(&png)]}).to_string().into_bytes();
        assert!(b.len() < len);
        b.resize(len, b' ');
        b
    };
    let r = s.post("application/json", &padded(6 * MIB), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let msg = s
        .post("application/json", &padded(6 * MIB + 1), &[])
        .assert_error(413);
    assert!(msg.contains("6291456"), "{msg}");
    let mut big_png = png.clone();
    big_png.resize(6 * MIB + 1, 0);
    s.post("image/png", &big_png, &[]).assert_error(413);
    // Way over the limit: still a 413, not a dropped connection.
    let huge = vec![b' '; 30 * MIB];
    s.post("application/json", &huge, &[]).assert_error(413);

    // Request ids: taken from the caller, else generated; always echoed.
    let r = s.post("image/png", &png, &[("X-Request-Id", "req-123")]);
    assert_eq!(r.header("x-request-id"), Some("req-123"));
    let r = request(
        s.port,
        "GET",
        "/ping",
        &[("X-Amzn-RequestId", "amzn-9")],
        b"",
    )
    .unwrap();
    assert_eq!(r.header("x-request-id"), Some("amzn-9"));
    let r = s.post("text/csv", b"1", &[]);
    let generated = r.header("x-request-id").expect("generated id").to_string();
    assert_eq!(generated.len(), 36, "{generated}");
    assert_ne!(
        s.get("/ping").header("x-request-id"),
        Some(generated.as_str())
    );

    // /execution-parameters.
    let r = s.get("/execution-parameters");
    assert_eq!(r.status, 200);
    let p = r.json();
    let mct = p["MaxConcurrentTransforms"].as_u64().expect("int");
    let mb = p["MaxPayloadInMB"].as_u64().expect("int");
    assert!(["MULTI_RECORD", "SINGLE_RECORD"].contains(&p["BatchStrategy"].as_str().unwrap()));
    assert_eq!(mb, 6);
    assert!(mct >= 1 && mct * mb <= 100, "{p}");

    // /metrics.
    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let m = r.text();
    for needle in [
        "maskserve_http_requests_total{content_type=\"image/png\",route=\"/invocations\",status=\"200\"}",
        "maskserve_http_requests_total{content_type=\"application/json\",route=\"/invocations\",status=\"400\"}",
        "status=\"413\"",
        "status=\"415\"",
        "route=\"other\",status=\"404\"",
        "maskserve_http_request_duration_seconds_bucket{route=\"/invocations\"",
        "maskserve_stage_duration_seconds_bucket{stage=\"backbone_rpn\"",
        "maskserve_stage_duration_seconds_bucket{stage=\"queue_wait\"",
        "maskserve_stage_duration_seconds_count{stage=\"parse\"}",
        "maskserve_inflight_requests ",
        "maskserve_queue_depth ",
        "maskserve_model_load_seconds ",
        "maskserve_model_ready 1",
        "maskserve_detections_per_image_bucket",
        "maskserve_execution_provider_info{provider=\"CPUExecutionProvider\"} 1",
    ] {
        assert!(m.contains(needle), "/metrics lacks {needle}:\n{m}");
    }
}

#[test]
fn payload_limit_follows_sagemaker_max_payload_in_mb() {
    let model = model_or_skip!();
    let png = sample_images(&model).remove(0);
    let s = ready_server(
        &model,
        &[],
        &[
            ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "1"),
            ("SAGEMAKER_BATCH", "true"),
            ("SAGEMAKER_BATCH_STRATEGY", "MULTI_RECORD"),
            ("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", "4"),
        ],
    );
    let mut body = json!({"instances": [b64(&png)]}).to_string().into_bytes();
    body.resize(MIB, b'\n');
    assert_eq!(s.post("application/json", &body, &[]).status, 200);
    body.push(b' ');
    s.post("application/json", &body, &[]).assert_error(413);
    let p = s.get("/execution-parameters").json();
    assert_eq!(
        p,
        json!({"MaxConcurrentTransforms": 4, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 1})
    );
    // Batch transform, MULTI_RECORD: one output line per input line, in order, even without
    // an Accept header.
    let lines: Vec<String> = (0..3)
        .map(|i| {
            json!({"img_id": i, "img_data": b64(&server_support::synthetic_png(i))}).to_string()
        })
        .collect();
    let r = s.post("application/jsonlines", lines.join("\n").as_bytes(), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/jsonlines"));
    let out: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        out.iter().map(|v| v["img_id"].clone()).collect::<Vec<_>>(),
        vec![json!(0), json!(1), json!(2)]
    );
}

#[test]
fn inference_failure_is_500() {
    let model = model_or_skip!();
    let png = sample_images(&model).remove(0);
    let s = ready_server(&model, &["--debug-fail-inference"], &[]);
    let msg = s.post("image/png", &png, &[]).assert_error(500);
    assert!(msg.contains("inference failed"), "{msg}");
    assert_eq!(s.get("/ping").status, 200);
    assert!(s.log().contains("inference failed"));
}

#[test]
fn deadline_is_504() {
    let model = model_or_skip!();
    let png = sample_images(&model).remove(0);
    let s = ready_server(
        &model,
        &["--debug-delay-ms", "3000"],
        &[("SAGEMAKER_MODEL_SERVER_TIMEOUT", "0.5")],
    );
    let t0 = Instant::now();
    let msg = s.post("image/png", &png, &[]).assert_error(504);
    let took = t0.elapsed();
    assert!(msg.contains("timeout"), "{msg}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(2500),
        "{took:?}"
    );
}

#[test]
fn full_queue_is_503_with_retry_after() {
    let model = model_or_skip!();
    let png = sample_images(&model).remove(0);
    let s = ready_server(
        &model,
        &[
            "--workers",
            "1",
            "--queue-size",
            "1",
            "--debug-delay-ms",
            "1500",
        ],
        &[],
    );
    let port = s.port;
    let handles: Vec<_> = (0..5)
        .map(|i| {
            let png = png.clone();
            std::thread::spawn(move || {
                // Stagger so the first request occupies the worker before the rest arrive.
                std::thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 600 }));
                request(
                    port,
                    "POST",
                    "/invocations",
                    &[("Content-Type", "image/png")],
                    &png,
                )
                .unwrap()
            })
        })
        .collect();
    let responses: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let busy: Vec<_> = responses.iter().filter(|r| r.status == 503).collect();
    assert_eq!(
        ok,
        2,
        "{:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(busy.len(), 3);
    for r in busy {
        let msg = r.assert_error(503);
        assert!(msg.contains("overloaded"), "{msg}");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
}

/// HTTP/1.1 pipelining: a request written right behind an /invocations body on the same
/// connection is answered too, after it, in order.
#[test]
fn pipelined_request_behind_an_invocation_is_answered_in_order() {
    use std::io::{Read, Write};
    let model = model_or_skip!();
    let png = sample_images(&model).remove(0);
    let s = ready_server(&model, &[], &[]);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let mut wire = format!(
        "POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        png.len()
    )
    .into_bytes();
    wire.extend_from_slice(&png);
    wire.extend_from_slice(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    c.write_all(&wire).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    let heads: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i..i + 12])
        .collect();
    assert_eq!(heads, ["HTTP/1.1 200", "HTTP/1.1 200"], "{text}");
    let first = text.find("\"detections\"").expect("the invocation's body");
    assert!(
        first < text.rfind("HTTP/1.1 200").unwrap(),
        "answers out of order"
    );
}

/// Request heads are capped (`--max-header-bytes`, 32 KiB): a 100 KB header gets a JSON 431, a
/// 20 KB one is served, and the server stays healthy.
#[test]
fn oversized_headers_are_431() {
    let model = model_or_skip!();
    let png = sample_images(&model).remove(0);
    let s = ready_server(&model, &[], &[]);
    let big = "a".repeat(100_000);
    let r = request(
        s.port,
        "POST",
        "/invocations",
        &[("Content-Type", "image/png"), ("X-Big", &big)],
        &png,
    )
    .unwrap();
    let msg = r.assert_error(431);
    assert!(msg.contains("exceed the limit of 32768 bytes"), "{msg}");
    let ok = "b".repeat(20_000);
    let r = request(
        s.port,
        "POST",
        "/invocations",
        &[
            ("Content-Type", "image/png"),
            ("X-Amzn-SageMaker-Unknown", &ok),
        ],
        &png,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.get("/ping").status, 200);
}
