//! The process side of the contract: bind before load, /ping while loading and when broken,
//! SIGTERM during a request, the `serve` argument, the optional metrics port, JSON logs.
#![cfg(feature = "ort")]

mod server_support;

use std::time::{Duration, Instant};

use server_support::{request, sample_images, Server};

const READY: Duration = Duration::from_secs(120);

#[test]
fn binds_before_loading_and_pings_503_until_ready() {
    let model = model_or_skip!();
    let png = sample_images(&model).remove(0);
    let t0 = Instant::now();
    let mut s = Server::start(
        Some(&model),
        &["--debug-load-delay-ms", "3000", "--log-json"],
        &[],
    );
    let listening = s.wait_listening(Duration::from_secs(10));
    eprintln!("listening {listening:?} after spawn");
    // The contract asks for < 250 ms; allow slack for a loaded CI machine.
    assert!(listening < Duration::from_secs(2), "{listening:?}");

    let r = s.get("/ping");
    assert!(
        t0.elapsed() < Duration::from_millis(2900),
        "still loading expected"
    );
    let msg = r.assert_error(503);
    assert!(msg.contains("loading"), "{msg}");
    assert_eq!(r.header("retry-after"), Some("5"));
    s.post("image/png", &png, &[]).assert_error(503);

    s.wait_ready(READY);
    let r = s.get("/ping");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "ping body must be empty: {:?}", r.text());
    let r = request(s.port, "HEAD", "/ping", &[], b"").unwrap();
    assert_eq!(r.status, 200);

    // JSON logs carry the request id.
    let r = s.post("image/png", &png, &[("X-Request-Id", "trace-me-42")]);
    assert_eq!(r.status, 200, "{}", r.text());
    std::thread::sleep(Duration::from_millis(200));
    let log = s.log();
    let line = log
        .lines()
        .find(|l| l.contains("trace-me-42"))
        .unwrap_or_else(|| panic!("no log line with the request id:\n{log}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    assert_eq!(v["status"], 200, "{v}");
    assert!(log.contains("model ready"));
}

#[test]
fn broken_model_is_never_healthy() {
    let empty = tempfile::tempdir().unwrap();
    let mut s = Server::start(Some(empty.path()), &[], &[]);
    s.wait_listening(Duration::from_secs(10));
    let t0 = Instant::now();
    while !s.log().contains("model failed to load") {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no error logged:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..3 {
        let msg = s.get("/ping").assert_error(503);
        assert!(msg.contains("failed to load"), "{msg}");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.post("image/png", b"x", &[]).assert_error(503);
    assert!(s.child.try_wait().unwrap().is_none(), "keeps serving 503");
}

#[test]
fn sigterm_finishes_the_in_flight_request_and_exits_0() {
    let model = model_or_skip!();
    let png = sample_images(&model).remove(0);
    let mut s = Server::start(Some(&model), &["--debug-delay-ms", "2500"], &[]);
    s.wait_ready(READY);
    let port = s.port;
    let client = std::thread::spawn(move || {
        request(
            port,
            "POST",
            "/invocations",
            &[("Content-Type", "image/png")],
            &png,
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    s.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    // No new work is accepted once SIGTERM arrived.
    let late = request(port, "GET", "/ping", &[], b"");
    assert!(late.is_err(), "accepted a request after SIGTERM: {late:?}");
    let r = client.join().unwrap().expect("in-flight request answered");
    assert_eq!(r.status, 200, "{}", r.text());
    let status = s
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("still running 30 s after SIGTERM\n{}", s.log()));
    let took = t0.elapsed();
    eprintln!("exited {status} {took:?} after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(took < Duration::from_secs(30));
}

#[test]
fn sigterm_while_idle_exits_promptly() {
    let model = model_or_skip!();
    let mut s = Server::start(Some(&model), &[], &[]);
    s.wait_ready(READY);
    s.signal("TERM");
    let status = s.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn only_serve_is_accepted() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_maskserve"))
        .arg("train")
        .output()
        .unwrap();
    assert!(!out.status.success(), "`maskserve train` must fail");
    assert!(!out.stderr.is_empty(), "with a message");
}

#[test]
fn metrics_port_only_when_configured_and_allowed() {
    let model = model_or_skip!();
    let mport = server_support::free_port();
    let mut s = Server::start(
        Some(&model),
        &[],
        &[("MASKSERVE_METRICS_PORT", &mport.to_string())],
    );
    s.wait_ready(READY);
    let r = request(mport, "GET", "/metrics", &[], b"").expect("metrics port");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("maskserve_model_ready 1"));
    request(mport, "POST", "/invocations", &[], b"")
        .unwrap()
        .assert_error(404);
    drop(s);

    // Outside SAGEMAKER_SAFE_PORT_RANGE: not opened.
    let mut s = Server::start(
        Some(&model),
        &[],
        &[
            ("MASKSERVE_METRICS_PORT", &mport.to_string()),
            ("SAGEMAKER_SAFE_PORT_RANGE", "1-2"),
        ],
    );
    s.wait_ready(READY);
    assert!(request(mport, "GET", "/metrics", &[], b"").is_err());
    assert_eq!(s.get("/metrics").status, 200);
}
