//! `maskserve serve`: the SageMaker hosting container's HTTP server.
//!
//! actix-web on tokio answers `/ping`, `/invocations`, `/execution-parameters` and
//! `/metrics`; inference runs on dedicated threads behind a bounded queue ([`queue`]), so the
//! async workers stay free for health checks. The port is bound before the model loads (in a
//! background thread); `/ping` says 503 until the model is ready, and stays 503 with the
//! error if loading failed. SIGTERM stops accepting, lets in-flight requests finish (up to
//! `--shutdown-timeout`, under SageMaker's 30 s SIGKILL), and exits 0.

pub mod error;
pub mod formats;
pub mod http;
pub mod metrics;
pub mod queue;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::{middleware, web, App, HttpServer};
use anyhow::{bail, Context, Result};
use clap::builder::FalseyValueParser;
use clap::Args;

use self::http::{AppState, Engine, ExecutionParameters, HttpSettings};
use self::metrics::Metrics;
use self::queue::{FaultInjection, InferenceQueue, Predict};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::server_args::ModelArgs;

const MIB: usize = 1 << 20;
/// InvokeEndpoint's body limit (6 MiB), the default when SAGEMAKER_MAX_PAYLOAD_IN_MB is unset.
pub const DEFAULT_PAYLOAD_MB: u32 = 6;
/// Batch transform's largest MaxPayloadInMB.
const MAX_PAYLOAD_MB: u32 = 100;

/// Flags of `maskserve serve`; each can also come from the environment variable shown.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// How to load the model (shared with `predict`): --model/--model-dir, --device,
    /// --threads, --workers/--sessions, --max-pixels, --layout, --ort-lib.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Port to listen on (SageMaker sets SAGEMAKER_BIND_TO_PORT for multi-container models).
    #[arg(long, env = "SAGEMAKER_BIND_TO_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "MASKSERVE_BIND_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Seconds an invocation may take before a 504 (SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS is
    /// read too).
    #[arg(long, env = "SAGEMAKER_MODEL_SERVER_TIMEOUT")]
    pub timeout: Option<f64>,
    /// Seconds the server waits for the next piece of a request body before answering 408
    /// (the whole body must also arrive within --timeout).
    #[arg(long, env = "MASKSERVE_BODY_TIMEOUT", default_value_t = 15.0)]
    pub body_timeout: f64,
    /// Body limit in MiB (batch transform sets it; default 6, at most 100).
    #[arg(long, env = "SAGEMAKER_MAX_PAYLOAD_IN_MB")]
    pub max_payload_mb: Option<u32>,
    /// Body limit in bytes; overrides --max-payload-mb.
    #[arg(long, env = "MASKSERVE_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// Most images in one request (instances, inputs or JSON lines).
    #[arg(long, env = "MASKSERVE_MAX_INSTANCES", default_value_t = 64)]
    pub max_instances: usize,
    /// Requests that may wait for a worker before new ones get 503 (default 4 × workers,
    /// at least 16).
    #[arg(long, env = "MASKSERVE_QUEUE_SIZE")]
    pub queue_size: Option<usize>,
    /// actix-web worker threads (HTTP only; inference has its own threads).
    #[arg(long, env = "MASKSERVE_HTTP_WORKERS", default_value_t = 2)]
    pub http_workers: usize,
    /// Response type when Accept is missing or */* (default application/json; in a batch
    /// transform, SAGEMAKER_BATCH=true, a JSON Lines request then gets JSON Lines back).
    #[arg(long, env = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT")]
    pub default_accept: Option<String>,
    /// Set by SageMaker in batch transform jobs.
    #[arg(long, env = "SAGEMAKER_BATCH", hide = true)]
    pub batch: Option<String>,
    /// Serve /metrics on this second port too (it is always on the main port). Ignored with a
    /// warning when outside SAGEMAKER_SAFE_PORT_RANGE.
    #[arg(long, env = "MASKSERVE_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// Seconds to let in-flight requests finish after SIGTERM.
    #[arg(long, env = "MASKSERVE_SHUTDOWN_TIMEOUT", default_value_t = 25)]
    pub shutdown_timeout: u64,
    /// Log as JSON lines (for CloudWatch) instead of text.
    #[arg(long, env = "MASKSERVE_LOG_JSON", value_parser = FalseyValueParser::new())]
    pub log_json: bool,
    /// Test hook: sleep this long before each image.
    #[arg(long, env = "MASKSERVE_DEBUG_DELAY_MS", hide = true)]
    pub debug_delay_ms: Option<u64>,
    /// Test hook: sleep this long before loading the model (to observe /ping during load).
    #[arg(long, env = "MASKSERVE_DEBUG_LOAD_DELAY_MS", hide = true)]
    pub debug_load_delay_ms: Option<u64>,
    /// Test hook: fail every inference with a 500.
    #[arg(long, env = "MASKSERVE_DEBUG_FAIL_INFERENCE", hide = true, value_parser = FalseyValueParser::new())]
    pub debug_fail_inference: bool,
    /// Test hook: a request with the custom attribute `debug_panic=1` panics inside the
    /// pipeline (to test that a panic costs one 500 and nothing else).
    #[arg(long, env = "MASKSERVE_DEBUG_ALLOW_PANIC", hide = true, value_parser = FalseyValueParser::new())]
    pub debug_allow_panic: bool,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl ServeArgs {
    /// The model directory: flag / MASKSERVE_MODEL_DIR, then SM_MODEL_DIR, then /opt/ml/model.
    pub fn resolved_model_dir(&self) -> PathBuf {
        self.model.model_dir()
    }

    /// Inference workers = session sets (see [`ModelArgs::workers`]), at least 1.
    pub fn workers(&self) -> usize {
        self.model.workers().max(1)
    }

    fn timeout(&self) -> Result<Duration> {
        let secs = match self.timeout {
            Some(s) => s,
            None => match env_nonempty("SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS") {
                Some(v) => v
                    .parse::<f64>()
                    .with_context(|| format!("SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS={v}"))?,
                None => 60.0,
            },
        };
        if !(secs.is_finite() && secs > 0.0) {
            bail!("the server timeout must be a positive number of seconds, got {secs}");
        }
        Ok(Duration::from_secs_f64(secs))
    }

    fn payload_limit(&self) -> Result<usize> {
        if let Some(b) = self.max_payload_bytes {
            return Ok(b);
        }
        Ok(self.payload_mb()? as usize * MIB)
    }

    fn payload_mb(&self) -> Result<u32> {
        match self.max_payload_mb {
            None => Ok(DEFAULT_PAYLOAD_MB),
            // 0 means "stream" to batch transform; we still need a bound, so take the largest.
            Some(0) => Ok(MAX_PAYLOAD_MB),
            Some(mb) if mb > MAX_PAYLOAD_MB => {
                bail!("SAGEMAKER_MAX_PAYLOAD_IN_MB={mb} exceeds SageMaker's maximum of {MAX_PAYLOAD_MB}")
            }
            Some(mb) => Ok(mb),
        }
    }

    fn execution_parameters(&self) -> Result<ExecutionParameters> {
        let payload = self.payload_mb()?;
        let concurrent = env_nonempty("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS")
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|&v| v > 0)
            .unwrap_or(self.workers() as u32);
        // SageMaker requires MaxConcurrentTransforms × MaxPayloadInMB ≤ 100.
        let concurrent = concurrent.min((MAX_PAYLOAD_MB / payload.max(1)).max(1));
        let strategy = match env_nonempty("SAGEMAKER_BATCH_STRATEGY")
            .map(|s| s.to_ascii_uppercase().replace('_', ""))
            .as_deref()
        {
            Some("SINGLERECORD") => "SINGLE_RECORD",
            _ => "MULTI_RECORD",
        };
        Ok(ExecutionParameters {
            max_concurrent_transforms: concurrent,
            batch_strategy: strategy.to_string(),
            max_payload_in_mb: payload,
        })
    }

    fn settings(&self) -> Result<HttpSettings> {
        if self.max_instances == 0 {
            bail!("--max-instances must be at least 1");
        }
        if !(self.body_timeout.is_finite() && self.body_timeout > 0.0) {
            bail!(
                "--body-timeout must be a positive number of seconds, got {}",
                self.body_timeout
            );
        }
        Ok(HttpSettings {
            payload_limit: self.payload_limit()?,
            timeout: self.timeout()?,
            max_instances: self.max_instances,
            body_timeout: Duration::from_secs_f64(self.body_timeout),
            allow_debug_panic: self.debug_allow_panic,
            default_accept: self
                .default_accept
                .clone()
                .unwrap_or_else(|| formats::JSON.to_string()),
            // One output line per input line is what batch transform's SplitType=Line /
            // AssembleWith=Line expects, so mirror JSON Lines unless a default was configured.
            mirror_jsonlines: self.default_accept.is_none()
                && self
                    .batch
                    .as_deref()
                    .is_some_and(|b| b.trim().eq_ignore_ascii_case("true")),
            execution_parameters: self.execution_parameters()?,
        })
    }

    /// The second metrics port, if configured and allowed by SAGEMAKER_SAFE_PORT_RANGE.
    fn metrics_port(&self) -> Option<u16> {
        let port = self.metrics_port?;
        if let Some(range) = env_nonempty("SAGEMAKER_SAFE_PORT_RANGE") {
            let allowed = range
                .split_once('-')
                .and_then(|(lo, hi)| {
                    Some((
                        lo.trim().parse::<u16>().ok()?,
                        hi.trim().parse::<u16>().ok()?,
                    ))
                })
                .is_some_and(|(lo, hi)| (lo..=hi).contains(&port));
            if !allowed {
                tracing::warn!(
                    port,
                    range,
                    "metrics port is outside SAGEMAKER_SAFE_PORT_RANGE; serving /metrics on the main port only"
                );
                return None;
            }
        }
        Some(port)
    }
}

impl Predict for Pipeline {
    fn predict(
        &self,
        image: &[u8],
        opts: &crate::types::PredictOptions,
    ) -> Result<crate::types::ImageResult, crate::types::PredictError> {
        Pipeline::predict(self, image, opts)
    }
}

/// Loads the pipeline and starts the inference workers (runs on a background thread).
fn load_engine(args: &ServeArgs, metrics: &Arc<Metrics>) -> Result<Engine> {
    let workers = args.workers();
    // One session set per worker: each worker thread runs one image at a time, so more sets
    // would sit idle and fewer would make workers wait on the pool.
    let config = PipelineConfig {
        sessions: workers,
        ..args.model.config()
    };
    let model_dir = config.model_dir.clone();
    let pipeline = Pipeline::load(&config)
        .with_context(|| format!("loading the model from {}", model_dir.display()))?;
    let execution_provider = pipeline.execution_provider().to_string();
    let mut predictor: Arc<dyn Predict> = Arc::new(pipeline);
    if args.debug_delay_ms.is_some() || args.debug_fail_inference {
        predictor = Arc::new(FaultInjection {
            inner: predictor,
            delay: Duration::from_millis(args.debug_delay_ms.unwrap_or(0)),
            fail: args.debug_fail_inference,
        });
    }
    let queue_size = args.queue_size.unwrap_or((4 * workers).max(16));
    let queue = InferenceQueue::start(predictor, workers, queue_size, Arc::clone(metrics))
        .context("starting the inference threads")?;
    Ok(Engine {
        queue,
        execution_provider,
    })
}

/// Runs the server until SIGTERM/SIGINT; returns once in-flight requests have finished.
pub fn run(args: ServeArgs) -> Result<()> {
    crate::logging::init(args.log_json);
    let settings = args.settings()?;
    let metrics = Arc::new(Metrics::new("maskserve"));
    let state = web::Data::new(AppState {
        settings: settings.clone(),
        metrics: Arc::clone(&metrics),
        model: OnceLock::new(),
    });

    // Bind first, so SageMaker's connection attempts succeed (and /ping answers 503) while
    // the model loads.
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    let local = listener.local_addr()?;
    let metrics_listener = match args.metrics_port() {
        Some(p) => Some(
            TcpListener::bind((args.host.as_str(), p))
                .with_context(|| format!("binding the metrics port {}:{p}", args.host))?,
        ),
        None => None,
    };
    tracing::info!(
        address = %local,
        model_dir = %args.resolved_model_dir().display(),
        workers = args.workers(),
        payload_limit = settings.payload_limit,
        timeout_s = settings.timeout.as_secs_f64(),
        "listening; loading the model"
    );

    {
        let state = state.clone();
        let args = args.clone();
        std::thread::Builder::new()
            .name("model-loader".into())
            .spawn(move || {
                if let Some(ms) = args.debug_load_delay_ms {
                    std::thread::sleep(Duration::from_millis(ms));
                }
                let t0 = Instant::now();
                let outcome = load_engine(&args, &state.metrics);
                let secs = t0.elapsed().as_secs_f64();
                match &outcome {
                    Ok(engine) => {
                        state.metrics.model_load_seconds.set(secs);
                        state.metrics.model_ready.set(1);
                        state
                            .metrics
                            .execution_provider
                            .with_label_values(&[&engine.execution_provider])
                            .set(1.0);
                        tracing::info!(
                            load_seconds = secs,
                            execution_provider = %engine.execution_provider,
                            "model ready"
                        );
                    }
                    Err(e) => tracing::error!(
                        error = format!("{e:#}"),
                        "model failed to load; /ping will answer 503"
                    ),
                }
                let _ = state.model.set(outcome.map_err(|e| format!("{e:#}")));
            })
            .context("starting the model loader thread")?;
    }

    let shutdown_timeout = args.shutdown_timeout;
    let http_workers = args.http_workers.max(1);
    actix_web::rt::System::new().block_on(async move {
        let payload_limit = settings.payload_limit;
        let app_state = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                // No handler uses these extractors today; the limits and JSON errors are set so
                // one added later cannot reintroduce actix's 256 kB / 2 MB text-error defaults.
                .app_data(web::PayloadConfig::new(payload_limit))
                .app_data(
                    web::JsonConfig::default()
                        .limit(payload_limit)
                        .error_handler(|err, _| {
                            error::ApiError::bad_request(format!("invalid JSON: {err}")).into()
                        }),
                )
                .configure(http::routes)
                .default_service(web::to(http::not_found))
                .wrap(middleware::from_fn(http::observe))
        })
        .workers(http_workers)
        .shutdown_timeout(shutdown_timeout)
        .listen(listener)?
        .run();

        if let Some(l) = metrics_listener {
            let state = state.clone();
            let metrics_server = HttpServer::new(move || {
                App::new()
                    .app_data(state.clone())
                    .configure(http::metrics_routes)
                    .default_service(web::to(http::not_found))
            })
            .workers(1)
            .shutdown_timeout(1)
            .listen(l)?
            .run();
            actix_web::rt::spawn(metrics_server);
        }
        server.await
    })?;
    tracing::info!("shut down");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(extra: &[&str]) -> ServeArgs {
        let mut v = vec!["maskserve"];
        v.extend_from_slice(extra);
        Cli::parse_from(v).serve
    }

    #[test]
    fn payload_limits() {
        assert_eq!(args(&[]).payload_limit().unwrap(), 6 * MIB);
        assert_eq!(
            args(&["--max-payload-mb", "20"]).payload_limit().unwrap(),
            20 * MIB
        );
        assert_eq!(
            args(&["--max-payload-mb", "0"]).payload_limit().unwrap(),
            100 * MIB
        );
        assert!(args(&["--max-payload-mb", "101"]).payload_limit().is_err());
        assert_eq!(
            args(&["--max-payload-bytes", "10"])
                .payload_limit()
                .unwrap(),
            10
        );
    }

    #[test]
    fn execution_parameters_respect_the_product_limit() {
        let p = args(&["--workers", "3"]).execution_parameters().unwrap();
        assert_eq!(
            p,
            ExecutionParameters {
                max_concurrent_transforms: 3,
                batch_strategy: "MULTI_RECORD".into(),
                max_payload_in_mb: 6
            }
        );
        let p = args(&["--workers", "8", "--max-payload-mb", "50"])
            .execution_parameters()
            .unwrap();
        assert_eq!(p.max_concurrent_transforms, 2);
        assert!(p.max_concurrent_transforms * p.max_payload_in_mb <= 100);
    }

    #[test]
    fn model_flags_are_shared_with_predict() {
        let a = args(&["--model-dir", "/m", "--sessions", "3", "--max-pixels", "10"]);
        assert_eq!(a.resolved_model_dir(), PathBuf::from("/m"));
        assert_eq!(a.workers(), 3);
        let a = args(&["--model", "/n", "--workers", "2"]);
        assert_eq!(a.resolved_model_dir(), PathBuf::from("/n"));
        assert_eq!(a.workers(), 2);
        assert_eq!(
            a.model.config().max_pixels,
            crate::pipeline::DEFAULT_MAX_PIXELS
        );
    }

    #[test]
    fn empty_boolean_variables_are_false() {
        // Manifests may render an unset value as "": that must not stop the server.
        std::env::set_var("MASKSERVE_LOG_JSON", "");
        let a = args(&[]);
        std::env::remove_var("MASKSERVE_LOG_JSON");
        assert!(!a.log_json);
        assert!(args(&["--log-json"]).log_json);
    }

    #[test]
    fn timeouts() {
        assert_eq!(
            args(&["--timeout", "0.5"]).timeout().unwrap(),
            Duration::from_millis(500)
        );
        assert!(args(&["--timeout", "0"]).timeout().is_err());
    }
}
