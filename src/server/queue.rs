//! A bounded queue in front of the pipeline, drained by dedicated inference threads.
//!
//! Inference is blocking and CPU/GPU-bound, so it never runs on the async executor: a
//! request becomes a [`Job`] sent over a bounded channel; `workers` OS threads take jobs and
//! answer through a oneshot channel. A full queue is refused at once (503 + Retry-After)
//! rather than piling up latency; a job whose deadline has passed, or whose client has gone
//! (the handler dropped its receiver), is discarded without running.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::types::{ImageResult, PredictError, PredictOptions};

/// What the workers call; implemented by the real pipeline and by test doubles.
pub trait Predict: Send + Sync + 'static {
    fn predict(&self, image: &[u8], opts: &PredictOptions) -> Result<ImageResult, PredictError>;
}

/// Why a job produced no results.
#[derive(Debug)]
pub enum JobError {
    /// Image `index` of the job failed.
    Predict { index: usize, error: PredictError },
    /// The deadline passed before the job finished.
    DeadlineExceeded,
}

pub type JobResult = Result<Vec<ImageResult>, JobError>;

struct Job {
    items: Vec<(Vec<u8>, PredictOptions)>,
    deadline: Instant,
    enqueued: Instant,
    reply: oneshot::Sender<JobResult>,
}

/// Returned by [`InferenceQueue::submit`] when the queue is full.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

pub struct InferenceQueue {
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl InferenceQueue {
    /// Starts `workers` inference threads; at most `capacity` jobs wait beyond the running ones.
    pub fn start(
        predictor: Arc<dyn Predict>,
        workers: usize,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Job>(capacity.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let depth = Arc::new(AtomicUsize::new(0));
        for i in 0..workers.max(1) {
            let rx = Arc::clone(&rx);
            let predictor = Arc::clone(&predictor);
            let depth = Arc::clone(&depth);
            let metrics = Arc::clone(&metrics);
            thread::Builder::new()
                .name(format!("inference-{i}"))
                .spawn(move || worker_loop(&rx, predictor.as_ref(), &depth, &metrics))?;
        }
        Ok(InferenceQueue { tx, depth, metrics })
    }

    /// Queues a job; the receiver yields its result. Dropping the receiver cancels the job.
    pub fn submit(
        &self,
        items: Vec<(Vec<u8>, PredictOptions)>,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<JobResult>, QueueFull> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            items,
            deadline,
            enqueued: Instant::now(),
            reply,
        };
        // Count before sending so a fast worker cannot decrement below zero.
        let d = self.depth.fetch_add(1, Ordering::SeqCst) + 1;
        self.metrics.queue_depth.set(d as i64);
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let d = self.depth.fetch_sub(1, Ordering::SeqCst) - 1;
                self.metrics.queue_depth.set(d as i64);
                Err(QueueFull)
            }
        }
    }

    /// Jobs waiting (not yet taken by a worker).
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }
}

fn worker_loop(
    rx: &Mutex<Receiver<Job>>,
    predictor: &dyn Predict,
    depth: &AtomicUsize,
    metrics: &Metrics,
) {
    loop {
        // Hold the lock only while receiving, so other workers can take the next job.
        let job = {
            let guard = match rx.lock() {
                Ok(g) => g,
                // A poisoned lock means another worker panicked while receiving; the
                // receiver itself is still sound.
                Err(p) => p.into_inner(),
            };
            match guard.recv() {
                Ok(job) => job,
                Err(_) => return, // the queue is gone: the server is shutting down
            }
        };
        let d = depth.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        metrics.queue_depth.set(d as i64);
        metrics
            .stage_seconds
            .with_label_values(&["queue_wait"])
            .observe(job.enqueued.elapsed().as_secs_f64());
        run_job(job, predictor, metrics);
    }
}

fn run_job(job: Job, predictor: &dyn Predict, metrics: &Metrics) {
    let mut results = Vec::with_capacity(job.items.len());
    for (index, (image, opts)) in job.items.iter().enumerate() {
        if job.reply.is_closed() {
            // The handler is gone (client disconnected or it already answered 504).
            metrics.discarded.with_label_values(&["client_gone"]).inc();
            return;
        }
        if Instant::now() >= job.deadline {
            metrics.discarded.with_label_values(&["deadline"]).inc();
            let _ = job.reply.send(Err(JobError::DeadlineExceeded));
            return;
        }
        // A panic inside the pipeline must not kill the worker thread, or the pool would
        // shrink until the server stops answering.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            predictor.predict(image, opts)
        }))
        .unwrap_or_else(|_| Err(PredictError::Inference("the pipeline panicked".into())));
        match outcome {
            Ok(r) => {
                metrics.observe_result(&r);
                results.push(r);
            }
            Err(error) => {
                let _ = job.reply.send(Err(JobError::Predict { index, error }));
                return;
            }
        }
    }
    if job.reply.send(Ok(results)).is_err() {
        metrics.discarded.with_label_values(&["client_gone"]).inc();
    }
}

/// Wraps a predictor with a delay and/or forced failure, for the integration tests' slow and
/// broken models (hidden `--debug-*` flags).
pub struct FaultInjection {
    pub inner: Arc<dyn Predict>,
    pub delay: Duration,
    pub fail: bool,
}

impl Predict for FaultInjection {
    fn predict(&self, image: &[u8], opts: &PredictOptions) -> Result<ImageResult, PredictError> {
        if !self.delay.is_zero() {
            thread::sleep(self.delay);
        }
        if self.fail {
            return Err(PredictError::Inference(
                "injected failure (--debug-fail-inference)".into(),
            ));
        }
        self.inner.predict(image, opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::StageTimings;
    use std::sync::atomic::AtomicUsize;

    struct Fake {
        calls: AtomicUsize,
        delay: Duration,
    }

    impl Predict for Fake {
        fn predict(&self, image: &[u8], _: &PredictOptions) -> Result<ImageResult, PredictError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            thread::sleep(self.delay);
            if image == b"bad" {
                return Err(PredictError::BadImage("bad".into()));
            }
            if image == b"panic" {
                panic!("boom");
            }
            Ok(ImageResult {
                width: image.len() as u32,
                height: 1,
                detections: vec![],
                timings: StageTimings::default(),
            })
        }
    }

    fn queue(workers: usize, cap: usize, delay_ms: u64) -> (InferenceQueue, Arc<Fake>) {
        let fake = Arc::new(Fake {
            calls: AtomicUsize::new(0),
            delay: Duration::from_millis(delay_ms),
        });
        let q = InferenceQueue::start(fake.clone(), workers, cap, Arc::new(Metrics::new("test")))
            .unwrap();
        (q, fake)
    }

    fn item(b: &[u8]) -> (Vec<u8>, PredictOptions) {
        (b.to_vec(), PredictOptions::default())
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[test]
    fn results_in_order_and_errors_indexed() {
        let (q, _) = queue(2, 4, 0);
        let rx = q.submit(vec![item(b"a"), item(b"bbb")], far()).unwrap();
        let r = rx.blocking_recv().unwrap().unwrap();
        assert_eq!(r.iter().map(|r| r.width).collect::<Vec<_>>(), vec![1, 3]);
        let rx = q.submit(vec![item(b"a"), item(b"bad")], far()).unwrap();
        match rx.blocking_recv().unwrap() {
            Err(JobError::Predict {
                index: 1,
                error: PredictError::BadImage(_),
            }) => {}
            other => panic!("{other:?}"),
        }
        // A panicking pipeline is an error, and the worker survives it.
        let rx = q.submit(vec![item(b"panic")], far()).unwrap();
        assert!(matches!(
            rx.blocking_recv().unwrap(),
            Err(JobError::Predict { .. })
        ));
        let rx = q.submit(vec![item(b"ok")], far()).unwrap();
        assert!(rx.blocking_recv().unwrap().is_ok());
    }

    #[test]
    fn full_queue_is_refused() {
        let (q, _) = queue(1, 1, 200);
        let first = q.submit(vec![item(b"a")], far()).unwrap();
        // Let the worker take the first job, so exactly one slot is free.
        thread::sleep(Duration::from_millis(50));
        let second = q.submit(vec![item(b"a")], far()).unwrap();
        assert_eq!(q.depth(), 1);
        assert_eq!(q.submit(vec![item(b"a")], far()).unwrap_err(), QueueFull);
        assert!(first.blocking_recv().unwrap().is_ok());
        assert!(second.blocking_recv().unwrap().is_ok());
        assert_eq!(q.depth(), 0);
    }

    #[test]
    fn abandoned_and_expired_jobs_are_not_run() {
        let (q, fake) = queue(1, 4, 100);
        let busy = q.submit(vec![item(b"a")], far()).unwrap();
        thread::sleep(Duration::from_millis(20));
        // Client gone: the receiver is dropped before a worker takes the job.
        drop(q.submit(vec![item(b"a"), item(b"b")], far()).unwrap());
        // Deadline already past when taken.
        let expired = q.submit(vec![item(b"a")], Instant::now()).unwrap();
        assert!(busy.blocking_recv().unwrap().is_ok());
        assert!(matches!(
            expired.blocking_recv().unwrap(),
            Err(JobError::DeadlineExceeded)
        ));
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    }
}
