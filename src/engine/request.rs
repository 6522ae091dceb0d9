//! One submitted request: its images' options, deadline and the slots their results fill.
//! The images run apart (and in different batches); the request answers once, in order.

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::types::{ImageResult, PredictError, PredictOptions};

/// Why a request produced no results.
#[derive(Debug)]
pub enum JobError {
    /// Image `index` of the request failed (the lowest index that failed).
    Predict { index: usize, error: PredictError },
    /// The deadline passed before the request finished.
    DeadlineExceeded,
}

pub type JobResult = Result<Vec<ImageResult>, JobError>;

/// Why an image is not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The request was already answered (an error, or its deadline).
    Answered,
    /// The client is gone (the handler dropped its receiver).
    ClientGone,
    DeadlineExceeded,
    /// An image before this one failed: the request's answer is that error.
    EarlierFailed,
}

pub struct Request {
    pub opts: Vec<PredictOptions>,
    pub deadline: Instant,
    pub submitted: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    reply: Option<oneshot::Sender<JobResult>>,
    results: Vec<Option<ImageResult>>,
    error: Option<(usize, PredictError)>,
    /// Images not yet finished, failed or skipped.
    outstanding: usize,
    /// Images not yet taken by a backend (nor dropped before): while above 0 the request
    /// counts against the queue bound.
    untaken: usize,
    client_gone_counted: bool,
}

/// What finishing an image did to its request, for the metrics.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Answered,
    /// The last image finished but nobody was listening.
    ClientGone,
}

impl Request {
    pub fn new(
        opts: Vec<PredictOptions>,
        deadline: Instant,
        reply: oneshot::Sender<JobResult>,
    ) -> Request {
        let n = opts.len();
        Request {
            opts,
            deadline,
            submitted: Instant::now(),
            inner: Mutex::new(Inner {
                reply: Some(reply),
                results: (0..n).map(|_| None).collect(),
                error: None,
                outstanding: n,
                untaken: n,
                client_gone_counted: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether image `index` should still run, checked before each stage.
    pub fn check(&self, index: usize, now: Instant) -> Result<(), Skip> {
        let inner = self.lock();
        match &inner.reply {
            None => Err(Skip::Answered),
            Some(r) if r.is_closed() => Err(Skip::ClientGone),
            Some(_) if now >= self.deadline => Err(Skip::DeadlineExceeded),
            Some(_) if inner.error.as_ref().is_some_and(|(i, _)| *i < index) => {
                Err(Skip::EarlierFailed)
            }
            Some(_) => Ok(()),
        }
    }

    /// Records that image `index` was taken by a backend or dropped before; true when it was
    /// the request's last image to leave the queue.
    pub fn leave_queue(&self) -> bool {
        let mut inner = self.lock();
        inner.untaken = inner.untaken.saturating_sub(1);
        inner.untaken == 0
    }

    /// Answers 504 now; false when the request was already answered.
    pub fn expire(&self) -> bool {
        let mut inner = self.lock();
        match inner.reply.take() {
            Some(r) => {
                let _ = r.send(Err(JobError::DeadlineExceeded));
                true
            }
            None => false,
        }
    }

    /// True the first time it is called for a request whose client went away.
    pub fn count_client_gone(&self) -> bool {
        let mut inner = self.lock();
        !std::mem::replace(&mut inner.client_gone_counted, true)
    }

    /// Image `index` is done: a result, an error or (`None`) skipped. The last image answers the
    /// request: the results in order, or the error of the lowest failed index.
    pub fn finish(
        &self,
        index: usize,
        outcome: Option<Result<ImageResult, PredictError>>,
    ) -> Outcome {
        let mut inner = self.lock();
        match outcome {
            Some(Ok(r)) => {
                if let Some(slot) = inner.results.get_mut(index) {
                    *slot = Some(r);
                }
            }
            Some(Err(e)) if inner.error.as_ref().is_none_or(|(i, _)| index < *i) => {
                inner.error = Some((index, e));
            }
            Some(Err(_)) | None => {}
        }
        inner.outstanding = inner.outstanding.saturating_sub(1);
        if inner.outstanding > 0 {
            return Outcome::Pending;
        }
        let Some(reply) = inner.reply.take() else {
            return Outcome::Answered;
        };
        let answer = match inner.error.take() {
            Some((index, error)) => Err(JobError::Predict { index, error }),
            None => {
                let results: Option<Vec<ImageResult>> = inner.results.drain(..).collect();
                results.ok_or_else(|| JobError::Predict {
                    index: 0,
                    error: PredictError::Inference("internal: an image has no result".into()),
                })
            }
        };
        if reply.send(answer).is_err() {
            Outcome::ClientGone
        } else {
            Outcome::Answered
        }
    }
}
