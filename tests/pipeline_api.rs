//! The library API the server uses: concurrent `predict` on one `Pipeline` with a session pool,
//! `predict_batch`, and the empty-result path. Model: models/shapes, else MASKSERVE_PARITY_MODEL,
//! else model-export/work/random-tiny; skipped when none exists.

use std::path::PathBuf;
use std::sync::Arc;

use maskserve::pipeline::{Pipeline, PipelineConfig};
use maskserve::runtime::Device;
use maskserve::types::{PredictError, PredictOptions};

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

#[test]
fn concurrent_predict_batch_and_empty() {
    let Some(dir) = model() else { return };
    let cfg = PipelineConfig {
        model_dir: dir.clone(),
        ort_lib: Some(ort_lib()),
        device: Device::Cpu,
        threads: Some(1),
        sessions: 2,
        ..Default::default()
    };
    let p = Arc::new(Pipeline::load(&cfg).expect("load"));
    assert_eq!(p.execution_provider(), "CPUExecutionProvider");
    let samples: Vec<Vec<u8>> = std::fs::read_dir(dir.join("samples"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .take(3)
        .collect();
    let opts = PredictOptions::default();
    let sequential: Vec<_> = samples
        .iter()
        .map(|s| p.predict(s, &opts).unwrap())
        .collect();
    // Same results from four threads sharing two session sets.
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let p = Arc::clone(&p);
            let s = samples[t % samples.len()].clone();
            std::thread::spawn(move || p.predict(&s, &PredictOptions::default()).unwrap())
        })
        .collect();
    for (t, h) in handles.into_iter().enumerate() {
        let r = h.join().unwrap();
        assert_eq!(r.detections, sequential[t % samples.len()].detections);
    }
    // A batch with a broken image: the others still get results.
    let refs: Vec<&[u8]> = vec![&samples[0], b"garbage", &samples[1]];
    let rs = p.predict_batch(&refs, &opts);
    assert!(rs[0].is_ok() && rs[2].is_ok());
    assert!(matches!(rs[1], Err(PredictError::UnsupportedFormat(_))));
    assert_eq!(rs[0].as_ref().unwrap().width, sequential[0].width);
    // Nothing above a threshold of 1: no detections, no mask-head run.
    let none = p
        .predict(
            &samples[0],
            &PredictOptions {
                score_threshold: Some(1.0),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(none.detections.is_empty());
    let bad = p.predict(
        &samples[0],
        &PredictOptions {
            max_detections: Some(0),
            ..Default::default()
        },
    );
    assert!(matches!(bad, Err(PredictError::BadOption(_))));
}
