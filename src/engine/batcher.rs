//! Shape buckets: prepared images wait here, grouped by padded input shape, until a backend
//! takes the bucket whose oldest image has waited longest.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What a backend should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing is waiting.
    Idle,
    /// Take up to `max_batch_size` images of bucket `index`.
    Take(usize),
    /// The oldest bucket is not full and `max_batch_delay` has not passed: wait this long.
    Wait(Duration),
}

struct Bucket<T> {
    shape: (usize, usize),
    items: VecDeque<(Instant, T)>,
}

pub struct Batcher<T> {
    buckets: Vec<Bucket<T>>,
}

impl<T> Default for Batcher<T> {
    fn default() -> Self {
        Batcher {
            buckets: Vec::new(),
        }
    }
}

impl<T> Batcher<T> {
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.items.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    pub fn push(&mut self, shape: (usize, usize), item: T) {
        let entry = (Instant::now(), item);
        match self.buckets.iter_mut().find(|b| b.shape == shape) {
            Some(b) => b.items.push_back(entry),
            None => self.buckets.push(Bucket {
                shape,
                items: VecDeque::from([entry]),
            }),
        }
    }

    /// The oldest image decides the bucket (first come, first served across shapes). Without a
    /// delay a backend takes whatever that bucket holds; with one it waits for a full batch
    /// until the oldest image has waited `delay`.
    pub fn next(&self, max_batch_size: usize, delay: Option<Duration>, now: Instant) -> Next {
        let oldest = self
            .buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.items.front().map(|(t, _)| (i, *t, b.items.len())))
            .min_by_key(|&(_, t, _)| t);
        let Some((index, since, len)) = oldest else {
            return Next::Idle;
        };
        match delay {
            Some(d) if len < max_batch_size => {
                let waited = now.saturating_duration_since(since);
                if waited < d {
                    Next::Wait(d - waited)
                } else {
                    Next::Take(index)
                }
            }
            _ => Next::Take(index),
        }
    }

    /// Removes up to `max` images of bucket `index`, oldest first, with their time in the bucket.
    pub fn take(&mut self, index: usize, max: usize, now: Instant) -> Vec<(Duration, T)> {
        let Some(bucket) = self.buckets.get_mut(index) else {
            return Vec::new();
        };
        let n = bucket.items.len().min(max.max(1));
        let out: Vec<(Duration, T)> = bucket
            .items
            .drain(..n)
            .map(|(t, item)| (now.saturating_duration_since(t), item))
            .collect();
        if bucket.items.is_empty() {
            self.buckets.swap_remove(index);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_bucket_first_and_batches_capped() {
        let mut b = Batcher::default();
        b.push((32, 64), 1);
        std::thread::sleep(Duration::from_millis(2));
        b.push((64, 64), 2);
        b.push((32, 64), 3);
        b.push((32, 64), 4);
        let now = Instant::now();
        let Next::Take(i) = b.next(2, None, now) else {
            panic!("expected a batch")
        };
        let taken: Vec<i32> = b.take(i, 2, now).into_iter().map(|(_, v)| v).collect();
        assert_eq!(taken, vec![1, 3]);
        // (64, 64)'s image is now the oldest.
        let Next::Take(i) = b.next(2, None, now) else {
            panic!()
        };
        assert_eq!(
            b.take(i, 2, now)
                .into_iter()
                .map(|(_, v)| v)
                .collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(b.len(), 1);
        let Next::Take(i) = b.next(2, None, now) else {
            panic!()
        };
        b.take(i, 8, now);
        assert!(b.is_empty());
        assert_eq!(b.next(2, None, now), Next::Idle);
    }

    #[test]
    fn delay_waits_for_a_full_batch_until_it_expires() {
        let mut b = Batcher::default();
        b.push((32, 32), ());
        let now = Instant::now();
        let delay = Some(Duration::from_millis(50));
        assert!(matches!(b.next(2, delay, now), Next::Wait(d) if d <= Duration::from_millis(50)));
        assert_eq!(b.next(1, delay, now), Next::Take(0), "already full");
        assert_eq!(
            b.next(2, delay, now + Duration::from_millis(60)),
            Next::Take(0)
        );
        b.push((32, 32), ());
        assert_eq!(b.next(2, delay, now), Next::Take(0), "full now");
    }
}
