//! Parity of `maskserve predict` with PyTorch eager (models/shapes/reference.json), for both
//! layouts, plus CLI behaviour that needs ONNX Runtime (device selection, bad input).
//!
//! Needs ONNX Runtime: ORT_DYLIB_PATH, or scripts/ort-lib.sh is asked for it.
#![cfg(feature = "ort")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use maskserve::detection::nms::box_iou;
use maskserve::encode::rle;
use maskserve::types::Rle;
use serde_json::Value;

/// Detections compared; MASKSERVE_PARITY_MIN_SCORE overrides it (e.g. for a random-weight model).
fn min_score() -> f64 {
    std::env::var("MASKSERVE_PARITY_MIN_SCORE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.5)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ort_lib() -> String {
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        if !p.is_empty() {
            return p;
        }
    }
    let out = Command::new(root().join("scripts/ort-lib.sh"))
        .output()
        .expect("run scripts/ort-lib.sh");
    assert!(
        out.status.success(),
        "ONNX Runtime not found: set ORT_DYLIB_PATH (scripts/ort-lib.sh failed: {})",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// models/shapes, or the directory in MASKSERVE_PARITY_MODEL.
fn fixture() -> Option<PathBuf> {
    let d = std::env::var_os("MASKSERVE_PARITY_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/shapes"));
    if d.join("reference.json").is_file() {
        Some(d)
    } else {
        eprintln!(
            "SKIPPED: fixture {} does not exist yet (model-export writes it)",
            d.display()
        );
        None
    }
}

fn maskserve(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_maskserve"))
        .args(args)
        .env("ORT_DYLIB_PATH", ort_lib())
        .env_remove("MASKSERVE_DEVICE")
        .output()
        .expect("run maskserve")
}

fn decode_mask(v: &Value) -> Vec<u8> {
    let r: Rle = serde_json::from_value(v.clone()).expect("RLE object");
    rle::decode(&r).expect("valid RLE")
}

fn mask_iou(a: &[u8], b: &[u8]) -> f64 {
    let (mut i, mut u) = (0u64, 0u64);
    for (x, y) in a.iter().zip(b) {
        i += u64::from(x & y);
        u += u64::from(x | y);
    }
    if u == 0 {
        1.0
    } else {
        i as f64 / u as f64
    }
}

fn bbox(v: &Value) -> [f32; 4] {
    let a = v.as_array().expect("box array");
    [0, 1, 2, 3].map(|i| a[i].as_f64().unwrap() as f32)
}

/// Compares `predict` output with the reference; returns a summary line.
fn check_parity(dir: &Path, layout: &str) -> String {
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let images = reference["images"].as_array().unwrap();
    let files: Vec<String> = images
        .iter()
        .map(|im| dir.join(im["file"].as_str().unwrap()).display().to_string())
        .collect();
    let mut args = vec![
        "predict",
        "--model",
        dir.to_str().unwrap(),
        "--device",
        "cpu",
        "--layout",
        layout,
    ];
    args.extend(files.iter().map(String::as_str));
    let out = maskserve(&args);
    assert!(
        out.status.success(),
        "predict failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), images.len());
    #[allow(non_snake_case)]
    let SCORE = min_score();
    let (mut n, mut worst_box, mut worst_mask, mut worst_score) = (0, 1f64, 1f64, 0f64);
    let mut failures = Vec::new();
    for (im, ours) in images.iter().zip(&lines) {
        let file = im["file"].as_str().unwrap();
        assert_eq!(ours["height"], im["height"], "{file}");
        assert_eq!(ours["width"], im["width"], "{file}");
        let refs = im["detections"].as_array().unwrap();
        let dets = ours["detections"].as_array().unwrap();
        let mut used = vec![false; dets.len()];
        for r in refs
            .iter()
            .filter(|r| r["score"].as_f64().unwrap() >= SCORE)
        {
            n += 1;
            let rb = bbox(&r["box"]);
            let best = dets
                .iter()
                .enumerate()
                .filter(|(j, d)| !used[*j] && d["class_id"] == r["label"])
                .map(|(j, d)| (j, f64::from(box_iou(&rb, &bbox(&d["box"])))))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let Some((j, biou)) = best else {
                failures.push(format!("{file}: reference {r} has no match"));
                continue;
            };
            used[j] = true;
            let d = &dets[j];
            let miou = mask_iou(&decode_mask(&r["mask"]), &decode_mask(&d["mask"]));
            let ds = (r["score"].as_f64().unwrap() - d["score"].as_f64().unwrap()).abs();
            worst_box = worst_box.min(biou);
            worst_mask = worst_mask.min(miou);
            worst_score = worst_score.max(ds);
            if biou < 0.99 || miou < 0.97 || ds > 0.01 {
                failures.push(format!(
                    "{file}: label {} box IoU {biou:.4} mask IoU {miou:.4} Δscore {ds:.4}",
                    r["label"]
                ));
            }
        }
        for (j, d) in dets.iter().enumerate() {
            if used[j] || d["score"].as_f64().unwrap() < SCORE {
                continue;
            }
            // Ours just above 0.5 may pair with a reference just below it.
            let db = bbox(&d["box"]);
            let close = refs.iter().any(|r| {
                r["label"] == d["class_id"]
                    && (r["score"].as_f64().unwrap() - d["score"].as_f64().unwrap()).abs() <= 0.01
                    && f64::from(box_iou(&db, &bbox(&r["box"]))) >= 0.99
            });
            if !close {
                failures.push(format!("{file}: extra detection {d}"));
            }
        }
    }
    let summary = format!(
        "layout {layout}: {n} reference detections >= {SCORE}; worst box IoU {worst_box:.5}, \
         mask IoU {worst_mask:.5}, |Δscore| {worst_score:.6}"
    );
    eprintln!("{summary}");
    assert!(n > 0, "reference has no detection >= {SCORE}");
    assert!(failures.is_empty(), "{summary}\n{}", failures.join("\n"));
    summary
}

#[test]
fn parity_split_layout() {
    if let Some(d) = fixture() {
        check_parity(&d, "split");
    }
}

#[test]
fn parity_single_layout() {
    if let Some(d) = fixture() {
        check_parity(&d, "single");
    }
}

#[test]
fn auto_device_runs_on_cpu_and_says_so() {
    let Some(d) = fixture() else { return };
    let sample = first_sample(&d);
    let out = maskserve(&[
        "predict",
        "--model",
        d.to_str().unwrap(),
        "--device",
        "auto",
        &sample,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("execution provider: CPUExecutionProvider"),
        "{err}"
    );
}

#[test]
fn cuda_without_cuda_is_a_startup_error() {
    let Some(d) = fixture() else { return };
    let sample = first_sample(&d);
    for device in ["cuda", "tensorrt"] {
        let out = maskserve(&[
            "predict",
            "--model",
            d.to_str().unwrap(),
            "--device",
            device,
            &sample,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "--device {device} must fail without a GPU build"
        );
        assert!(out.stdout.is_empty());
        assert!(
            err.contains("could not be registered") && err.contains(".so"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn missing_ort_library_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_maskserve"))
        .args(["predict", "--model", "/nonexistent", "x.png"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("/nonexistent/libonnxruntime.so") && !err.contains("panicked"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_maskserve"))
        .args(["predict", "--model", "/nonexistent", "x.png"])
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("ORT_DYLIB_PATH") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn bad_images_and_options_fail_cleanly() {
    let Some(d) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.png");
    std::fs::write(&junk, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let model = d.to_str().unwrap();
    let out = maskserve(&[
        "predict",
        "--model",
        model,
        "--device",
        "cpu",
        junk.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot decode image") && !err.contains("panicked"),
        "{err}"
    );
    let sample = first_sample(&d);
    let out = maskserve(&[
        "predict",
        "--model",
        model,
        "--device",
        "cpu",
        "--max-pixels",
        "100",
        &sample,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("image too large"),
        "{err}"
    );
    let out = maskserve(&[
        "predict",
        "--model",
        model,
        "--device",
        "cpu",
        "--score-threshold",
        "2",
        &sample,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("invalid option"),
        "{err}"
    );
}

#[test]
fn options_and_formats() {
    let Some(d) = fixture() else { return };
    let sample = first_sample(&d);
    let model = d.to_str().unwrap();
    let run = |extra: &[&str]| -> Value {
        let mut a = vec!["predict", "--model", model, "--device", "cpu"];
        a.extend_from_slice(extra);
        a.push(&sample);
        let out = maskserve(&a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let all = run(&[]);
    let n = all["detections"].as_array().unwrap().len();
    assert!(n >= 1);
    let one = run(&["--max-detections", "1"]);
    assert_eq!(one["detections"].as_array().unwrap().len(), 1);
    assert_eq!(one["detections"][0]["score"], all["detections"][0]["score"]);
    let hi = run(&["--score-threshold", "0.9"]);
    assert!(hi["detections"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["score"].as_f64().unwrap() > 0.9));
    let none = run(&["--mask-format", "none"]);
    assert!(none["detections"][0].get("mask").is_none());
    let poly = run(&["--mask-format", "polygon"]);
    assert!(!poly["detections"][0]["polygons"]
        .as_array()
        .unwrap()
        .is_empty());
    let png = run(&["--mask-format", "png"]);
    assert!(png["detections"][0]["mask_png"].as_str().unwrap().len() > 10);
    // Batched through graph (a): same detections up to padding effects.
    let out = maskserve(&[
        "predict", "--model", model, "--device", "cpu", "--batch", &sample, &sample,
    ]);
    assert!(out.status.success());
    let b: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(b.len(), 2);
    assert_eq!(b[0]["detections"].as_array().unwrap().len(), n);
}

fn first_sample(d: &Path) -> String {
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("reference.json")).unwrap()).unwrap();
    d.join(reference["images"][0]["file"].as_str().unwrap())
        .display()
        .to_string()
}
