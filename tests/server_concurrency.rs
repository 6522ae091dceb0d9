//! Concurrency: results under parallel load equal serial ones, and /ping stays fast while
//! real inference saturates the workers.
#![cfg(feature = "ort")]

mod server_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use server_support::{b64, request, sample_images, Server};

const READY: Duration = Duration::from_secs(120);

#[test]
fn concurrent_results_equal_serial_ones() {
    let model = model_or_skip!();
    let images = sample_images(&model);
    let mut s = Server::start(
        Some(&model),
        &[],
        &[("SAGEMAKER_MODEL_SERVER_WORKERS", "2")],
    );
    s.wait_ready(READY);
    let serial: Vec<Vec<u8>> = images
        .iter()
        .map(|img| {
            let r = s.post("image/png", img, &[]);
            assert_eq!(r.status, 200, "{}", r.text());
            r.body
        })
        .collect();
    let port = s.port;
    let images = Arc::new(images);
    let serial = Arc::new(serial);
    let handles: Vec<_> = (0..6)
        .map(|t| {
            let images = Arc::clone(&images);
            let serial = Arc::clone(&serial);
            std::thread::spawn(move || {
                for k in 0..3 {
                    let i = (t + k) % images.len();
                    let r = request(
                        port,
                        "POST",
                        "/invocations",
                        &[("Content-Type", "image/png")],
                        &images[i],
                    )
                    .unwrap();
                    assert_eq!(r.status, 200, "{}", r.text());
                    assert!(
                        r.body == serial[i],
                        "thread {t} image {i} differs from the serial result"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn ping_stays_under_2s_while_workers_are_saturated() {
    let model = model_or_skip!();
    let images = sample_images(&model);
    let mut s = Server::start(
        Some(&model),
        &["--workers", "1", "--queue-size", "64"],
        &[("MASKSERVE_THREADS", "2")],
    );
    s.wait_ready(READY);
    let batch: Vec<String> = (0..4).map(|i| b64(&images[i % images.len()])).collect();
    let body = Arc::new(json!({"instances": batch}).to_string().into_bytes());
    let port = s.port;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (body, stop, done) = (Arc::clone(&body), Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let r = request(
                        port,
                        "POST",
                        "/invocations",
                        &[("Content-Type", "application/json")],
                        &body,
                    )
                    .unwrap();
                    assert_eq!(r.status, 200, "{}", r.text());
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    // Let the queue fill, then check that it really is saturated.
    std::thread::sleep(Duration::from_millis(500));
    let m = s.get("/metrics").text();
    let inflight: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("maskserve_inflight_requests "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(
        inflight >= 2.0,
        "the workers are not saturated (inflight {inflight})"
    );

    let mut worst = Duration::ZERO;
    let t_end = Instant::now() + Duration::from_secs(5);
    let mut pings = 0;
    while Instant::now() < t_end {
        let t0 = Instant::now();
        let r = request(port, "GET", "/ping", &[], b"").unwrap();
        let took = t0.elapsed();
        assert_eq!(r.status, 200);
        worst = worst.max(took);
        pings += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    eprintln!(
        "{pings} pings, worst {worst:?}, while {} batched invocations of 4 images completed",
        done.load(Ordering::SeqCst)
    );
    assert!(
        worst < Duration::from_secs(2),
        "worst /ping latency {worst:?}"
    );
}

/// Value of an unlabelled (or fully labelled) metric line in the /metrics text.
fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Clients that hang up while their request waits: the engine drops their images (no graph
/// run) and the server keeps serving.
#[test]
fn abandoned_requests_do_not_run() {
    use std::io::Write;
    let model = model_or_skip!();
    let png = sample_images(&model).remove(0);
    let mut s = Server::start(
        Some(&model),
        &[
            "--workers",
            "1",
            "--max-batch-size",
            "1",
            "--debug-delay-ms",
            "1000",
        ],
        &[],
    );
    s.wait_ready(READY);
    let port = s.port;
    let kept = {
        let png = png.clone();
        std::thread::spawn(move || {
            request(
                port,
                "POST",
                "/invocations",
                &[("Content-Type", "image/png")],
                &png,
            )
            .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            c,
            "POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
            png.len()
        )
        .unwrap();
        c.write_all(&png).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop(c);
    }
    assert_eq!(kept.join().unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let after = s.post("image/png", &png, &[]);
    assert_eq!(after.status, 200, "{}", after.text());
    let m = s.get("/metrics").text();
    assert_eq!(metric(&m, "maskserve_batch_size_count"), 2.0, "{m}");
    assert_eq!(
        metric(&m, "maskserve_jobs_discarded_total{reason=\"client_gone\"}"),
        3.0,
        "{m}"
    );
}
