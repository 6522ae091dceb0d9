//! The engine on the pure-Rust test double: batching, ordering, errors, bounds, cancelling.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::*;
use crate::backend::fake::FakeBackend;
use crate::model::{Layout, Manifest};
use crate::types::ImageResult;

fn manifest() -> Manifest {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shapes");
    Manifest::load(&dir).expect("models/shapes/model.json")
}

fn start(backends: usize, cfg: EngineConfig) -> (Engine, FakeBackend) {
    let m = manifest();
    let f = FakeBackend::for_manifest(&m);
    let model = Arc::new(MaskRcnn::new(m, Layout::Split, 40_000_000));
    let list = (0..backends).map(|_| f.sibling()).collect();
    let engine = Engine::start(model, list, cfg, Arc::new(Metrics::new("test"))).unwrap();
    (engine, f)
}

/// A PNG with a few bright rectangles whose place depends on `seed`.
fn png(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let a = (x / 37 + y / 29 + seed).is_multiple_of(5);
        let b = x.abs_diff(w / 3 + seed * 7 % w) < w / 6 && y.abs_diff(h / 2) < h / 5;
        if a || b {
            image::Rgb([230, 200, 90])
        } else {
            image::Rgb([(seed * 13 % 40) as u8, 20, 30])
        }
    });
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn opts() -> PredictOptions {
    PredictOptions::default()
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn run(e: &Engine, images: &[Vec<u8>]) -> JobResult {
    e.run(
        images.iter().map(|b| (b.clone(), opts())).collect(),
        Duration::from_secs(60),
    )
}

/// A set with shared and distinct padded shapes (the fixture resizes to 256..400 px).
fn images() -> Vec<Vec<u8>> {
    let sizes = [
        (300, 200),
        (300, 200),
        (301, 199),
        (640, 480),
        (300, 200),
        (200, 300),
    ];
    sizes
        .iter()
        .enumerate()
        .map(|(i, &(w, h))| png(w, h, i as u32))
        .collect()
}

#[test]
fn batched_results_equal_one_by_one() {
    let images = images();
    let (single, _) = start(1, EngineConfig::default());
    let one_by_one: Vec<ImageResult> = images
        .iter()
        .map(|b| run(&single, std::slice::from_ref(b)).unwrap().remove(0))
        .collect();
    assert!(
        one_by_one.iter().any(|r| !r.detections.is_empty()),
        "the double should detect something"
    );
    // Slow the backend so the queue fills and batches form.
    let cfg = EngineConfig {
        cpu_threads: 2,
        max_batch_size: 8,
        debug_delay: Duration::from_millis(20),
        ..EngineConfig::default()
    };
    let (batched, f) = start(1, cfg);
    let mut copies = images.clone();
    copies.extend(images.iter().cloned());
    let got = run(&batched, &copies).unwrap();
    assert!(
        f.calls.largest_batch.load(Ordering::SeqCst) > 1,
        "no batch formed"
    );
    for (i, r) in got.iter().enumerate() {
        let want = &one_by_one[i % images.len()];
        assert_eq!(r.detections, want.detections, "image {i}");
        assert_eq!((r.width, r.height), (want.width, want.height));
    }
}

#[test]
fn batches_hold_one_shape_and_respect_the_cap() {
    let cfg = EngineConfig {
        cpu_threads: 2,
        max_batch_size: 3,
        max_batch_delay: Some(Duration::from_millis(200)),
        ..EngineConfig::default()
    };
    let (e, f) = start(1, cfg);
    let same: Vec<Vec<u8>> = (0..7).map(|i| png(320, 240, i)).collect();
    let r = run(&e, &same).unwrap();
    assert_eq!(r.len(), 7);
    assert_eq!(f.calls.largest_batch.load(Ordering::SeqCst), 3);
    assert_eq!(f.calls.images.load(Ordering::SeqCst), 7);
    // With the delay, 7 same-shape images arriving together run as 3 + 3 + 1.
    assert_eq!(f.calls.backbone_runs.load(Ordering::SeqCst), 3);
}

#[test]
fn errors_name_the_lowest_failed_image_and_the_engine_recovers() {
    let (e, _) = start(
        2,
        EngineConfig {
            cpu_threads: 2,
            max_batch_size: 4,
            ..Default::default()
        },
    );
    let good = png(300, 200, 1);
    match run(
        &e,
        &[
            good.clone(),
            b"garbage".to_vec(),
            good.clone(),
            b"x".to_vec(),
        ],
    ) {
        Err(JobError::Predict {
            index: 1,
            error: PredictError::UnsupportedFormat(_),
        }) => {}
        other => panic!("{other:?}"),
    }
    let bad_opts = e.run(
        vec![(
            good.clone(),
            PredictOptions {
                max_detections: Some(0),
                ..opts()
            },
        )],
        Duration::from_secs(10),
    );
    assert!(matches!(
        bad_opts,
        Err(JobError::Predict {
            index: 0,
            error: PredictError::BadOption(_)
        })
    ));
    let panics = e.run(
        vec![(
            good.clone(),
            PredictOptions {
                debug_panic: true,
                ..opts()
            },
        )],
        Duration::from_secs(10),
    );
    assert!(matches!(
        panics,
        Err(JobError::Predict { error: PredictError::Inference(m), .. }) if m.contains("panicked")
    ));
    // Every thread survived: more requests than backends still complete.
    for _ in 0..4 {
        assert_eq!(run(&e, &[good.clone(), good.clone()]).unwrap().len(), 2);
    }
    assert_eq!(e.depth(), 0);
}

#[test]
fn full_queue_is_refused_and_cancelled_images_do_not_run() {
    let cfg = EngineConfig {
        queue_size: 1,
        debug_delay: Duration::from_millis(300),
        ..EngineConfig::default()
    };
    let (e, f) = start(1, cfg);
    let img = png(300, 200, 3);
    let first = e.submit(vec![(img.clone(), opts())], far()).unwrap();
    // Let the backend take the first request, so exactly one may wait.
    let t = Instant::now();
    while f.calls.backbone_runs.load(Ordering::SeqCst) == 0 && e.depth() > 0 {
        assert!(t.elapsed() < Duration::from_secs(5));
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(30));
    let abandoned = e
        .submit(vec![(img.clone(), opts()), (img.clone(), opts())], far())
        .unwrap();
    assert_eq!(
        e.submit(vec![(img.clone(), opts())], far()).unwrap_err(),
        Refused::QueueFull
    );
    drop(abandoned);
    assert!(first.blocking_recv().unwrap().is_ok());
    let after = e.submit(vec![(img.clone(), opts())], far()).unwrap();
    assert!(after.blocking_recv().unwrap().is_ok());
    // The abandoned request's two images never reached the backend.
    assert_eq!(f.calls.images.load(Ordering::SeqCst), 2);
    assert_eq!(e.depth(), 0);
}

#[test]
fn expired_requests_answer_deadline_exceeded() {
    let (e, f) = start(1, EngineConfig::default());
    let rx = e
        .submit(vec![(png(300, 200, 4), opts())], Instant::now())
        .unwrap();
    assert!(matches!(
        rx.blocking_recv().unwrap(),
        Err(JobError::DeadlineExceeded)
    ));
    assert_eq!(f.calls.images.load(Ordering::SeqCst), 0);
    let empty = e.submit(Vec::new(), far()).unwrap();
    assert!(empty.blocking_recv().unwrap().unwrap().is_empty());
}

#[test]
fn stop_drains_then_drops_the_backends() {
    let cfg = EngineConfig {
        debug_delay: Duration::from_millis(100),
        ..EngineConfig::default()
    };
    let (e, f) = start(2, cfg);
    let img = png(300, 200, 5);
    let queued: Vec<_> = (0..3)
        .map(|_| e.submit(vec![(img.clone(), opts())], far()).unwrap())
        .collect();
    assert!(e.active() > 0);
    assert!(e.stop(Duration::from_secs(30)));
    for rx in queued {
        assert!(rx.blocking_recv().unwrap().is_ok());
    }
    assert_eq!(e.active(), 0);
    // Every backend thread has ended and dropped its backend: only the test's clone is left.
    assert_eq!(Arc::strong_count(&f.calls), 1);
    assert_eq!(
        e.submit(vec![(img, opts())], far()).unwrap_err(),
        Refused::Stopping
    );
}

#[test]
fn stop_after_grace_answers_what_is_left() {
    let cfg = EngineConfig {
        debug_delay: Duration::from_millis(300),
        ..EngineConfig::default()
    };
    let (e, f) = start(1, cfg);
    let img = png(300, 200, 6);
    let rxs: Vec<_> = (0..4)
        .map(|_| e.submit(vec![(img.clone(), opts())], far()).unwrap())
        .collect();
    assert!(!e.stop(Duration::from_millis(50)));
    assert_eq!(Arc::strong_count(&f.calls), 1);
    // The images never run are dropped: their receivers see the engine gone, none hangs.
    let answered = rxs
        .into_iter()
        .filter_map(|rx| rx.blocking_recv().ok())
        .count();
    assert!(answered < 4);
}
