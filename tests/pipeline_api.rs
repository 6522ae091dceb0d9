//! The library API the server and the CLI use, on ONNX Runtime with the real model: the
//! engine with several backends, multi-image requests with a broken image, the empty-result
//! path, and batched results against one-by-one results. Model: models/shapes, else
//! MASKSERVE_PARITY_MODEL, else model-export/work/random-tiny; skipped when none exists.
#![cfg(feature = "ort")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use maskserve::backend::ort::Provider;
use maskserve::config::ModelArgs;
use maskserve::engine::{Engine, JobError};
use maskserve::metrics::Metrics;
use maskserve::types::{ImageResult, PredictError, PredictOptions};

fn model() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        Some(root.join("models/shapes")),
        std::env::var_os("MASKSERVE_PARITY_MODEL").map(PathBuf::from),
        Some(root.join("model-export/work/random-tiny")),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("reference.json").is_file());
    if found.is_none() {
        eprintln!("SKIPPED: no model directory with reference.json");
    }
    found
}

fn ort_lib() -> PathBuf {
    match std::env::var("ORT_DYLIB_PATH") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let out = std::process::Command::new(root.join("scripts/ort-lib.sh"))
                .output()
                .unwrap();
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        }
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    model: ModelArgs,
}

/// An engine on the CPU provider, as `maskserve predict` builds it, with extra flags.
fn engine(dir: &std::path::Path, flags: &[&str]) -> Engine {
    let lib = ort_lib();
    let mut argv = vec!["x", "--device", "cpu", "--model"];
    let d = dir.to_str().unwrap();
    argv.push(d);
    argv.push("--ort-lib");
    argv.push(lib.to_str().unwrap());
    argv.extend_from_slice(flags);
    let args = Cli::try_parse_from(argv).unwrap().model;
    let loaded = maskserve::loader::load(
        args.ort_lib.as_deref(),
        args.device,
        |p, cpus| args.plan(p, cpus),
        Arc::new(Metrics::new("test")),
    )
    .expect("load");
    assert_eq!(loaded.engine.provider(), Provider::Cpu.name());
    loaded.engine
}

fn samples(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

const T: Duration = Duration::from_secs(120);

fn one(e: &Engine, img: &[u8], opts: PredictOptions) -> Result<ImageResult, JobError> {
    e.run(vec![(img.to_vec(), opts)], T)
        .map(|mut v| v.remove(0))
}

#[test]
fn engine_requests_errors_and_empty_results() {
    let Some(dir) = model() else { return };
    let e = Arc::new(engine(&dir, &["--workers", "2", "--threads", "1"]));
    let samples = samples(&dir);
    let opts = PredictOptions::default();
    let sequential: Vec<_> = samples
        .iter()
        .map(|s| one(&e, s, opts.clone()).unwrap())
        .collect();
    // Same results from four threads sharing two backends.
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let e = Arc::clone(&e);
            let s = samples[t % samples.len()].clone();
            std::thread::spawn(move || one(&e, &s, PredictOptions::default()).unwrap())
        })
        .collect();
    for (t, h) in handles.into_iter().enumerate() {
        let r = h.join().unwrap();
        assert_eq!(r.detections, sequential[t % samples.len()].detections);
    }
    // A request with a broken image fails as a whole, naming that image.
    let r = e.run(
        vec![
            (samples[0].clone(), opts.clone()),
            (b"garbage".to_vec(), opts.clone()),
            (samples[1].clone(), opts.clone()),
        ],
        T,
    );
    assert!(matches!(
        r,
        Err(JobError::Predict {
            index: 1,
            error: PredictError::UnsupportedFormat(_)
        })
    ));
    // Nothing above a threshold of 1: no detections, no mask-head run.
    let none = one(
        &e,
        &samples[0],
        PredictOptions {
            score_threshold: Some(1.0),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(none.detections.is_empty());
    let bad = one(
        &e,
        &samples[0],
        PredictOptions {
            max_detections: Some(0),
            ..Default::default()
        },
    );
    assert!(matches!(
        bad,
        Err(JobError::Predict {
            error: PredictError::BadOption(_),
            ..
        })
    ));
}

/// Images are batched only with images of the same padded shape, so each sees exactly the
/// zero padding it sees alone; the graphs then compute the same values per image whatever the
/// batch (ONNX Runtime's CPU kernels work per image / per RoI row). The bound tested: equal
/// detections (labels, boxes and scores to 1e-4, identical RLE masks).
#[test]
fn batched_equals_one_by_one_on_onnx_runtime() {
    let Some(dir) = model() else { return };
    let samples = samples(&dir);
    let single = engine(&dir, &["--workers", "1", "--max-batch-size", "1"]);
    let want: Vec<ImageResult> = samples
        .iter()
        .map(|s| one(&single, s, PredictOptions::default()).unwrap())
        .collect();
    drop(single);
    let batched = engine(
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
    // Three copies of each sample in one request: same-shape copies batch together.
    let items: Vec<_> = (0..3)
        .flat_map(|_| {
            samples
                .iter()
                .map(|s| (s.clone(), PredictOptions::default()))
        })
        .collect();
    let got = batched.run(items, T).unwrap();
    for (i, r) in got.iter().enumerate() {
        let w = &want[i % samples.len()];
        assert_eq!(r.detections.len(), w.detections.len(), "image {i}");
        for (a, b) in r.detections.iter().zip(&w.detections) {
            assert_eq!(a.class_id, b.class_id, "image {i}");
            assert!(
                (a.score - b.score).abs() <= 1e-4,
                "image {i}: {} vs {}",
                a.score,
                b.score
            );
            for k in 0..4 {
                assert!(
                    (a.bbox[k] - b.bbox[k]).abs() <= 1e-3,
                    "image {i}: {:?} vs {:?}",
                    a.bbox,
                    b.bbox
                );
            }
            assert_eq!(a.mask, b.mask, "image {i}");
        }
    }
}
