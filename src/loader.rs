//! From settings to a running engine: the ONNX Runtime library, the manifest, the
//! machine-derived plan (logged once), the backends and the engine threads. Shared by
//! `predict` and `serve`.

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::backend::ort::{self, OrtBackend, Provider};
use crate::config::{available_cpus, Plan};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::model::Manifest;
use crate::pipeline::MaskRcnn;

pub struct Loaded {
    pub engine: Engine,
    pub plan: Plan,
}

/// Loads the model with the plan `plan_for` gives for the provider the sessions will run on.
pub fn load(
    lib: Option<&std::path::Path>,
    device: ort::Device,
    plan_for: impl Fn(Provider, usize) -> Result<Plan>,
    metrics: Arc<Metrics>,
) -> Result<Loaded> {
    // The library first: its error is the one a misconfigured deployment needs to see.
    ort::environment(lib)?;
    let cpus = available_cpus();
    let expected = Provider::expected(device);
    let mut plan = plan_for(expected, cpus)?;
    let manifest = Manifest::load(&plan.model_dir)?;
    let build = |plan: &Plan| {
        OrtBackend::load(
            &plan.ort,
            &manifest,
            &plan.model_dir,
            plan.layout,
            plan.backends,
        )
    };
    let mut backends = build(&plan)?;
    let provider = backends.first().map(|b| b.provider_kind());
    if let Some(actual) = provider.filter(|&p| p != expected) {
        // `auto` fell back to CPU: its defaults differ from the GPU's, so plan again.
        plan = plan_for(actual, cpus)?;
        drop(backends);
        backends = build(&plan)?;
    }
    tracing::info!(
        model = %manifest.name,
        model_dir = %plan.model_dir.display(),
        layout = ?plan.layout,
        cpus,
        backends = plan.backends,
        intra_threads = ?plan.ort.session.intra_threads,
        cpu_threads = plan.engine.cpu_threads,
        max_batch_size = plan.engine.max_batch_size,
        max_batch_delay_ms = ?plan.engine.max_batch_delay.map(|d| d.as_secs_f64() * 1e3),
        queue_size = plan.engine.queue_size,
        ort_spinning = plan.ort.session.spinning,
        ort_mem_pattern = plan.ort.session.mem_pattern,
        ort_cpu_arena = plan.ort.session.cpu_arena,
        "execution provider: {}",
        provider.map_or("none", |p| p.name())
    );
    let model = Arc::new(MaskRcnn::new(manifest, plan.layout, plan.max_pixels));
    let engine = Engine::start(model, backends, plan.engine.clone(), metrics)
        .context("starting the engine threads")?;
    Ok(Loaded { engine, plan })
}
