//! The staged request path: a CPU pool, a batcher and backend threads.
//!
//! A request's images enter as separate items. CPU threads decode and transform them as they
//! arrive ([`MaskRcnn::prepare`]) and put them into shape buckets ([`batcher`]); each backend
//! thread owns one [`Backend`] and, whenever it is free, takes the bucket whose oldest image
//! has waited longest — up to `max_batch_size` images, with no fixed wait unless
//! `max_batch_delay` is set — and runs graph (a), proposals, graph (b), detections and graph
//! (c) on the batch ([`MaskRcnn::forward`]). Paste and encoding go back to the CPU threads
//! ([`MaskRcnn::postprocess`]), which serve them before new decodes, so finished work leaves
//! first. The request answers once all its images are done, in order.
//!
//! Bounds: at most `queue_size` requests wait for a backend (more get [`QueueFull`], a 503);
//! prepared tensors are capped at what the backends can take next, so a burst of large
//! images waits as compressed bytes, not as float tensors. An image whose request has been
//! answered, whose client is gone or whose deadline passed is dropped at the next stage.

pub mod batcher;
pub mod request;

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use self::batcher::{Batcher, Next};
pub use self::request::{JobError, JobResult};
use self::request::{Outcome, Request, Skip};
use crate::backend::{Arena, Backend};
use crate::metrics::Metrics;
use crate::pipeline::{validate, Detections, ImageMeta, MaskRcnn, Prepared};
use crate::types::{PredictError, PredictOptions};

/// Engine settings (resolved by the config module).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Threads for decode, transform, paste and encoding.
    pub cpu_threads: usize,
    /// Most images in one graph run.
    pub max_batch_size: usize,
    /// How long a backend may wait for a bucket to fill; `None`: take what is there.
    pub max_batch_delay: Option<Duration>,
    /// Requests that may wait for a backend before new ones are refused.
    pub queue_size: usize,
    /// Test hooks: sleep before each batch; fail every batch.
    pub debug_delay: Duration,
    pub debug_fail: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cpu_threads: 1,
            max_batch_size: 1,
            max_batch_delay: None,
            queue_size: 16,
            debug_delay: Duration::ZERO,
            debug_fail: false,
        }
    }
}

/// Why [`Engine::submit`] refused a request.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the inference queue is full")]
    QueueFull,
    /// [`Engine::stop`] was called: the model is being unloaded.
    #[error("the model is being unloaded")]
    Stopping,
}

struct Item {
    request: Arc<Request>,
    index: usize,
}

struct Staged {
    item: Item,
    prepared: Prepared,
}

enum CpuTask {
    Prepare(Item, Vec<u8>),
    Finish(Item, Detections, ImageMeta),
}

struct State {
    prepare: VecDeque<(Item, Vec<u8>)>,
    finish: VecDeque<(Item, Detections, ImageMeta)>,
    batcher: Batcher<Staged>,
    /// Images being prepared or waiting in the batcher.
    staged: usize,
    /// Requests with images not yet taken by a backend.
    waiting: usize,
    /// New requests are refused ([`Engine::stop`]); queued ones still run.
    draining: bool,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    cpu_wake: Condvar,
    backend_wake: Condvar,
    model: Arc<MaskRcnn>,
    cfg: EngineConfig,
    /// Most images prepared ahead of the backends.
    staged_limit: usize,
    metrics: Arc<Metrics>,
    /// Images submitted and not yet finished (answered, failed or skipped).
    active: AtomicUsize,
    /// Each backend's runtime arenas after its last batch ([`Backend::arena`]).
    arenas: Mutex<Vec<Option<Arena>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the queues consistent; a panic elsewhere cannot
        // poison them in a way that matters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running engine; dropping it stops its threads.
pub struct Engine {
    shared: Arc<Shared>,
    provider: String,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Engine {
    /// Starts one thread per backend and `cfg.cpu_threads` CPU threads.
    pub fn start<B: Backend>(
        model: Arc<MaskRcnn>,
        backends: Vec<B>,
        cfg: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Engine> {
        let Some(provider) = backends.first().map(|b| b.provider().to_string()) else {
            return Err(std::io::Error::other(
                "the engine needs at least one backend",
            ));
        };
        let staged_limit =
            (backends.len() * cfg.max_batch_size.max(1)).max(cfg.cpu_threads) + cfg.cpu_threads;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                prepare: VecDeque::new(),
                finish: VecDeque::new(),
                batcher: Batcher::default(),
                staged: 0,
                waiting: 0,
                draining: false,
                closed: false,
            }),
            cpu_wake: Condvar::new(),
            backend_wake: Condvar::new(),
            model,
            cfg,
            staged_limit,
            metrics,
            active: AtomicUsize::new(0),
            arenas: Mutex::new(backends.iter().map(Backend::arena).collect()),
        });
        let mut threads = Vec::new();
        for (i, backend) in backends.into_iter().enumerate() {
            let s = Arc::clone(&shared);
            threads.push(
                thread::Builder::new()
                    .name(format!("backend-{i}"))
                    .spawn(move || backend_loop(&s, i, backend))?,
            );
        }
        for i in 0..shared.cfg.cpu_threads.max(1) {
            let s = Arc::clone(&shared);
            threads.push(
                thread::Builder::new()
                    .name(format!("cpu-{i}"))
                    .spawn(move || cpu_loop(&s))?,
            );
        }
        Ok(Engine {
            shared,
            provider,
            threads: Mutex::new(threads),
        })
    }

    /// Refuses new requests, lets the submitted ones finish for up to `grace`, then stops the
    /// threads and waits for them, so that each backend (its sessions and their memory) is
    /// dropped before this returns. Images still queued after `grace` are dropped (their
    /// requests answer that the engine stopped). Returns whether everything finished in time.
    pub fn stop(&self, grace: Duration) -> bool {
        let s = &self.shared;
        s.lock().draining = true;
        let until = Instant::now() + grace;
        while s.active.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            thread::sleep(Duration::from_millis(5));
        }
        let drained = s.active.load(Ordering::SeqCst) == 0;
        self.close();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            // A thread that panicked has already dropped its backend.
            let _ = t.join();
        }
        // What no thread will run any more: dropping it answers its requests' receivers
        // (the engine stopped) instead of leaving them waiting for their deadlines.
        let mut st = s.lock();
        st.prepare.clear();
        st.finish.clear();
        st.batcher = Batcher::default();
        st.staged = 0;
        st.waiting = 0;
        drop(st);
        drained
    }

    /// What the backends' runtime arenas hold on their device (GPU memory under CUDA), as
    /// of each one's last batch; `None` when the runtime does not say.
    pub fn arena(&self) -> Option<Arena> {
        let arenas = self.shared.arenas.lock().unwrap_or_else(|e| e.into_inner());
        let known: Vec<Arena> = arenas.iter().flatten().copied().collect();
        (!known.is_empty()).then(|| Arena {
            bytes: known.iter().map(|a| a.bytes).sum(),
            gpu: known.iter().any(|a| a.gpu),
        })
    }

    /// Images submitted and not yet answered.
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.cpu_wake.notify_all();
        self.shared.backend_wake.notify_all();
    }

    /// Queues a request of one or more images; the receiver yields the results in order.
    /// Dropping the receiver cancels the images not yet run.
    pub fn submit(
        &self,
        items: Vec<(Vec<u8>, PredictOptions)>,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<JobResult>, Refused> {
        let (reply, rx) = oneshot::channel();
        let (images, opts): (Vec<Vec<u8>>, Vec<PredictOptions>) = items.into_iter().unzip();
        if images.is_empty() {
            let _ = reply.send(Ok(Vec::new()));
            return Ok(rx);
        }
        let request = Arc::new(Request::new(opts, deadline, reply));
        let s = &self.shared;
        let mut st = s.lock();
        if st.draining || st.closed {
            return Err(Refused::Stopping);
        }
        if st.waiting >= s.cfg.queue_size.max(1) {
            return Err(Refused::QueueFull);
        }
        st.waiting += 1;
        s.active.fetch_add(images.len(), Ordering::SeqCst);
        s.metrics.queue_depth.set(st.waiting as i64);
        for (index, bytes) in images.into_iter().enumerate() {
            let item = Item {
                request: Arc::clone(&request),
                index,
            };
            st.prepare.push_back((item, bytes));
        }
        drop(st);
        s.cpu_wake.notify_all();
        Ok(rx)
    }

    /// Requests waiting for a backend.
    pub fn depth(&self) -> usize {
        self.shared.lock().waiting
    }

    /// The backends' execution provider, e.g. `CPUExecutionProvider`.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    pub fn model(&self) -> &MaskRcnn {
        &self.shared.model
    }

    /// Runs one request and waits for it (the CLI's way in).
    pub fn run(&self, items: Vec<(Vec<u8>, PredictOptions)>, timeout: Duration) -> JobResult {
        let rx = self
            .submit(items, Instant::now() + timeout)
            .map_err(|e| JobError::Predict {
                index: 0,
                error: PredictError::Inference(e.to_string()),
            })?;
        Self::wait(rx)
    }

    /// Blocks until a submitted request answers (for callers outside an async runtime).
    pub fn wait(rx: oneshot::Receiver<JobResult>) -> JobResult {
        rx.blocking_recv().unwrap_or_else(|_| {
            Err(JobError::Predict {
                index: 0,
                error: PredictError::Inference("the engine stopped".into()),
            })
        })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

/// Counts an image out of the queue bound (taken by a backend or dropped before).
fn leave_queue(s: &Shared, st: &mut State, item: &Item) {
    if item.request.leave_queue() {
        st.waiting = st.waiting.saturating_sub(1);
        s.metrics.queue_depth.set(st.waiting as i64);
    }
}

/// An image that will not run: answers its request if that was the last piece.
fn skip(s: &Shared, item: &Item, why: Skip) {
    let r = &item.request;
    match why {
        Skip::DeadlineExceeded => {
            if r.expire() {
                s.metrics.discarded.with_label_values(&["deadline"]).inc();
            }
        }
        Skip::ClientGone => {
            if r.count_client_gone() {
                s.metrics
                    .discarded
                    .with_label_values(&["client_gone"])
                    .inc();
            }
        }
        Skip::Answered | Skip::EarlierFailed => {}
    }
    finish(s, item, None);
}

fn finish(
    s: &Shared,
    item: &Item,
    outcome: Option<Result<crate::types::ImageResult, PredictError>>,
) {
    s.active.fetch_sub(1, Ordering::SeqCst);
    if item.request.finish(item.index, outcome) == Outcome::ClientGone
        && item.request.count_client_gone()
    {
        s.metrics
            .discarded
            .with_label_values(&["client_gone"])
            .inc();
    }
}

fn panicked() -> PredictError {
    PredictError::Inference("the pipeline panicked".into())
}

fn cpu_loop(s: &Shared) {
    loop {
        let task = {
            let mut st = s.lock();
            loop {
                if st.closed {
                    return;
                }
                if let Some((item, d, meta)) = st.finish.pop_front() {
                    break CpuTask::Finish(item, d, meta);
                }
                if st.staged < s.staged_limit {
                    if let Some((item, bytes)) = st.prepare.pop_front() {
                        st.staged += 1;
                        break CpuTask::Prepare(item, bytes);
                    }
                }
                st = s.cpu_wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        match task {
            CpuTask::Prepare(item, bytes) => prepare(s, item, &bytes),
            CpuTask::Finish(item, d, meta) => {
                let r = &item.request;
                let opts = &r.opts[item.index];
                let result = catch_unwind(AssertUnwindSafe(|| s.model.postprocess(d, &meta, opts)))
                    .map_err(|_| panicked());
                if let Ok(res) = &result {
                    s.metrics.observe_result(res);
                }
                finish(s, &item, Some(result));
            }
        }
    }
}

fn prepare(s: &Shared, item: Item, bytes: &[u8]) {
    let r = Arc::clone(&item.request);
    let opts = &r.opts[item.index];
    let ready = match r.check(item.index, Instant::now()) {
        Err(why) => Err(Some(why)),
        Ok(()) => validate(opts)
            .map_err(PredictError::BadOption)
            .and_then(|()| {
                catch_unwind(AssertUnwindSafe(|| s.model.prepare(bytes)))
                    .unwrap_or_else(|_| Err(panicked()))
            })
            .map_err(|e| {
                finish(s, &item, Some(Err(e)));
                None
            }),
    };
    let mut st = s.lock();
    match ready {
        Ok(prepared) => {
            let shape = prepared.bucket();
            st.batcher.push(shape, Staged { item, prepared });
            drop(st);
            s.backend_wake.notify_one();
        }
        Err(why) => {
            st.staged -= 1;
            leave_queue(s, &mut st, &item);
            drop(st);
            s.cpu_wake.notify_one();
            if let Some(why) = why {
                skip(s, &item, why);
            }
        }
    }
}

/// Waits for the next batch; `None` when the engine is closed.
fn next_batch(s: &Shared) -> Option<Vec<Staged>> {
    let max = s.cfg.max_batch_size.max(1);
    let mut st = s.lock();
    loop {
        if st.closed {
            return None;
        }
        let now = Instant::now();
        match st.batcher.next(max, s.cfg.max_batch_delay, now) {
            Next::Idle => st = s.backend_wake.wait(st).unwrap_or_else(|e| e.into_inner()),
            Next::Wait(d) => {
                st = s
                    .backend_wake
                    .wait_timeout(st, d)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            Next::Take(bucket) => {
                let taken = st.batcher.take(bucket, max, now);
                st.staged -= taken.len();
                let mut batch = Vec::with_capacity(taken.len());
                for (waited, staged) in taken {
                    leave_queue(s, &mut st, &staged.item);
                    s.metrics.batch_queue_wait.observe(waited.as_secs_f64());
                    s.metrics
                        .stage_seconds
                        .with_label_values(&["queue_wait"])
                        .observe(staged.item.request.submitted.elapsed().as_secs_f64());
                    batch.push(staged);
                }
                drop(st);
                s.cpu_wake.notify_all();
                return Some(batch);
            }
        }
    }
}

fn backend_loop<B: Backend>(s: &Shared, index: usize, mut backend: B) {
    while let Some(batch) = next_batch(s) {
        let now = Instant::now();
        let mut run = Vec::with_capacity(batch.len());
        for st in batch {
            match st.item.request.check(st.item.index, now) {
                Ok(()) => run.push(st),
                Err(why) => skip(s, &st.item, why),
            }
        }
        if run.is_empty() {
            continue;
        }
        s.metrics.batch_size.observe(run.len() as f64);
        run_batch(s, &mut backend, run);
        let arena = backend.arena();
        if let Some(slot) = s
            .arenas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(index)
        {
            *slot = arena;
        }
    }
}

fn run_batch<B: Backend>(s: &Shared, backend: &mut B, batch: Vec<Staged>) {
    if !s.cfg.debug_delay.is_zero() {
        thread::sleep(s.cfg.debug_delay);
    }
    let mut items = Vec::with_capacity(batch.len());
    let mut inputs = Vec::with_capacity(batch.len());
    let mut metas = Vec::with_capacity(batch.len());
    for st in batch {
        inputs.push(st.prepared.input);
        metas.push(st.prepared.meta);
        items.push(st.item);
    }
    let originals: Vec<(usize, usize)> = metas.iter().map(|m| m.original).collect();
    let opts: Vec<&PredictOptions> = items.iter().map(|i| &i.request.opts[i.index]).collect();
    let out = if s.cfg.debug_fail {
        Err(PredictError::Inference(
            "injected failure (--debug-fail-inference)".into(),
        ))
    } else {
        // A panic must not end the thread that owns the backend, or the server would lose
        // its sessions one by one.
        catch_unwind(AssertUnwindSafe(|| {
            s.model.forward(backend, inputs, &originals, &opts)
        }))
        .unwrap_or_else(|_| Err(panicked()))
    };
    match out {
        Ok(dets) if dets.len() == items.len() => {
            let mut st = s.lock();
            for ((item, d), meta) in items.into_iter().zip(dets).zip(metas) {
                st.finish.push_back((item, d, meta));
            }
            drop(st);
            s.cpu_wake.notify_all();
        }
        Ok(_) => {
            let e = PredictError::Inference("internal: wrong number of results".into());
            for item in &items {
                finish(s, item, Some(Err(e.clone())));
            }
        }
        Err(e) => {
            for item in &items {
                finish(s, item, Some(Err(e.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests;
