//! `maskserve serve`: the SageMaker hosting container's HTTP server.
//!
//! actix-web on tokio answers `/ping`, `/invocations`, `/execution-parameters` and
//! `/metrics`; inference runs in the [`crate::engine`]'s own threads behind a bounded queue, so the
//! async workers stay free for health checks. The port is bound before the model loads (in a
//! background thread); `/ping` says 503 until the model is ready, and stays 503 with the
//! error if loading failed. SIGTERM stops accepting, lets in-flight requests finish (up to
//! `--shutdown-timeout`, under SageMaker's 30 s SIGKILL), and exits 0.

pub mod connection;
pub mod error;
pub mod http;
pub mod multi_model;
pub mod request;
pub mod response;

use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::{middleware, web, App, HttpServer};
use anyhow::{Context, Result};

use self::http::{AppState, Ready};
use crate::config::ServeArgs;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::models::{Budget, Registry};

/// Longest a multi-model load may spend in its warm-up inference.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(300);

/// Multi-model mode's loader: the server's settings with `dir` as the model directory, and a
/// warm-up so the load's memory and failures show before the first invocation.
fn load_model_dir(args: &ServeArgs, dir: &Path, metrics: Arc<Metrics>) -> Result<Engine> {
    let loaded = crate::loader::load_on(
        &args.model.runtime()?,
        |target, cpus| {
            let mut plan = args.plan(target, cpus)?;
            plan.model_dir = dir.to_path_buf();
            Ok(plan)
        },
        metrics,
    )?;
    crate::loader::warm_up(&loaded.engine, loaded.plan.backends, WARM_UP_TIMEOUT)?;
    Ok(loaded.engine)
}

fn registry(args: &ServeArgs) -> Result<Registry> {
    let budget = Budget {
        host: args.models_budget()?,
        gpu: args.models_gpu_budget()?,
    };
    let a = args.clone();
    tracing::info!(
        budget_bytes = budget.host,
        gpu_budget_bytes = budget.gpu,
        "multi-model mode: models load through POST /models"
    );
    Ok(Registry::new(
        budget,
        args.model.layout,
        "maskserve",
        Box::new(move |dir, metrics| load_model_dir(&a, dir, metrics)),
    ))
}

/// Loads the model and starts the engine (runs on a background thread).
fn load(args: &ServeArgs, metrics: &Arc<Metrics>) -> Result<Ready> {
    let model_dir = args.model.model_dir();
    let loaded = crate::loader::load_on(
        &args.model.runtime()?,
        |target, cpus| args.plan(target, cpus),
        Arc::clone(metrics),
    )
    .with_context(|| format!("loading the model from {}", model_dir.display()))?;
    Ok(Ready {
        execution_parameters: args.execution_parameters(loaded.plan.backends)?,
        engine: loaded.engine,
    })
}

/// Loads the model on a background thread, so the port answers (503) meanwhile; the outcome
/// lands in `state.model` for /ping and /invocations.
fn spawn_loader(args: &ServeArgs, state: web::Data<AppState>) -> Result<()> {
    let args = args.clone();
    std::thread::Builder::new()
        .name("model-loader".into())
        .spawn(move || {
            if let Some(ms) = args.debug_load_delay_ms {
                std::thread::sleep(Duration::from_millis(ms));
            }
            let t0 = Instant::now();
            let outcome = load(&args, &state.metrics);
            let secs = t0.elapsed().as_secs_f64();
            match &outcome {
                Ok(ready) => {
                    state.metrics.model_load_seconds.set(secs);
                    state.metrics.model_ready.set(1);
                    state
                        .metrics
                        .execution_provider
                        .with_label_values(&[ready.engine.provider()])
                        .set(1.0);
                    tracing::info!(
                        load_seconds = secs,
                        execution_provider = %ready.engine.provider(),
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
    Ok(())
}

/// Runs the server until SIGTERM/SIGINT; returns once in-flight requests have finished.
pub fn run(args: ServeArgs) -> Result<()> {
    let settings = args.settings()?;
    // A runtime this binary lacks (or cannot use as asked) fails the start, not the load.
    let runtime = args.model.runtime()?;
    let metrics = Arc::new(Metrics::new("maskserve"));
    let models = if args.multi_model {
        // The ONNX Runtime library is loaded once for all models: a bad path fails the start.
        crate::loader::init(&runtime)?;
        Some(Arc::new(registry(&args)?))
    } else {
        None
    };
    let state = web::Data::new(AppState {
        settings: settings.clone(),
        metrics: Arc::clone(&metrics),
        model: OnceLock::new(),
        models,
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
    if args.multi_model {
        tracing::info!(
            address = %local,
            payload_limit = settings.payload_limit,
            timeout_s = settings.timeout.as_secs_f64(),
            "listening (multi-model)"
        );
    } else {
        tracing::info!(
            address = %local,
            model_dir = %args.model.model_dir().display(),
            payload_limit = settings.payload_limit,
            timeout_s = settings.timeout.as_secs_f64(),
            "listening; loading the model"
        );
        spawn_loader(&args, state.clone())?;
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
                .configure(multi_model::routes)
                .default_service(web::to(http::not_found))
                .wrap(middleware::from_fn(http::observe))
        })
        .on_connect(connection::on_connect)
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
