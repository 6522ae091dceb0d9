//! The tract backend (`--features tract`) on the bundled fixture, through the library API as
//! `maskserve predict` builds it: every sample reproduces PyTorch's detections
//! (models/shapes/reference.json) and, when ONNX Runtime is compiled in too, ONNX Runtime's;
//! batches equal single images; graph (a)'s plans per input shape stay bounded; and what tract
//! cannot run (dense exports, the single layout, the RoIAlign graphs) is refused at load.
#![cfg(feature = "tract")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use maskserve::backend::tract::{TractBackend, TractConfig, SHAPE_PLANS};
use maskserve::backend::{Backend, BackendError};
use maskserve::config::ModelArgs;
use maskserve::detection::nms::box_iou;
use maskserve::detection::transform::Batch;
use maskserve::encode::rle;
use maskserve::engine::Engine;
use maskserve::metrics::Metrics;
use maskserve::model::{Layout, Manifest};
use maskserve::types::{ImageResult, PredictOptions, Rle};
use serde_json::Value;

const T: Duration = Duration::from_secs(300);
const MIN_BOX_IOU: f64 = 0.99;
const MIN_MASK_IOU: f64 = 0.97;
const MAX_SCORE_DIFF: f64 = 1e-3;

fn fixture() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/shapes");
    assert!(
        d.join("reference.json").is_file(),
        "the bundled fixture {} is missing",
        d.display()
    );
    d
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    model: ModelArgs,
}

fn args(dir: &Path, flags: &[&str]) -> ModelArgs {
    let mut argv = vec!["x", "--model", dir.to_str().unwrap()];
    argv.extend_from_slice(flags);
    Cli::try_parse_from(argv).unwrap().model
}

/// An engine as `maskserve predict` builds it from these flags.
fn try_engine(dir: &Path, flags: &[&str]) -> anyhow::Result<Engine> {
    let args = args(dir, flags);
    let loaded = maskserve::loader::load_on(
        &args.runtime()?,
        |target, cpus| args.plan(target, cpus),
        Arc::new(Metrics::new("test")),
    )?;
    Ok(loaded.engine)
}

fn tract_engine(dir: &Path, flags: &[&str]) -> Engine {
    let mut f = vec!["--backend", "tract"];
    f.extend_from_slice(flags);
    let e = try_engine(dir, &f).expect("load on tract");
    assert_eq!(e.provider(), "tract");
    e
}

/// The fixture's samples, in reference.json's order.
fn samples(dir: &Path) -> Vec<(String, Vec<u8>)> {
    reference(dir)["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|im| {
            let file = im["file"].as_str().unwrap().to_string();
            let bytes = std::fs::read(dir.join(&file)).unwrap();
            (file, bytes)
        })
        .collect()
}

fn reference(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

fn run_one(e: &Engine, img: &[u8]) -> ImageResult {
    e.run(vec![(img.to_vec(), PredictOptions::default())], T)
        .expect("inference")
        .remove(0)
}

/// A detection in a comparable form: label, score, box and decoded mask.
struct Det {
    label: u64,
    score: f64,
    bbox: [f32; 4],
    mask: Vec<u8>,
}

fn decode(r: &Rle) -> Vec<u8> {
    rle::decode(r).expect("valid RLE")
}

fn ours(r: &ImageResult) -> Vec<Det> {
    r.detections
        .iter()
        .map(|d| Det {
            label: u64::from(d.class_id),
            score: f64::from(d.score),
            bbox: d.bbox,
            mask: decode(d.mask.as_ref().expect("an RLE mask")),
        })
        .collect()
}

fn from_reference(im: &Value) -> Vec<Det> {
    im["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let b = d["box"].as_array().unwrap();
            Det {
                label: d["label"].as_u64().unwrap(),
                score: d["score"].as_f64().unwrap(),
                bbox: [0, 1, 2, 3].map(|i| b[i].as_f64().unwrap() as f32),
                mask: decode(&serde_json::from_value(d["mask"].clone()).unwrap()),
            }
        })
        .collect()
}

fn mask_iou(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "mask sizes differ");
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

/// The worst box IoU, mask IoU and |Δscore| over all detections of all images so far.
#[derive(Debug)]
struct Worst {
    detections: usize,
    box_iou: f64,
    mask_iou: f64,
    score: f64,
}

impl Worst {
    fn new() -> Worst {
        Worst {
            detections: 0,
            box_iou: 1.0,
            mask_iou: 1.0,
            score: 0.0,
        }
    }
}

/// Every detection of `want` pairs with one of `got` of its label (the best box IoU among those
/// not yet paired), within the bounds; same count. Failures are pushed to `failures`.
fn compare(file: &str, got: &[Det], want: &[Det], worst: &mut Worst, failures: &mut Vec<String>) {
    if got.len() != want.len() {
        failures.push(format!(
            "{file}: {} detections, want {}",
            got.len(),
            want.len()
        ));
        return;
    }
    let mut used = vec![false; got.len()];
    for w in want {
        let best = got
            .iter()
            .enumerate()
            .filter(|(j, g)| !used[*j] && g.label == w.label)
            .map(|(j, g)| (j, f64::from(box_iou(&w.bbox, &g.bbox))))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((j, biou)) = best else {
            failures.push(format!(
                "{file}: label {} score {} unmatched",
                w.label, w.score
            ));
            continue;
        };
        used[j] = true;
        let miou = mask_iou(&w.mask, &got[j].mask);
        let ds = (w.score - got[j].score).abs();
        worst.detections += 1;
        worst.box_iou = worst.box_iou.min(biou);
        worst.mask_iou = worst.mask_iou.min(miou);
        worst.score = worst.score.max(ds);
        if biou < MIN_BOX_IOU || miou < MIN_MASK_IOU || ds > MAX_SCORE_DIFF {
            failures.push(format!(
                "{file}: label {} score {:.4}: box IoU {biou:.4}, mask IoU {miou:.4}, |Δscore| {ds:.6}",
                w.label, w.score
            ));
        }
    }
}

#[test]
fn every_sample_reproduces_pytorch() {
    let dir = fixture();
    let e = tract_engine(&dir, &["--workers", "1"]);
    let reference = reference(&dir);
    let images = reference["images"].as_array().unwrap();
    let (mut worst, mut failures) = (Worst::new(), Vec::new());
    for ((file, bytes), im) in samples(&dir).iter().zip(images) {
        let r = run_one(&e, bytes);
        assert_eq!(
            (Value::from(r.height), Value::from(r.width)),
            (im["height"].clone(), im["width"].clone()),
            "{file}"
        );
        compare(
            file,
            &ours(&r),
            &from_reference(im),
            &mut worst,
            &mut failures,
        );
    }
    eprintln!("tract vs PyTorch: {worst:?}");
    assert!(worst.detections > 0, "the reference has no detections");
    assert!(failures.is_empty(), "{worst:?}\n{}", failures.join("\n"));
}

/// libonnxruntime: ORT_DYLIB_PATH, else what scripts/ort-lib.sh finds.
#[cfg(feature = "ort")]
fn ort_lib() -> String {
    match std::env::var("ORT_DYLIB_PATH") {
        Ok(p) if !p.is_empty() => p,
        _ => {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let out = std::process::Command::new(root.join("scripts/ort-lib.sh"))
                .output()
                .expect("run scripts/ort-lib.sh");
            assert!(
                out.status.success(),
                "ONNX Runtime not found: set ORT_DYLIB_PATH ({})",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        }
    }
}

#[cfg(feature = "ort")]
#[test]
fn every_sample_reproduces_onnx_runtime() {
    let dir = fixture();
    let lib = ort_lib();
    let ort = try_engine(
        &dir,
        &[
            "--backend",
            "ort",
            "--device",
            "cpu",
            "--ort-lib",
            &lib,
            "--workers",
            "1",
        ],
    )
    .expect("load on ONNX Runtime");
    assert_eq!(ort.provider(), "CPUExecutionProvider");
    let tract = tract_engine(&dir, &["--workers", "1"]);
    let (mut worst, mut failures) = (Worst::new(), Vec::new());
    for (file, bytes) in samples(&dir) {
        let want = run_one(&ort, &bytes);
        let got = run_one(&tract, &bytes);
        assert_eq!((got.width, got.height), (want.width, want.height), "{file}");
        compare(&file, &ours(&got), &ours(&want), &mut worst, &mut failures);
    }
    eprintln!("tract vs ONNX Runtime: {worst:?}");
    assert!(worst.detections > 0);
    assert!(failures.is_empty(), "{worst:?}\n{}", failures.join("\n"));
}

/// Three copies of each sample in one request on a backend that batches: the same-shape copies
/// run as one batch through a `(B, H, W)` plan of their own, with the same detections as alone.
#[test]
fn batches_equal_single_images() {
    let dir = fixture();
    let samples = samples(&dir);
    let single = tract_engine(&dir, &["--workers", "1", "--threads", "2"]);
    let want: Vec<ImageResult> = samples.iter().map(|(_, b)| run_one(&single, b)).collect();
    drop(single);
    let batched = tract_engine(
        &dir,
        &[
            "--workers",
            "1",
            "--max-batch-size",
            "8",
            "--max-batch-delay",
            "200",
        ],
    );
    let items: Vec<_> = (0..3)
        .flat_map(|_| {
            samples
                .iter()
                .map(|(_, b)| (b.clone(), PredictOptions::default()))
        })
        .collect();
    let got = batched.run(items, T).unwrap();
    assert_eq!(got.len(), 3 * samples.len());
    let (mut worst, mut failures) = (Worst::new(), Vec::new());
    for (i, r) in got.iter().enumerate() {
        let (file, _) = &samples[i % samples.len()];
        let w = &want[i % samples.len()];
        compare(file, &ours(r), &ours(w), &mut worst, &mut failures);
    }
    eprintln!("tract batched vs single: {worst:?}");
    assert!(failures.is_empty(), "{worst:?}\n{}", failures.join("\n"));
}

fn batch(b: usize, h: usize, w: usize) -> Batch {
    // A smooth pattern, so that the outputs are not all equal.
    let data = (0..b * 3 * h * w)
        .map(|i| ((i % 97) as f32 / 97.0 - 0.5) * 2.0)
        .collect();
    Batch {
        data,
        batch: b,
        height: h,
        width: w,
        image_sizes: vec![(h, w); b],
    }
}

#[test]
fn graph_a_plans_per_shape_stay_bounded() {
    let dir = fixture();
    let manifest = Manifest::load(&dir).unwrap();
    let mut backends = TractBackend::load(
        &TractConfig { threads: 1 },
        &manifest,
        &dir,
        Layout::Split,
        2,
    )
    .unwrap();
    let mut two = TractBackend::load(
        &TractConfig { threads: 2 },
        &manifest,
        &dir,
        Layout::Split,
        1,
    )
    .unwrap()
    .remove(0);
    let (mut a, b) = (backends.remove(0), backends.remove(0));
    // The load prepared the plan of the largest landscape input.
    assert_eq!(a.cached_plans(), 1);
    let shapes: Vec<(usize, usize, usize)> = (0..SHAPE_PLANS + 3)
        .map(|i| (1 + i % 2, 64 + 32 * (i / 2), 96))
        .collect();
    for &(n, h, w) in &shapes {
        let out = a.backbone_rpn(&batch(n, h, w)).unwrap();
        assert_eq!(out.features.len(), manifest.graphs.feature_names.len());
        assert_eq!(out.features[0].shape(), &[n, 64, h / 4, w / 4]);
        assert_eq!(out.rpn.len(), manifest.graphs.objectness_names.len());
        assert_eq!(
            (out.rpn[0].height, out.rpn[0].width),
            (h / 4, w / 4),
            "{n}×{h}×{w}"
        );
        assert_eq!(out.rpn[0].objectness.len(), n * out.rpn[0].per_image());
        assert!(a.cached_plans() <= SHAPE_PLANS);
    }
    // Shared by the backends of one load, not by another load's.
    assert_eq!(b.cached_plans(), SHAPE_PLANS);
    assert_eq!(two.cached_plans(), 1);

    // A pool of two threads computes what one thread does.
    let input = batch(1, 128, 160);
    let one = a.backbone_rpn(&input).unwrap();
    let pooled = two.backbone_rpn(&input).unwrap();
    for (x, y) in one.rpn.iter().zip(&pooled.rpn) {
        for (p, q) in x.objectness.iter().zip(&y.objectness) {
            assert!((p - q).abs() <= 1e-4, "{p} vs {q}");
        }
    }

    // A malformed batch is an error, not a panic.
    let mut bad = batch(1, 64, 96);
    bad.data.truncate(10);
    assert!(matches!(
        a.backbone_rpn(&bad),
        Err(BackendError::Run { .. })
    ));
    assert!(matches!(
        a.single(&[0.0; 12], 2, 2),
        Err(BackendError::WrongLayout(_))
    ));
}

/// Copies the fixture's model.json and graphs into a temporary directory, `edit` applied to
/// the manifest.
fn edited_fixture(edit: impl FnOnce(&mut Value)) -> tempfile::TempDir {
    let src = fixture();
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "onnx") {
            std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let mut m: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("model.json")).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(tmp.path().join("model.json"), m.to_string()).unwrap();
    tmp
}

#[test]
fn refuses_what_tract_cannot_run() {
    let dense = edited_fixture(|m| {
        let g = m["graphs"].as_object_mut().unwrap();
        g.remove("roi_pooling");
        g.remove("box_roi_align");
        g.remove("mask_roi_align");
    });
    let e = try_engine(dense.path(), &["--backend", "tract"])
        .err()
        .expect("a dense export must not load on tract");
    let e = format!("{e:#}");
    assert!(
        e.contains("dense RoI pooling")
            && e.contains("python -m maskexport.export --checkpoint")
            && e.contains("--roi-pooling per-level"),
        "{e}"
    );

    let dir = fixture();
    let e = try_engine(&dir, &["--backend", "tract", "--layout", "single"])
        .err()
        .expect("the single layout must not load on tract");
    let e = format!("{e:#}");
    assert!(e.contains("split layout only"), "{e}");

    let e = try_engine(&dir, &["--backend", "tract", "--roi-align", "graph"])
        .err()
        .expect("the RoIAlign graphs must not load on tract");
    let e = format!("{e:#}");
    assert!(e.contains("RoiAlign"), "{e}");

    let missing = edited_fixture(|m| {
        m["graphs"]["feature_names"][0] = Value::from("no_such_output");
    });
    let e = try_engine(missing.path(), &["--backend", "tract"])
        .err()
        .expect("a graph without the manifest's outputs must not load");
    let e = format!("{e:#}");
    assert!(e.contains("no_such_output"), "{e}");
}
