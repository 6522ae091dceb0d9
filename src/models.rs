//! The models of a multi-model server (SageMaker's multi-model endpoints): each loaded model
//! has its own engine (backends, CPU threads, queue) and metrics, keyed by an opaque name.
//!
//! Loads run one at a time on their caller's (blocking) thread, so that the resident-set growth
//! a load causes is that model's; the map is locked only to look up or change a slot, so
//! invocations of other models never wait for a load or an unload. Memory decides 507: a load
//! is refused before it starts when the model's graphs cannot fit in what the budget leaves,
//! and undone when what it measurably took (weights and the warm-up's activations) does not fit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::engine::Engine;
use crate::memory;
use crate::metrics::Metrics;
use crate::model::{Layout, Manifest};

/// Why a model-management call failed; mapped to HTTP in `server::error`.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model {0:?} is already loaded")]
    AlreadyLoaded(String),
    #[error("model {0:?} is being loaded")]
    Loading(String),
    #[error("model {0:?} is being unloaded")]
    Unloading(String),
    #[error("model {0:?} is not loaded")]
    NotLoaded(String),
    #[error("model directory {0} does not exist")]
    NoSuchDirectory(PathBuf),
    #[error(
        "not enough {memory} memory for model {name:?}: it needs about {need} bytes, {free} bytes \
         are free for models (budget {budget} bytes, {used} in use by {loaded} loaded models); \
         unload one"
    )]
    InsufficientMemory {
        memory: &'static str,
        name: String,
        need: u64,
        free: u64,
        budget: u64,
        used: u64,
        loaded: usize,
    },
    #[error("model {name:?} is invalid: {reason}")]
    Invalid { name: String, reason: String },
    #[error("loading model {name:?} failed: {reason}")]
    LoadFailed { name: String, reason: String },
}

/// A loaded model.
pub struct Served {
    pub name: String,
    pub url: String,
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    /// Resident-set growth its load caused (weights, sessions, the warm-up's activations).
    pub host_bytes: AtomicU64,
    /// GPU memory its ONNX Runtime arenas held after the warm-up (GPU providers only).
    pub gpu_bytes: Option<u64>,
    pub load_seconds: f64,
}

enum Slot {
    Loading,
    Ready(Arc<Served>),
    Unloading,
}

impl Slot {
    fn ready(&self) -> Option<Arc<Served>> {
        match self {
            Slot::Ready(s) => Some(Arc::clone(s)),
            _ => None,
        }
    }
}

/// Builds the engine of the model in a directory (the real loader, or a test double).
pub type LoadFn = dyn Fn(&Path, Arc<Metrics>) -> anyhow::Result<Engine> + Send + Sync;

/// Memory all loaded models may hold together.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub host: u64,
    /// GPU memory (ONNX Runtime's arenas); `None`: only a failed allocation says 507.
    pub gpu: Option<u64>,
}

pub struct Registry {
    slots: Mutex<BTreeMap<String, Slot>>,
    loads: Mutex<()>,
    budget: Budget,
    /// Graph layout the engines run (the graphs a load estimate counts).
    layout: Layout,
    load: Box<LoadFn>,
    namespace: String,
    /// The process's resident set ([`memory::rss_bytes`]; tests replace it, since the
    /// resident set of a test process is every test's).
    rss: fn() -> Option<u64>,
}

/// One page of `GET /models`.
pub struct Page {
    pub models: Vec<Arc<Served>>,
    pub next: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    pub fn new(budget: Budget, layout: Layout, namespace: &str, load: Box<LoadFn>) -> Registry {
        Registry {
            slots: Mutex::new(BTreeMap::new()),
            loads: Mutex::new(()),
            budget,
            layout,
            load,
            namespace: namespace.to_string(),
            rss: memory::rss_bytes,
        }
    }

    /// The loaded model `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Served>, ModelError> {
        match lock(&self.slots).get(name) {
            Some(Slot::Ready(s)) => Ok(Arc::clone(s)),
            Some(Slot::Loading) => Err(ModelError::Loading(name.into())),
            Some(Slot::Unloading) => Err(ModelError::Unloading(name.into())),
            None => Err(ModelError::NotLoaded(name.into())),
        }
    }

    /// Loaded models by name, `limit` at a time, after the name `after` (the page token).
    pub fn page(&self, limit: usize, after: Option<&str>) -> Page {
        let slots = lock(&self.slots);
        let mut ready = slots
            .iter()
            .filter(|(name, _)| after.is_none_or(|a| name.as_str() > a))
            .filter_map(|(_, slot)| slot.ready());
        let models: Vec<_> = ready.by_ref().take(limit.max(1)).collect();
        let next = if ready.next().is_some() {
            models.last().map(|m| m.name.clone())
        } else {
            None
        };
        Page { models, next }
    }

    /// Every loaded model (for /metrics).
    pub fn loaded(&self) -> Vec<Arc<Served>> {
        lock(&self.slots).values().filter_map(Slot::ready).collect()
    }

    /// Host and GPU bytes the loaded models hold, and how many there are.
    fn used(&self) -> (u64, u64, usize) {
        let loaded = self.loaded();
        let host = loaded
            .iter()
            .map(|s| s.host_bytes.load(Ordering::Relaxed))
            .sum();
        let gpu = loaded.iter().filter_map(|s| s.gpu_bytes).sum();
        (host, gpu, loaded.len())
    }

    /// Loads the model directory `url` as `name`; blocks until it serves or failed.
    pub fn load(&self, name: &str, url: &str) -> Result<Arc<Served>, ModelError> {
        {
            let mut slots = lock(&self.slots);
            match slots.get(name) {
                Some(Slot::Ready(_)) => return Err(ModelError::AlreadyLoaded(name.into())),
                Some(Slot::Loading) => return Err(ModelError::Loading(name.into())),
                Some(Slot::Unloading) => return Err(ModelError::Unloading(name.into())),
                None => {
                    slots.insert(name.to_string(), Slot::Loading);
                }
            }
        }
        let outcome = self.load_now(name, url);
        let mut slots = lock(&self.slots);
        match &outcome {
            Ok(served) => {
                slots.insert(name.to_string(), Slot::Ready(Arc::clone(served)));
            }
            Err(_) => {
                slots.remove(name);
            }
        }
        outcome
    }

    fn load_now(&self, name: &str, url: &str) -> Result<Arc<Served>, ModelError> {
        let _one_at_a_time = lock(&self.loads);
        let t0 = Instant::now();
        let dir = Path::new(url);
        if !dir.is_dir() {
            return Err(ModelError::NoSuchDirectory(dir.to_path_buf()));
        }
        let invalid = |e: anyhow::Error| ModelError::Invalid {
            name: name.into(),
            reason: format!("{e:#}"),
        };
        let manifest = Manifest::load(dir).map_err(invalid)?;
        let estimate = graph_bytes(&manifest, dir, self.layout);
        let (used, used_gpu, loaded) = self.used();
        let short = |memory: &'static str, need: u64, used: u64, budget: u64| {
            ModelError::InsufficientMemory {
                memory,
                name: name.into(),
                need,
                free: budget.saturating_sub(used),
                budget,
                used,
                loaded,
            }
        };
        let host_short = |need: u64| short("host", need, used, self.budget.host);
        // The graphs' weights are the least a load takes; the host may also have less free
        // than the budget says (other processes, page cache it cannot drop).
        if used + estimate > self.budget.host
            || memory::available_bytes().is_some_and(|free| estimate > free)
        {
            return Err(host_short(estimate));
        }
        if let Some(gpu) = self.budget.gpu.filter(|&b| used_gpu + estimate > b) {
            return Err(short("GPU", estimate, used_gpu, gpu));
        }
        let before = (self.rss)().unwrap_or(0);
        let metrics = Arc::new(Metrics::for_model(&self.namespace, name));
        let engine =
            (self.load)(dir, Arc::clone(&metrics)).map_err(|e| ModelError::LoadFailed {
                name: name.into(),
                reason: format!("{e:#}"),
            })?;
        let took = (self.rss)()
            .unwrap_or(0)
            .saturating_sub(before)
            .max(estimate);
        let arena = engine.arena();
        let gpu_bytes = arena.filter(|a| a.gpu).map(|a| a.bytes);
        let refused = if used + took > self.budget.host {
            Some(host_short(took))
        } else {
            match (self.budget.gpu, gpu_bytes) {
                (Some(b), Some(g)) if used_gpu + g > b => Some(short("GPU", g, used_gpu, b)),
                _ => None,
            }
        };
        if let Some(e) = refused {
            engine.stop(Duration::ZERO);
            drop(engine);
            memory::release_free_memory();
            return Err(e);
        }
        let load_seconds = t0.elapsed().as_secs_f64();
        metrics.model_load_seconds.set(load_seconds);
        metrics.model_ready.set(1);
        metrics
            .execution_provider
            .with_label_values(&[engine.provider()])
            .set(1.0);
        metrics.set_model_memory("host", took);
        if let Some(a) = arena {
            metrics.set_model_memory("arena", a.bytes);
        }
        if let Some(g) = gpu_bytes {
            metrics.set_model_memory("gpu", g);
        }
        tracing::info!(
            model = name,
            url,
            host_bytes = took,
            arena_bytes = arena.map(|a| a.bytes),
            load_seconds,
            provider = engine.provider(),
            "model loaded"
        );
        Ok(Arc::new(Served {
            name: name.to_string(),
            url: url.to_string(),
            engine,
            metrics,
            host_bytes: AtomicU64::new(took),
            gpu_bytes,
            load_seconds,
        }))
    }

    /// Unloads `name`: new invocations are refused at once, those in flight may finish for up
    /// to `grace`, then its threads stop and its sessions are dropped before this returns.
    /// Returns how much the resident set shrank.
    pub fn unload(&self, name: &str, grace: Duration) -> Result<u64, ModelError> {
        let served = {
            let mut slots = lock(&self.slots);
            match slots.get(name) {
                None => return Err(ModelError::NotLoaded(name.into())),
                Some(Slot::Loading) => return Err(ModelError::Loading(name.into())),
                Some(Slot::Unloading) => return Err(ModelError::Unloading(name.into())),
                Some(Slot::Ready(s)) => {
                    let s = Arc::clone(s);
                    slots.insert(name.to_string(), Slot::Unloading);
                    s
                }
            }
        };
        let before = (self.rss)().unwrap_or(0);
        let drained = served.engine.stop(grace);
        drop(served);
        memory::release_free_memory();
        let freed = before.saturating_sub((self.rss)().unwrap_or(0));
        lock(&self.slots).remove(name);
        tracing::info!(model = name, drained, freed_bytes = freed, "model unloaded");
        Ok(freed)
    }
}

/// Bytes of the graph files the layout loads (each backend holds its own copy of the weights,
/// but one copy is what any load takes at least).
fn graph_bytes(manifest: &Manifest, dir: &Path, layout: Layout) -> u64 {
    manifest
        // The RoIAlign graphs, where they run, weigh nothing next to the others.
        .graph_paths(dir, layout, crate::model::RoiAlign::Rust)
        .unwrap_or_default()
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fake::FakeBackend;
    use crate::engine::EngineConfig;
    use crate::pipeline::MaskRcnn;

    fn shapes() -> String {
        format!("{}/models/shapes", env!("CARGO_MANIFEST_DIR"))
    }

    fn fake_load(dir: &Path, metrics: Arc<Metrics>) -> anyhow::Result<Engine> {
        fake_load_with(dir, metrics, None)
    }

    fn fake_load_with(
        dir: &Path,
        metrics: Arc<Metrics>,
        arena: Option<crate::backend::Arena>,
    ) -> anyhow::Result<Engine> {
        let m = Manifest::load(dir)?;
        let mut f = FakeBackend::for_manifest(&m);
        f.arena = arena;
        let model = Arc::new(MaskRcnn::new(m, Layout::Split, 40_000_000));
        Ok(Engine::start(
            model,
            vec![f],
            EngineConfig::default(),
            metrics,
        )?)
    }

    fn registry(host: u64) -> Registry {
        let budget = Budget { host, gpu: None };
        let mut r = Registry::new(budget, Layout::Split, "test", Box::new(fake_load));
        r.rss = || None;
        r
    }

    fn weights() -> u64 {
        let dir = PathBuf::from(shapes());
        graph_bytes(&Manifest::load(&dir).unwrap(), &dir, Layout::Split)
    }

    #[test]
    fn load_get_page_unload() {
        let r = registry(u64::MAX / 4);
        for name in ["c", "a", "b"] {
            r.load(name, &shapes()).unwrap();
        }
        assert!(matches!(
            r.load("a", &shapes()),
            Err(ModelError::AlreadyLoaded(_))
        ));
        assert!(matches!(
            r.load("d", "/no/such/dir"),
            Err(ModelError::NoSuchDirectory(_))
        ));
        assert!(matches!(r.get("d"), Err(ModelError::NotLoaded(_))));
        let first = r.page(2, None);
        let names: Vec<_> = first.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(first.next.as_deref(), Some("b"));
        let second = r.page(2, first.next.as_deref());
        assert_eq!(second.models.len(), 1);
        assert_eq!(second.models[0].name, "c");
        assert_eq!(second.next, None);
        r.unload("b", Duration::from_secs(1)).unwrap();
        assert!(matches!(r.get("b"), Err(ModelError::NotLoaded(_))));
        assert!(matches!(
            r.unload("b", Duration::ZERO),
            Err(ModelError::NotLoaded(_))
        ));
        let held = r.get("a").unwrap();
        r.unload("a", Duration::from_secs(1)).unwrap();
        // A handler still holding the model gets a refusal, not a crash.
        let image = std::fs::read(format!("{}/samples/00000.png", shapes())).unwrap();
        let far = Instant::now() + Duration::from_secs(60);
        assert!(held
            .engine
            .submit(vec![(image, Default::default())], far)
            .is_err());
        assert_eq!(r.loaded().len(), 1);
    }

    #[test]
    fn memory_budget_refuses_with_507_semantics() {
        let w = weights();
        assert!(w > 1 << 20);
        let r = registry(w * 5 / 2);
        r.load("one", &shapes()).unwrap();
        r.load("two", &shapes()).unwrap();
        match r.load("three", &shapes()) {
            Err(ModelError::InsufficientMemory {
                memory: "host",
                need,
                loaded: 2,
                ..
            }) => assert!(need >= w),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a third model fitted in 2.5 models' budget"),
        }
        // The refused name is free again, and fits once another model is gone.
        assert!(matches!(r.get("three"), Err(ModelError::NotLoaded(_))));
        r.unload("one", Duration::ZERO).unwrap();
        r.load("three", &shapes()).unwrap();
    }

    #[test]
    fn gpu_budget_counts_the_gpu_arenas() {
        let w = weights();
        let arena = crate::backend::Arena {
            bytes: 100 * w,
            gpu: true,
        };
        let budget = Budget {
            host: u64::MAX / 4,
            gpu: Some(150 * w),
        };
        let load = move |dir: &Path, m: Arc<Metrics>| fake_load_with(dir, m, Some(arena));
        let mut r = Registry::new(budget, Layout::Split, "test", Box::new(load));
        r.rss = || None;
        assert_eq!(r.load("one", &shapes()).unwrap().gpu_bytes, Some(100 * w));
        match r.load("two", &shapes()) {
            Err(ModelError::InsufficientMemory {
                memory: "GPU",
                need,
                used,
                ..
            }) => assert_eq!((need, used), (100 * w, 100 * w)),
            other => panic!("{:?}", other.err()),
        }
        assert!(matches!(r.get("two"), Err(ModelError::NotLoaded(_))));
    }

    #[test]
    fn invalid_model_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.json"), "{}").unwrap();
        let r = registry(u64::MAX / 4);
        match r.load("x", dir.path().to_str().unwrap()) {
            Err(ModelError::Invalid { name, .. }) => assert_eq!(name, "x"),
            other => panic!("{:?}", other.err()),
        }
    }
}
