//! From settings to a running engine: the runtime (ONNX Runtime's library, or tract), the
//! manifest, the machine-derived plan (logged once), the backends and the engine threads.
//! Shared by `predict` and `serve`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[cfg(feature = "ort")]
use crate::backend::ort::{self, OrtBackend, Provider};
#[cfg(feature = "tract")]
use crate::backend::tract::TractBackend;
use crate::backend::Backend;
use crate::config::{available_cpus, Plan, Runtime, Target};
use crate::engine::{Engine, JobError};
use crate::metrics::Metrics;
use crate::model::Manifest;
use crate::pipeline::MaskRcnn;
use crate::types::{MaskFormat, PredictOptions};

pub struct Loaded {
    pub engine: Engine,
    pub plan: Plan,
}

/// Loads the model on ONNX Runtime (library `lib`, provider `device`) with the plan
/// `plan_for` gives for the provider the sessions will run on.
#[cfg(feature = "ort")]
pub fn load(
    lib: Option<&std::path::Path>,
    device: ort::Device,
    plan_for: impl Fn(Target, usize) -> Result<Plan>,
    metrics: Arc<Metrics>,
) -> Result<Loaded> {
    let runtime = Runtime::Ort {
        lib: lib.map(std::path::Path::to_path_buf),
        device,
    };
    load_on(&runtime, plan_for, metrics)
}

/// What `runtime` needs once per process, before any model: ONNX Runtime's library (so that a
/// bad path fails the start); nothing for tract.
pub fn init(runtime: &Runtime) -> Result<()> {
    match runtime {
        #[cfg(feature = "ort")]
        Runtime::Ort { lib, .. } => ort::environment(lib.as_deref()).map(drop),
        #[cfg(feature = "tract")]
        Runtime::Tract => Ok(()),
    }
}

/// Loads the model on `runtime` with the plan `plan_for` gives for what the graphs will run
/// on.
pub fn load_on(
    runtime: &Runtime,
    plan_for: impl Fn(Target, usize) -> Result<Plan>,
    metrics: Arc<Metrics>,
) -> Result<Loaded> {
    match runtime {
        #[cfg(feature = "ort")]
        Runtime::Ort { lib, device } => load_ort(lib.as_deref(), *device, plan_for, metrics),
        #[cfg(feature = "tract")]
        Runtime::Tract => load_tract(plan_for, metrics),
    }
}

#[cfg(feature = "ort")]
fn load_ort(
    lib: Option<&std::path::Path>,
    device: ort::Device,
    plan_for: impl Fn(Target, usize) -> Result<Plan>,
    metrics: Arc<Metrics>,
) -> Result<Loaded> {
    // The library first: its error is the one a misconfigured deployment needs to see.
    ort::environment(lib)?;
    let cpus = available_cpus();
    let expected = Provider::expected(device);
    let mut plan = plan_for(Target::Ort(expected), cpus)?;
    let manifest = Manifest::load(&plan.model_dir)?;
    let build = |plan: &Plan| {
        let Some(cfg) = plan.runtime.ort() else {
            bail!("internal: an ONNX Runtime load was planned for another runtime");
        };
        OrtBackend::load(cfg, &manifest, &plan.model_dir, plan.layout, plan.backends)
    };
    let mut backends = build(&plan)?;
    let provider = backends.first().map(|b| b.provider_kind());
    if let Some(actual) = provider.filter(|&p| p != expected) {
        // `auto` fell back to CPU: its defaults differ from the GPU's, so plan again.
        plan = plan_for(Target::Ort(actual), cpus)?;
        drop(backends);
        backends = build(&plan)?;
    }
    let session = plan.runtime.ort().map(|o| o.session.clone());
    tracing::info!(
        backend = "ort",
        model = %manifest.name,
        model_dir = %plan.model_dir.display(),
        layout = ?plan.layout,
        roi_align = backends.first().map_or("", |b| b.roi_align()),
        cpus,
        backends = plan.backends,
        intra_threads = ?plan.threads(),
        cpu_threads = plan.engine.cpu_threads,
        max_batch_size = plan.engine.max_batch_size,
        max_batch_delay_ms = ?plan.engine.max_batch_delay.map(|d| d.as_secs_f64() * 1e3),
        queue_size = plan.engine.queue_size,
        ort_spinning = session.as_ref().is_some_and(|s| s.spinning),
        ort_mem_pattern = session.as_ref().is_some_and(|s| s.mem_pattern),
        ort_cpu_arena = session.as_ref().is_some_and(|s| s.cpu_arena),
        "backend ort, execution provider: {}",
        provider.map_or("none", |p| p.name())
    );
    start(manifest, plan, backends, metrics)
}

#[cfg(feature = "tract")]
fn load_tract(
    plan_for: impl Fn(Target, usize) -> Result<Plan>,
    metrics: Arc<Metrics>,
) -> Result<Loaded> {
    let cpus = available_cpus();
    let plan = plan_for(Target::Tract, cpus)?;
    let Some(cfg) = plan.runtime.tract() else {
        bail!("internal: a tract load was planned for another runtime");
    };
    let manifest = Manifest::load(&plan.model_dir)?;
    let backends = TractBackend::load(cfg, &manifest, &plan.model_dir, plan.layout, plan.backends)?;
    tracing::info!(
        backend = "tract",
        model = %manifest.name,
        model_dir = %plan.model_dir.display(),
        layout = ?plan.layout,
        roi_align = backends.first().map_or("", |b| b.roi_align()),
        cpus,
        backends = plan.backends,
        threads = cfg.threads,
        shape_plans = crate::backend::tract::SHAPE_PLANS,
        cpu_threads = plan.engine.cpu_threads,
        max_batch_size = plan.engine.max_batch_size,
        max_batch_delay_ms = ?plan.engine.max_batch_delay.map(|d| d.as_secs_f64() * 1e3),
        queue_size = plan.engine.queue_size,
        "backend tract, execution provider: {}",
        backends.first().map_or("none", |b| b.provider())
    );
    start(manifest, plan, backends, metrics)
}

fn start<B: Backend>(
    manifest: Manifest,
    plan: Plan,
    backends: Vec<B>,
    metrics: Arc<Metrics>,
) -> Result<Loaded> {
    let model = Arc::new(MaskRcnn::new(manifest, plan.layout, plan.max_pixels));
    let engine = Engine::start(model, backends, plan.engine.clone(), metrics)
        .context("starting the engine threads")?;
    Ok(Loaded { engine, plan })
}

/// Runs `images` copies of the model's largest input (short side `min_size`, long side
/// `max_size`) at once, so that each backend's graphs and arena have met their peak shape
/// before the first request: a multi-model load then measures what the model really holds, a
/// graph that cannot run fails the load rather than an invocation, and the first request is
/// not the slow one.
pub fn warm_up(engine: &Engine, images: usize, timeout: Duration) -> Result<()> {
    let p = &engine.model().manifest().preprocess;
    let (w, h) = (p.max_size.max(1), p.min_size.max(1));
    let mut png = Vec::new();
    image::RgbImage::from_pixel(w, h, image::Rgb([124, 116, 104]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .context("encoding the warm-up image")?;
    let opts = PredictOptions {
        mask_format: MaskFormat::None,
        ..Default::default()
    };
    let deadline = Instant::now() + timeout;
    let receivers = (0..images.max(1))
        .map(|_| engine.submit(vec![(png.clone(), opts.clone())], deadline))
        .collect::<Result<Vec<_>, _>>()
        .context("queueing the warm-up images")?;
    for rx in receivers {
        match Engine::wait(rx) {
            Ok(_) => {}
            Err(JobError::Predict { error, .. }) => bail!("the warm-up inference failed: {error}"),
            Err(JobError::DeadlineExceeded) => {
                bail!(
                    "the warm-up inference took more than {} s",
                    timeout.as_secs_f64()
                )
            }
        }
    }
    Ok(())
}
