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
//! An image with tiling options is decoded once and cut into tiles, which run through the
//! batcher like images (tiles of one size share a bucket, so they batch together); the last
//! tile to finish merges all of them ([`MaskRcnn::postprocess_tiled`]). Only the decoded image
//! and the tiles staged for the backends are in memory at once.
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
use crate::decode::RgbImage;
use crate::detection::tiling::{self, Tile, TileDetection};
use crate::metrics::Metrics;
use crate::pipeline::{validate, validate_tiling, Detections, ImageMeta, MaskRcnn, Prepared};
use crate::types::{PredictError, PredictOptions, StageTimings};

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
    /// Set for one tile of a tiled image.
    tile: Option<TileRef>,
}

impl Item {
    fn image(request: Arc<Request>, index: usize) -> Item {
        Item {
            request,
            index,
            tile: None,
        }
    }
}

struct TileRef {
    image: Arc<Tiled>,
    index: usize,
}

/// A tiled image in flight: the decoded pixels until every tile is cut, and what the tiles
/// have given so far.
struct Tiled {
    tiles: Vec<Tile>,
    meta: ImageMeta,
    pixels: Mutex<Option<Arc<RgbImage>>>,
    progress: Mutex<TileProgress>,
}

#[derive(Default)]
struct TileProgress {
    /// Tiles not yet finished, failed or skipped.
    remaining: usize,
    /// Tiles not yet cut from the image.
    uncut: usize,
    detections: Vec<TileDetection>,
    timings: StageTimings,
    /// The first failure; a skipped tile (deadline, client gone) fails the image silently.
    error: Option<Option<PredictError>>,
}

/// Most candidate detections a tiled image keeps before the merge (the best-scoring ones): a
/// bound on its memory (each holds its `M × M` mask probabilities, 3 KiB at M = 28) whatever
/// the image and the model, far above what merges into any real answer.
const MAX_TILE_CANDIDATES: usize = 20_000;

/// What the last tile of an image leaves to do.
enum TilesDone {
    Pending,
    Failed(Option<PredictError>),
    Merge(Vec<TileDetection>, StageTimings),
}

impl Tiled {
    fn progress(&self) -> MutexGuard<'_, TileProgress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The image to cut tile `k` from; the pixels are released with the last cut.
    fn cut(&self) -> Option<Arc<RgbImage>> {
        let mut pixels = self.pixels.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = self.progress();
        p.uncut = p.uncut.saturating_sub(1);
        if p.uncut == 0 {
            pixels.take()
        } else {
            pixels.clone()
        }
    }

    /// Records one tile's end: its detections, or `Err` (an error, or `None` when skipped).
    fn end(
        &self,
        outcome: Result<(Vec<TileDetection>, StageTimings), Option<PredictError>>,
    ) -> TilesDone {
        let mut p = self.progress();
        match outcome {
            Ok((dets, t)) => {
                p.detections.extend(dets);
                if p.detections.len() > 2 * MAX_TILE_CANDIDATES {
                    keep_best(&mut p.detections);
                }
                let sum = &mut p.timings;
                sum.preprocess += t.preprocess;
                sum.backbone_rpn += t.backbone_rpn;
                sum.proposals += t.proposals;
                sum.box_head += t.box_head;
                sum.detections += t.detections;
                sum.mask_head += t.mask_head;
            }
            Err(e) => {
                if p.error.is_none() {
                    p.error = Some(e);
                }
            }
        }
        p.remaining = p.remaining.saturating_sub(1);
        if p.remaining > 0 {
            return TilesDone::Pending;
        }
        match p.error.take() {
            Some(e) => TilesDone::Failed(e),
            None => {
                keep_best(&mut p.detections);
                TilesDone::Merge(std::mem::take(&mut p.detections), p.timings.clone())
            }
        }
    }
}

fn keep_best(dets: &mut Vec<TileDetection>) {
    if dets.len() > MAX_TILE_CANDIDATES {
        dets.sort_by(|a, b| b.det.score.total_cmp(&a.det.score));
        dets.truncate(MAX_TILE_CANDIDATES);
    }
}

struct Staged {
    item: Item,
    prepared: Prepared,
}

enum CpuTask {
    Prepare(Item, Vec<u8>),
    Cut(Item),
    Finish(Item, Detections, ImageMeta),
}

struct State {
    prepare: VecDeque<(Item, Vec<u8>)>,
    /// Tiles of decoded images, cut before new images are decoded.
    cut: VecDeque<Item>,
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
                cut: VecDeque::new(),
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
        st.cut.clear();
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
            st.prepare
                .push_back((Item::image(Arc::clone(&request), index), bytes));
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

/// Counts an image out of the queue bound (taken by a backend or dropped before; a tiled
/// image once it is cut into tiles).
fn leave_queue(s: &Shared, st: &mut State, item: &Item) {
    if item.tile.is_none() && item.request.leave_queue() {
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
    if let Some(t) = &item.tile {
        // A tile only ends here when it failed or was skipped; its image fails with it once
        // every tile has ended.
        let error = match outcome {
            Some(Err(e)) => Some(e),
            _ => None,
        };
        if let TilesDone::Failed(e) = t.image.end(Err(error)) {
            finish(
                s,
                &Item::image(Arc::clone(&item.request), item.index),
                e.map(Err),
            );
        }
        return;
    }
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
                    if let Some(item) = st.cut.pop_front() {
                        st.staged += 1;
                        break CpuTask::Cut(item);
                    }
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
            CpuTask::Cut(item) => cut_tile(s, item),
            CpuTask::Finish(item, d, _) if item.tile.is_some() => finish_tile(s, item, d),
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
    // A tiled image that may run goes its own way; a skipped or invalid one is answered below
    // like any image.
    if let Some(tiling) = s.model.tiling_for(opts) {
        if r.check(item.index, Instant::now()).is_ok() && validate(opts).is_ok() {
            return prepare_tiled(s, item, bytes, tiling);
        }
    }
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

/// Decodes a tiled image and queues its tiles to be cut.
fn prepare_tiled(s: &Shared, item: Item, bytes: &[u8], tiling: crate::types::Tiling) {
    let opts = &item.request.opts[item.index];
    let decoded = validate_tiling(tiling, opts.mask_format)
        .map_err(PredictError::BadOption)
        .and_then(|()| {
            catch_unwind(AssertUnwindSafe(|| s.model.decode_for_tiling(bytes)))
                .unwrap_or_else(|_| Err(panicked()))
        });
    let mut st = s.lock();
    st.staged -= 1;
    leave_queue(s, &mut st, &item);
    let (img, decode_ms) = match decoded {
        Ok(d) => d,
        Err(e) => {
            drop(st);
            s.cpu_wake.notify_one();
            return finish(s, &item, Some(Err(e)));
        }
    };
    let tiles = tiling::grid(img.height, img.width, tiling);
    let n = tiles.len();
    let image = Arc::new(Tiled {
        meta: ImageMeta {
            original: (img.height, img.width),
            decode_ms,
            preprocess_ms: 0.0,
        },
        tiles,
        pixels: Mutex::new(Some(Arc::new(img))),
        progress: Mutex::new(TileProgress {
            remaining: n,
            uncut: n,
            ..Default::default()
        }),
    });
    for index in 0..n {
        st.cut.push_back(Item {
            request: Arc::clone(&item.request),
            index: item.index,
            tile: Some(TileRef {
                image: Arc::clone(&image),
                index,
            }),
        });
    }
    drop(st);
    s.cpu_wake.notify_all();
}

/// Cuts one tile and stages it for the backends.
fn cut_tile(s: &Shared, item: Item) {
    let Some(t) = &item.tile else { return };
    let pixels = t.image.cut();
    let tile = t.image.tiles[t.index];
    let prepared = match (item.request.check(item.index, Instant::now()), pixels) {
        (Ok(()), Some(img)) => catch_unwind(AssertUnwindSafe(|| s.model.prepare_tile(&img, tile)))
            .map_err(|_| Err(panicked())),
        (Err(why), _) => Err(Ok(why)),
        (Ok(()), None) => Err(Err(PredictError::Inference(
            "internal: a tile was cut after its image was released".into(),
        ))),
    };
    let mut st = s.lock();
    match prepared {
        Ok(prepared) => {
            st.batcher
                .push(prepared.bucket(), Staged { item, prepared });
            drop(st);
            s.backend_wake.notify_one();
        }
        Err(why) => {
            st.staged -= 1;
            drop(st);
            s.cpu_wake.notify_one();
            match why {
                Ok(skipped) => skip(s, &item, skipped),
                Err(e) => finish(s, &item, Some(Err(e))),
            }
        }
    }
}

/// A tile's detections: recorded; the last tile of the image merges and answers.
fn finish_tile(s: &Shared, item: Item, d: Detections) {
    let Some(t) = &item.tile else { return };
    let image = &t.image;
    let timings = d.timings.clone();
    let dets = catch_unwind(AssertUnwindSafe(|| {
        s.model
            .tile_detections(d, image.tiles[t.index], image.meta.original)
    }))
    .map(|dets| (dets, timings));
    let done = image.end(dets.map_err(|_| Some(panicked())));
    let whole = Item::image(Arc::clone(&item.request), item.index);
    match done {
        TilesDone::Pending => {}
        TilesDone::Failed(e) => finish(s, &whole, e.map(Err)),
        TilesDone::Merge(dets, timings) => {
            let opts = &item.request.opts[item.index];
            let result = catch_unwind(AssertUnwindSafe(|| {
                s.model.postprocess_tiled(dets, &image.meta, opts, timings)
            }))
            .map_err(|_| panicked());
            if let Ok(res) = &result {
                s.metrics.observe_result(res);
            }
            finish(s, &whole, Some(result));
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
