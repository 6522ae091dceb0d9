//! Shared helpers of the `server_*` integration tests: start the real `maskserve serve`
//! binary on a free port, and a small HTTP/1.1 client over a raw socket (so the tests control
//! every byte: exact body sizes, odd headers, early answers).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The fixture model: `MASKSERVE_TEST_MODEL_DIR`, else `models/shapes`, else the random-weight
/// `model-export/work/random-tiny`. `None` (tests skip) only when none exists.
pub fn model_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MASKSERVE_TEST_MODEL_DIR").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(d));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    ["models/shapes", "model-export/work/random-tiny"]
        .iter()
        .map(|c| root.join(c))
        .find(|d| d.join("model.json").is_file())
}

/// Returns the model directory, or prints why the test is skipped.
#[macro_export]
macro_rules! model_or_skip {
    () => {
        match server_support::model_dir() {
            Some(d) => d,
            None => {
                eprintln!(
                    "SKIPPED: no model directory (models/shapes, model-export/work/random-tiny or \
                     MASKSERVE_TEST_MODEL_DIR)"
                );
                return;
            }
        }
    };
}

/// libonnxruntime: `ORT_DYLIB_PATH`, else the one shipped in the `onnxruntime` pip package.
pub fn ort_lib() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import onnxruntime,os;print(os.path.dirname(onnxruntime.__file__))",
        ])
        .output()
        .expect("python3 is needed to find the onnxruntime library (or set ORT_DYLIB_PATH)");
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("capi");
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "no onnxruntime pip package ({}): {e}; set ORT_DYLIB_PATH",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    libs.sort();
    libs.pop().unwrap_or_else(|| {
        panic!(
            "no libonnxruntime.so in {}; set ORT_DYLIB_PATH",
            dir.display()
        )
    })
}

/// Test images: the model's `samples/*.png` (real detections), else synthetic shapes.
pub fn sample_images(model: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(model.join("samples"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "png" || x == "jpg"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out: Vec<Vec<u8>> = files
        .iter()
        .take(4)
        .filter_map(|p| std::fs::read(p).ok())
        .collect();
    if out.is_empty() {
        out = (0..3).map(synthetic_png).collect();
    }
    out
}

/// A 320×240 PNG with a few filled shapes, different for each `seed`.
pub fn synthetic_png(seed: u32) -> Vec<u8> {
    let (w, h) = (320u32, 240u32);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let cx = 80 + 60 * seed;
        let in_circle = (x as i64 - cx as i64).pow(2) + (y as i64 - 100).pow(2) < 40 * 40;
        let in_square = (180..260).contains(&x) && (130..210).contains(&y);
        if in_circle {
            image::Rgb([220, 40, 40])
        } else if in_square {
            image::Rgb([40, 40, 220])
        } else {
            image::Rgb([30, 30, 30])
        }
    });
    encode(
        &image::DynamicImage::ImageRgb8(img),
        image::ImageFormat::Png,
    )
}

pub fn encode(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, format).expect("encode image");
    buf.into_inner()
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `maskserve serve`; killed on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Variables of the host environment that would change the server's behaviour.
const SCRUBBED_ENV: &[&str] = &[
    "SAGEMAKER_BIND_TO_PORT",
    "SAGEMAKER_MODEL_SERVER_WORKERS",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS",
    "SAGEMAKER_MAX_PAYLOAD_IN_MB",
    "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT",
    "SAGEMAKER_SAFE_PORT_RANGE",
    "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS",
    "SAGEMAKER_BATCH_STRATEGY",
    "SM_MODEL_DIR",
    "MASKSERVE_MODEL_DIR",
    "MASKSERVE_METRICS_PORT",
];

impl Server {
    /// Starts the binary with `model` (None: no model flag) and extra flags and variables.
    /// The port is passed as SAGEMAKER_BIND_TO_PORT, as SageMaker does.
    pub fn start(model: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("server.log");
        let file = std::fs::File::create(&log).expect("log file");
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_maskserve"));
        cmd.arg("serve").args(["--host", "127.0.0.1"]).args(args);
        for v in SCRUBBED_ENV {
            cmd.env_remove(v);
        }
        cmd.env("SAGEMAKER_BIND_TO_PORT", port.to_string())
            .env("ORT_DYLIB_PATH", ort_lib())
            .env("MASKSERVE_THREADS", "1")
            .env("RUST_LOG", "info");
        if let Some(m) = model {
            cmd.env("MASKSERVE_MODEL_DIR", m);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        let child = cmd.spawn().expect("start maskserve");
        Server {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// Waits until the port accepts connections.
    pub fn wait_listening(&mut self, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return t0.elapsed();
            }
            self.assert_alive();
            assert!(
                t0.elapsed() < timeout,
                "not listening after {timeout:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for `/ping` to answer 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let t0 = Instant::now();
        loop {
            if let Ok(r) = request(self.port, "GET", "/ping", &[], b"") {
                if r.status == 200 {
                    return;
                }
            }
            self.assert_alive();
            assert!(
                t0.elapsed() < timeout,
                "/ping not 200 after {timeout:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("server exited early ({status})\n{}", self.log());
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.port, "GET", path, &[], b"").expect("GET")
    }

    pub fn post(&self, content_type: &str, body: &[u8], headers: &[(&str, &str)]) -> Response {
        let mut h: Vec<(&str, &str)> = vec![("Content-Type", content_type)];
        h.extend_from_slice(headers);
        request(self.port, "POST", "/invocations", &h, body).expect("POST /invocations")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }
    /// Asserts an error response: this status, JSON `{"error": "<non-empty>"}`.
    pub fn assert_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(
            self.header("content-type")
                .map(|v| v.split(';').next().unwrap_or("").trim()),
            Some("application/json"),
            "error content type; body {}",
            self.text()
        );
        let v = self.json();
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {v}"));
        assert!(!msg.is_empty());
        assert_eq!(
            v.as_object().map(|o| o.len()),
            Some(1),
            "only the error field: {v}"
        );
        msg.to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`). The body is written in
/// pieces; a write error (the server answered early) is ignored and the response still read.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    s.set_write_timeout(Some(Duration::from_secs(120)))?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    let has_length = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    if !has_length && (method == "POST" || !body.is_empty()) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    for chunk in body.chunks(256 * 1024) {
        if s.write_all(chunk).is_err() {
            break;
        }
    }
    let mut raw = Vec::new();
    // A reset after the full response arrived still leaves the response in `raw`.
    if let Err(e) = s.read_to_end(&mut raw) {
        if raw.is_empty() {
            return Err(e);
        }
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("bad chunk"))?;
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..nl])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size.min(rest.len())]);
            rest = &rest[(size + 2).min(rest.len())..];
        }
        body = out;
    } else if let Some(n) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(n);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}
