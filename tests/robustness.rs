//! Hostile inputs against the real server (GitHub issue 7): whatever arrives, the answer is a
//! correct result or a JSON error with the right status, and `/ping` stays 200 afterwards.
//! Format support (served / 400 / 413 / 415) is documented in docs/robustness.md.
//!
//! One shared server runs the corpus, the panic-isolation and the slow-client checks in
//! sequence; the overload check has its own server with a tiny queue.
#![cfg(feature = "ort")]

mod server_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, Rgba};
use serde_json::Value;
use server_support::{b64, encode, request, sample_images, Response, Server};

/// Body limit of the shared server: small, so "just under / over the limit" bodies are quick.
const LIMIT: usize = 1 << 20;
/// Seconds a stalled body may idle before the 408.
const BODY_TIMEOUT_S: &str = "1";

/// What a case must get back.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// 200 with one result of this width × height.
    Served(u32, u32),
    /// 200 with some JSON result (dimensions not checked).
    ServedAny,
    /// This error status with a JSON `{"error"}` body.
    Error(u16),
}

struct Case {
    name: &'static str,
    /// `None`: no Content-Type header at all.
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    expect: Expect,
}

fn case(name: &'static str, ct: Option<&'static str>, body: Vec<u8>, expect: Expect) -> Case {
    Case {
        name,
        content_type: ct,
        headers: vec![],
        body,
        expect,
    }
}

fn rgb_image(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| {
        if (x / 16 + y / 16) % 2 == 0 {
            Rgb([200, 60, 40])
        } else {
            Rgb([30, 30, 30])
        }
    }))
}

fn jpeg(img: &DynamicImage, quality: u8) -> Vec<u8> {
    let mut v = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut v, quality)
        .encode_image(&img.to_rgb8())
        .expect("jpeg");
    v
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
}

/// A valid PNG signature + IHDR declaring `w × h` RGB, a few bytes of zlib data, IEND.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut png, b"IHDR", &ihdr);
    // zlib stream of a few zero bytes (a decoder that started would ask for far more).
    png_chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01],
    );
    png_chunk(&mut png, b"IEND", &[]);
    png
}

/// A real JPEG whose SOF0 header is patched to declare `w × h`.
fn jpeg_bomb(w: u16, h: u16) -> Vec<u8> {
    let mut v = jpeg(&rgb_image(64, 48), 80);
    let sof = v
        .windows(2)
        .position(|m| m == [0xff, 0xc0])
        .expect("SOF0 marker");
    // FFC0, length (2), precision (1), height (2), width (2).
    v[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    v[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    v
}

/// A GIF header whose logical screen and only image declare `w × h`.
fn gif_bomb(w: u16, h: u16) -> Vec<u8> {
    let mut g = b"GIF89a".to_vec();
    g.extend_from_slice(&w.to_le_bytes());
    g.extend_from_slice(&h.to_le_bytes());
    g.extend_from_slice(&[0x80, 0, 0]); // global colour table of 2 entries
    g.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    g.push(0x2c); // image descriptor
    g.extend_from_slice(&[0, 0, 0, 0]);
    g.extend_from_slice(&w.to_le_bytes());
    g.extend_from_slice(&h.to_le_bytes());
    g.push(0);
    g.extend_from_slice(&[2, 2, 0x4c, 0x01, 0]); // a tiny LZW stream
    g.push(0x3b);
    g
}

/// `jpeg` with an APP1 Exif segment (big-endian TIFF, one IFD entry: Orientation) after SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    tiff.extend_from_slice(&[0, 1]);
    tiff.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1]);
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xff, 0xe1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// `{"instances": [<b64 png>], "pad": "xxx…"}` of exactly `size` bytes.
fn json_of_size(png: &[u8], size: usize) -> Vec<u8> {
    let head = format!("{{\"instances\": [\"{}\"], \"pad\": \"", b64(png));
    let tail = "\"}";
    assert!(size > head.len() + tail.len());
    let mut v = head.into_bytes();
    v.resize(size - tail.len(), b'x');
    v.extend_from_slice(tail.as_bytes());
    assert_eq!(v.len(), size);
    v
}

fn corpus(sample: &[u8]) -> Vec<Case> {
    use Expect::*;
    let small = rgb_image(160, 120);
    let png = encode(&small, ImageFormat::Png);
    let jpg = jpeg(&small, 85);
    let mut cases = vec![
        // Empty and broken bodies.
        case("zero-byte body", Some("image/jpeg"), vec![], Error(400)),
        case("zero-byte body, no type", None, vec![], Error(400)),
        case(
            "zero-byte JSON",
            Some("application/json"),
            vec![],
            Error(400),
        ),
        case(
            "truncated PNG",
            Some("image/png"),
            png[..png.len() / 2].to_vec(),
            Error(400),
        ),
        case(
            "PNG signature only",
            Some("image/png"),
            png[..8].to_vec(),
            Error(400),
        ),
        // Pillow refuses a JPEG that ends before its last scanline; so does maskserve.
        case(
            "truncated JPEG",
            Some("image/jpeg"),
            jpg[..jpg.len() / 2].to_vec(),
            Error(400),
        ),
        case(
            "JPEG without its EOI marker",
            Some("image/jpeg"),
            jpg[..jpg.len() - 2].to_vec(),
            Error(400),
        ),
        case(
            "JPEG SOI + garbage",
            Some("image/jpeg"),
            [&[0xff, 0xd8, 0xff][..], &[0x5a; 300][..]].concat(),
            Error(400),
        ),
        case(
            "random bytes as image",
            Some("application/octet-stream"),
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
            Error(400),
        ),
        case(
            "HEIC-typed garbage",
            Some("image/heic"),
            b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00".to_vec(),
            Error(400),
        ),
        case(
            "SVG",
            Some("image/svg+xml"),
            b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>".to_vec(),
            Error(400),
        ),
        // Decompression bombs: refused from the header, before any pixel is allocated.
        case(
            "PNG declaring 100000x100000",
            Some("image/png"),
            png_bomb(100_000, 100_000),
            Error(413),
        ),
        case(
            "JPEG declaring 65000x65000",
            Some("image/jpeg"),
            jpeg_bomb(65_000, 65_000),
            Error(413),
        ),
        case(
            "GIF declaring 65535x65535",
            Some("image/gif"),
            gif_bomb(65_535, 65_535),
            Error(413),
        ),
        // Colour types and formats that are served.
        case(
            "CMYK JPEG",
            Some("image/jpeg"),
            include_bytes!("data/cmyk.jpg").to_vec(),
            Served(96, 64),
        ),
        case(
            "16-bit RGB PNG",
            Some("image/png"),
            encode(
                &DynamicImage::ImageRgb16(small.to_rgb16()),
                ImageFormat::Png,
            ),
            Served(160, 120),
        ),
        case(
            "16-bit gray+alpha PNG",
            Some("image/png"),
            encode(
                &DynamicImage::ImageLumaA16(ImageBuffer::from_pixel(50, 40, LumaA([40000, 65535]))),
                ImageFormat::Png,
            ),
            Served(50, 40),
        ),
        case(
            "grayscale PNG",
            Some("image/png"),
            encode(
                &DynamicImage::ImageLuma8(small.to_luma8()),
                ImageFormat::Png,
            ),
            Served(160, 120),
        ),
        case(
            "RGBA PNG",
            Some("image/png"),
            encode(
                &DynamicImage::ImageRgba8(ImageBuffer::from_pixel(70, 30, Rgba([9, 200, 9, 128]))),
                ImageFormat::Png,
            ),
            Served(70, 30),
        ),
        case(
            "GIF",
            Some("image/gif"),
            encode(&small, ImageFormat::Gif),
            Served(160, 120),
        ),
        case(
            "BMP",
            Some("image/bmp"),
            encode(&small, ImageFormat::Bmp),
            Served(160, 120),
        ),
        case(
            "TIFF",
            Some("image/tiff"),
            encode(&small, ImageFormat::Tiff),
            Served(160, 120),
        ),
        case(
            "WebP (lossless)",
            Some("image/webp"),
            encode(&small, ImageFormat::WebP),
            Served(160, 120),
        ),
        case(
            "JPEG with EXIF orientation 6",
            Some("image/jpeg"),
            with_exif_orientation(&jpg, 6),
            Served(120, 160),
        ),
        case(
            "JPEG with EXIF orientation 3",
            Some("image/jpeg"),
            with_exif_orientation(&jpg, 3),
            Served(160, 120),
        ),
        case(
            "JPEG with a broken EXIF block",
            Some("image/jpeg"),
            {
                let mut v = with_exif_orientation(&jpg, 6);
                v[12..20].copy_from_slice(b"XXXXXXXX");
                v
            },
            ServedAny,
        ),
        // Extreme shapes.
        case(
            "1x1 PNG",
            Some("image/png"),
            encode(
                &DynamicImage::ImageLuma8(ImageBuffer::from_pixel(1, 1, Luma([128]))),
                ImageFormat::Png,
            ),
            Served(1, 1),
        ),
        case(
            "10000x10 PNG",
            Some("image/png"),
            encode(&rgb_image(10_000, 10), ImageFormat::Png),
            Served(10_000, 10),
        ),
        case(
            "10x10000 PNG",
            Some("image/png"),
            encode(&rgb_image(10, 10_000), ImageFormat::Png),
            Served(10, 10_000),
        ),
        // JSON bodies.
        case(
            "invalid base64",
            Some("application/json"),
            br#"{"instances": ["!!!not base64***"]}"#.to_vec(),
            Error(400),
        ),
        case(
            "base64 of text",
            Some("application/json"),
            format!(r#"{{"instances": ["{}"]}}"#, b64(b"hello, world")).into_bytes(),
            Error(400),
        ),
        case(
            "deeply nested arrays",
            Some("application/json"),
            [vec![b'['; 200_000], vec![b']'; 200_000]].concat(),
            Error(400),
        ),
        case(
            "deeply nested objects",
            Some("application/json"),
            format!("{}1{}", r#"{"a":"#.repeat(50_000), "}".repeat(50_000)).into_bytes(),
            Error(400),
        ),
        case(
            "unterminated JSON",
            Some("application/json"),
            br#"{"instances": ["#.to_vec(),
            Error(400),
        ),
        case(
            "invalid UTF-8 in JSON",
            Some("application/json"),
            b"{\"instances\": [\"\xff\xfe\"]}".to_vec(),
            Error(400),
        ),
        case(
            "instances list of 10000 entries",
            Some("application/json"),
            format!(
                r#"{{"instances": [{}]}}"#,
                vec![format!("\"{}\"", b64(&png)); 10_000].join(",")
            )
            .into_bytes(),
            // 10000 × 1 kB of base64 is over the limit before it is over max_instances.
            Error(413),
        ),
        case(
            "instances list of 10000 tiny entries",
            Some("application/json"),
            format!(
                r#"{{"instances": [{}]}}"#,
                vec!["\"AAAA\""; 10_000].join(",")
            )
            .into_bytes(),
            Error(400),
        ),
        case(
            "empty instances",
            Some("application/json"),
            br#"{"instances": []}"#.to_vec(),
            Error(400),
        ),
        case(
            "instances not a list",
            Some("application/json"),
            br#"{"instances": {"b64": 3}}"#.to_vec(),
            Error(400),
        ),
        case(
            "score_threshold out of range",
            Some("application/json"),
            format!(
                r#"{{"instances": ["{}"], "score_threshold": 7}}"#,
                b64(&png)
            )
            .into_bytes(),
            Error(400),
        ),
        case(
            "JSON number as the body",
            Some("application/json"),
            b"12345".to_vec(),
            Error(400),
        ),
        case(
            "JSON Lines with one bad line",
            Some("application/jsonlines"),
            format!("\"{}\"\n{{not json\n", b64(&png)).into_bytes(),
            Error(400),
        ),
        // Content types.
        case("text/plain", Some("text/plain"), png.clone(), Error(415)),
        case(
            "multipart/form-data",
            Some("multipart/form-data; boundary=x"),
            png.clone(),
            Error(415),
        ),
        case(
            "garbage content type",
            Some("%%%/;;;"),
            png.clone(),
            Error(415),
        ),
        case(
            "image/png carrying JSON",
            Some("image/png"),
            format!(r#"{{"instances": ["{}"]}}"#, b64(&png)).into_bytes(),
            Error(400),
        ),
        case(
            "application/json carrying a PNG",
            Some("application/json"),
            png.clone(),
            Error(400),
        ),
        case("no content type, PNG", None, png.clone(), Served(160, 120)),
        case(
            "no content type, JSON",
            None,
            format!(r#"{{"instances": ["{}"]}}"#, b64(&jpg)).into_bytes(),
            ServedAny,
        ),
        case(
            "image/png carrying a JPEG",
            Some("image/png"),
            jpg.clone(),
            Served(160, 120),
        ),
        // Body limit (the shared server's is LIMIT bytes).
        case(
            "body exactly at the limit",
            Some("application/json"),
            json_of_size(&png, LIMIT),
            ServedAny,
        ),
        case(
            "body one byte over the limit",
            Some("application/json"),
            json_of_size(&png, LIMIT + 1),
            Error(413),
        ),
        case(
            "sample image",
            Some("image/png"),
            sample.to_vec(),
            ServedAny,
        ),
    ];
    cases.push(Case {
        name: "Accept: text/html",
        content_type: Some("image/png"),
        headers: vec![("Accept", "text/html".into())],
        body: png.clone(),
        expect: Error(406),
    });
    cases.push(Case {
        name: "custom attributes garbage",
        content_type: Some("image/png"),
        headers: vec![(
            "X-Amzn-SageMaker-Custom-Attributes",
            "=;=,score_threshold=nan,,max_detections=-1,mask_format=\u{e9}\u{e9},debug_panic=2"
                .into(),
        )],
        body: png.clone(),
        expect: Served(160, 120),
    });
    cases.push(Case {
        name: "Content-Length larger than the body sent",
        content_type: Some("image/png"),
        // The client sends a shorter body and waits: the body timeout answers.
        headers: vec![("Content-Length", (png.len() + 10).to_string())],
        body: png.clone(),
        expect: Error(408),
    });
    cases
}

fn post(
    port: u16,
    ct: Option<&str>,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut h: Vec<(&str, &str)> = Vec::new();
    if let Some(ct) = ct {
        h.push(("Content-Type", ct));
    }
    for (k, v) in headers {
        h.push((k, v.as_str()));
    }
    request(port, "POST", "/invocations", &h, body)
}

/// Checks one response against `expect`; `Err` describes the mismatch.
fn check(r: &Response, expect: Expect) -> Result<(), String> {
    let error_ok = |status: u16| -> Result<(), String> {
        if r.status != status {
            return Err(format!(
                "status {} (wanted {status}): {}",
                r.status,
                r.text()
            ));
        }
        let ct = r.header("content-type").unwrap_or("");
        if !ct.starts_with("application/json") {
            return Err(format!("error content type {ct:?}: {}", r.text()));
        }
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| format!("{e}: {}", r.text()))?;
        match v.get("error").and_then(Value::as_str) {
            Some(m) if !m.is_empty() && v.as_object().is_some_and(|o| o.len() == 1) => Ok(()),
            _ => Err(format!("not an error body: {v}")),
        }
    };
    let served = |dims: Option<(u32, u32)>| -> Result<(), String> {
        if r.status != 200 {
            return Err(format!("status {} (wanted 200): {}", r.status, r.text()));
        }
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| format!("{e}: {}", r.text()))?;
        let one = v
            .get("predictions")
            .and_then(|p| p.get(0))
            .unwrap_or(&v)
            .clone();
        if !one.get("detections").is_some_and(Value::is_array) {
            return Err(format!("no detections list: {one}"));
        }
        if let Some((w, h)) = dims {
            let got = (one["width"].as_u64(), one["height"].as_u64());
            if got != (Some(u64::from(w)), Some(u64::from(h))) {
                return Err(format!("size {got:?}, wanted {w}x{h}"));
            }
        }
        Ok(())
    };
    match expect {
        Expect::Served(w, h) => served(Some((w, h))),
        Expect::ServedAny => served(None),
        Expect::Error(s) => error_ok(s),
    }
}

fn ping(port: u16) -> u16 {
    request(port, "GET", "/ping", &[], b"").map_or(0, |r| r.status)
}

fn start_ready(model: &Path, args: &[&str]) -> Server {
    let mut s = Server::start(Some(model), args, &[]);
    s.wait_ready(Duration::from_secs(120));
    s
}

#[test]
fn hostile_inputs_get_clean_answers_and_the_server_stays_healthy() {
    let model = model_or_skip!();
    let limit = LIMIT.to_string();
    let mut s = start_ready(
        &model,
        &[
            "--workers",
            "1",
            "--max-payload-bytes",
            &limit,
            "--body-timeout",
            BODY_TIMEOUT_S,
            "--timeout",
            "30",
            "--debug-allow-panic",
        ],
    );
    let samples = sample_images(&model);
    let mut failures = Vec::new();
    for c in corpus(&samples[0]) {
        let t = Instant::now();
        let outcome = post(s.port, c.content_type, &c.headers, &c.body)
            .map_err(|e| format!("no response: {e}"))
            .and_then(|r| check(&r, c.expect));
        let secs = t.elapsed().as_secs_f64();
        if let Err(e) = outcome {
            failures.push(format!("{}: {e}", c.name));
        }
        let p = ping(s.port);
        if p != 200 {
            failures.push(format!("{}: /ping is {p} afterwards", c.name));
        }
        eprintln!("{:<45} {:>6.2} s", c.name, secs);
    }

    exif_rotation_moves_the_detections(s.port, &samples[0], &mut failures);
    panics_cost_one_500_and_nothing_else(s.port, &samples[0], &mut failures);
    slow_clients_time_out_without_blocking_others(s.port, &samples[0], &mut failures);

    assert!(
        s.child.try_wait().ok().flatten().is_none(),
        "server exited\n{}",
        s.log()
    );
    let log = s.log();
    assert!(
        failures.is_empty(),
        "{} failures:\n  {}\n--- server log (tail) ---\n{}",
        failures.len(),
        failures.join("\n  "),
        &log[log.len().saturating_sub(4000)..]
    );
    s.signal("TERM");
    let status = s.wait_exit(Duration::from_secs(30));
    assert!(status.is_some_and(|st| st.success()), "exit {status:?}");
}

/// A JPEG tagged with EXIF orientation 6 (rotate 90° clockwise) gives exactly the result of
/// the same decoded pixels rotated by the client and sent as a lossless PNG: same size
/// (width and height swapped) and the same detections, in the rotated frame.
fn exif_rotation_moves_the_detections(port: u16, sample: &[u8], failures: &mut Vec<String>) {
    let Ok(img) = image::load_from_memory(sample) else {
        failures.push("exif: the sample does not decode".into());
        return;
    };
    let plain = jpeg(&img, 90);
    let tagged = with_exif_orientation(&plain, 6);
    // The server's own decoder (libjpeg-turbo), so that only the rotation differs.
    let Ok(decoded) = maskserve::decode::decode(&plain, 1 << 24) else {
        failures.push("exif: our JPEG does not decode".into());
        return;
    };
    let Some(buf) =
        image::RgbImage::from_raw(decoded.width as u32, decoded.height as u32, decoded.data)
    else {
        failures.push("exif: decoded buffer of the wrong size".into());
        return;
    };
    let turned = encode(&DynamicImage::ImageRgb8(buf).rotate90(), ImageFormat::Png);
    let run = |ct: &str, body: &[u8]| -> Option<Value> {
        let r = post(port, Some(ct), &[], body).ok()?;
        (r.status == 200).then(|| r.json())
    };
    let (Some(a), Some(b), Some(c)) = (
        run("image/jpeg", &tagged),
        run("image/png", &turned),
        run("image/jpeg", &plain),
    ) else {
        failures.push("exif: a request failed".into());
        return;
    };
    let dims = |v: &Value| (v["width"].as_u64(), v["height"].as_u64());
    let (w, h) = (u64::from(img.width()), u64::from(img.height()));
    if dims(&a) != (Some(h), Some(w)) || dims(&b) != (Some(h), Some(w)) {
        failures.push(format!(
            "exif: sizes {:?} / {:?}, wanted {h}x{w}",
            dims(&a),
            dims(&b)
        ));
    }
    if dims(&c) != (Some(w), Some(h)) {
        failures.push(format!(
            "exif: untagged size {:?}, wanted {w}x{h}",
            dims(&c)
        ));
    }
    if a["detections"] != b["detections"] {
        failures.push(format!(
            "exif: detections differ from the client-rotated image:\n    {}\n    {}",
            a["detections"], b["detections"]
        ));
    }
    if a["detections"].as_array().is_none_or(Vec::is_empty) {
        eprintln!("exif: no detections on the sample; only sizes compared");
    }
}

/// `debug_panic=1` panics inside the pipeline with the only session set checked out: that
/// request gets a JSON 500, and the next ones are served (the set went back to the pool, the
/// worker thread lives on).
fn panics_cost_one_500_and_nothing_else(port: u16, sample: &[u8], failures: &mut Vec<String>) {
    let attrs = [(
        "X-Amzn-SageMaker-Custom-Attributes",
        "debug_panic=1".to_string(),
    )];
    for round in 0..3 {
        match post(port, Some("image/png"), &attrs, sample) {
            Ok(r) => {
                if let Err(e) = check(&r, Expect::Error(500)) {
                    failures.push(format!("panic round {round}: {e}"));
                }
            }
            Err(e) => failures.push(format!("panic round {round}: no response: {e}")),
        }
        let t = Instant::now();
        match post(port, Some("image/png"), &[], sample) {
            Ok(r) => {
                if let Err(e) = check(&r, Expect::ServedAny) {
                    failures.push(format!("after panic {round}: {e}"));
                }
            }
            Err(e) => failures.push(format!("after panic {round}: no response: {e}")),
        }
        if t.elapsed() > Duration::from_secs(20) {
            failures.push(format!("after panic {round}: took {:?}", t.elapsed()));
        }
        if ping(port) != 200 {
            failures.push(format!("after panic {round}: /ping not 200"));
        }
    }
}

/// Clients that send headers and part of the body, then stall: each gets a 408 after the body
/// timeout, and a normal request meanwhile is served at once.
fn slow_clients_time_out_without_blocking_others(
    port: u16,
    sample: &[u8],
    failures: &mut Vec<String>,
) {
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            failures.push("slow client: connect failed".into());
            return;
        };
        let head = "POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n\
                    Content-Length: 1000\r\n\r\n";
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&[0x89, b'P', b'N', b'G']);
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        stalled.push((s, Instant::now()));
    }
    // Also one that never finishes its headers (actix's client_request_timeout).
    let half_head = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
        s.write_all(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Le")?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(s)
    });

    let t = Instant::now();
    match post(port, Some("image/png"), &[], sample) {
        Ok(r) if r.status == 200 => {}
        Ok(r) => failures.push(format!("slow client: normal request got {}", r.status)),
        Err(e) => failures.push(format!("slow client: normal request failed: {e}")),
    }
    if t.elapsed() > Duration::from_secs(15) {
        failures.push(format!(
            "slow client: normal request took {:?}",
            t.elapsed()
        ));
    }
    for (i, (mut s, t0)) in stalled.into_iter().enumerate() {
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let waited = t0.elapsed();
        let text = String::from_utf8_lossy(&raw);
        if !text.starts_with("HTTP/1.1 408") || !text.contains("\"error\"") {
            failures.push(format!("slow client {i}: got {text:?} after {waited:?}"));
        } else if waited > Duration::from_secs(15) {
            failures.push(format!("slow client {i}: 408 only after {waited:?}"));
        }
    }
    if let Ok(mut s) = half_head {
        let t0 = Instant::now();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        // actix answers 408 or just closes; either way the socket is released.
        if t0.elapsed() > Duration::from_secs(20) {
            failures.push(format!(
                "half-sent headers: connection held {:?}",
                t0.elapsed()
            ));
        }
    }
    if ping(port) != 200 {
        failures.push("slow client: /ping not 200 afterwards".into());
    }
}

/// Far more concurrent requests than workers + queue: each is served or refused at once with
/// 503 + Retry-After; none hangs, and the server is healthy afterwards.
#[test]
fn more_connections_than_workers_are_queued_or_refused_never_hung() {
    let model = model_or_skip!();
    let s = start_ready(
        &model,
        &[
            "--workers",
            "1",
            "--queue-size",
            "2",
            "--debug-delay-ms",
            "300",
            "--timeout",
            "60",
        ],
    );
    let png = encode(&rgb_image(200, 150), ImageFormat::Png);
    let port = s.port;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let png = png.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = post(port, Some("image/png"), &[], &png);
                (r, t.elapsed())
            })
        })
        .collect();
    let mut served = 0;
    let mut refused = 0;
    for h in handles {
        let (r, took) = h.join().expect("client thread");
        let r = r.expect("a response");
        match r.status {
            200 => served += 1,
            503 => {
                assert!(r.header("retry-after").is_some(), "503 without Retry-After");
                check(&r, Expect::Error(503)).unwrap();
                assert!(took < Duration::from_secs(5), "503 took {took:?}");
                refused += 1;
            }
            other => panic!("status {other}: {}", r.text()),
        }
    }
    assert!(
        served >= 1 && refused >= 1,
        "{served} served, {refused} refused"
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
    assert_eq!(ping(port), 200);
    let r = post(port, Some("image/png"), &[], &png).expect("after the burst");
    check(&r, Expect::ServedAny).unwrap();
}
