//! The work queue between "something changed" and "reconcile it".
//!
//! - A key waits in the queue at most once (adding it again is a no-op).
//! - A key is never handed to two workers at once: adding a key that is
//!   being processed marks it dirty, and it is queued again when done.
//! - Failures back off per key, exponentially (`base * 2^n`, capped), and a
//!   success resets the key's count (kube-rs lacked this reset for years).
//! - A global token bucket bounds how fast keys are handed out, so a storm
//!   of changes cannot starve the store.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Tuning for a [`WorkQueue`].
#[derive(Debug, Clone)]
pub struct QueueOptions {
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Keys handed out per second, sustained.
    pub rate: f64,
    /// Keys that may be handed out at once after a quiet period.
    pub burst: f64,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(300),
            rate: 2000.0,
            burst: 5000.0,
        }
    }
}

struct State<T> {
    queue: VecDeque<T>,
    queued: HashSet<T>,
    processing: HashSet<T>,
    dirty: HashSet<T>,
    failures: HashMap<T, u32>,
    tokens: f64,
    refilled: Instant,
    shut_down: bool,
}

/// A deduplicating, rate-limited queue of keys.
pub struct WorkQueue<T> {
    state: Mutex<State<T>>,
    notify: Notify,
    options: QueueOptions,
}

impl<T: Clone + Eq + Hash + Send + 'static> WorkQueue<T> {
    pub fn new(options: QueueOptions) -> Arc<WorkQueue<T>> {
        Arc::new(WorkQueue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued: HashSet::new(),
                processing: HashSet::new(),
                dirty: HashSet::new(),
                failures: HashMap::new(),
                tokens: options.burst,
                refilled: Instant::now(),
                shut_down: false,
            }),
            notify: Notify::new(),
            options,
        })
    }

    /// Queues `key` now (unless already queued; if being processed, it is
    /// queued again when that finishes).
    pub fn add(&self, key: T) {
        let mut s = self.state.lock().expect("queue lock");
        if s.shut_down {
            return;
        }
        if s.processing.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        if s.queued.insert(key.clone()) {
            s.queue.push_back(key);
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let queue = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(q) = queue.upgrade() {
                q.add(key);
            }
        });
    }

    /// Queues `key` after its backoff delay and counts one more failure.
    /// Returns the delay.
    pub fn add_rate_limited(self: &Arc<Self>, key: T) -> Duration {
        let delay = {
            let mut s = self.state.lock().expect("queue lock");
            let n = s.failures.entry(key.clone()).or_insert(0);
            let delay = self
                .options
                .backoff_base
                .saturating_mul(1u32 << (*n).min(20))
                .min(self.options.backoff_max);
            *n += 1;
            delay
        };
        self.add_after(key, delay);
        delay
    }

    /// Clears `key`'s failure count (call after a successful reconcile).
    pub fn forget(&self, key: &T) {
        self.state.lock().expect("queue lock").failures.remove(key);
    }

    /// Failures counted for `key` since its last success.
    pub fn failures(&self, key: &T) -> u32 {
        self.state
            .lock()
            .expect("queue lock")
            .failures
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// The next key to process; `None` once shut down. The caller must
    /// call [`WorkQueue::done`] with it.
    pub async fn get(&self) -> Option<T> {
        loop {
            let wait = {
                let mut s = self.state.lock().expect("queue lock");
                if s.shut_down {
                    return None;
                }
                let now = Instant::now();
                let elapsed = now.duration_since(s.refilled).as_secs_f64();
                s.tokens = (s.tokens + elapsed * self.options.rate).min(self.options.burst);
                s.refilled = now;
                if s.queue.is_empty() {
                    None
                } else if s.tokens >= 1.0 {
                    let key = s.queue.pop_front().expect("non-empty");
                    s.queued.remove(&key);
                    s.processing.insert(key.clone());
                    s.tokens -= 1.0;
                    return Some(key);
                } else {
                    Some(Duration::from_secs_f64(
                        (1.0 - s.tokens) / self.options.rate,
                    ))
                }
            };
            match wait {
                // Rate limited: wait for a token.
                Some(d) => tokio::time::sleep(d).await,
                None => self.notify.notified().await,
            }
        }
    }

    /// Marks `key` finished; re-queues it if it changed meanwhile.
    pub fn done(&self, key: &T) {
        let mut s = self.state.lock().expect("queue lock");
        s.processing.remove(key);
        if s.dirty.remove(key) && s.queued.insert(key.clone()) {
            s.queue.push_back(key.clone());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Keys waiting (not counting those being processed).
    pub fn len(&self) -> usize {
        self.state.lock().expect("queue lock").queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops handing out keys; waiting `get`s return `None`.
    pub fn shut_down(&self) {
        self.state.lock().expect("queue lock").shut_down = true;
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> QueueOptions {
        QueueOptions {
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(80),
            rate: 1e6,
            burst: 1e6,
        }
    }

    #[tokio::test]
    async fn dedupes_queued_keys() {
        let q = WorkQueue::new(fast());
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        assert_eq!(q.get().await, Some("a"));
        assert_eq!(q.get().await, Some("b"));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn never_hands_out_a_key_twice_at_once() {
        let q = WorkQueue::new(fast());
        q.add("a");
        let k = q.get().await.unwrap();
        // Changed while processing: not handed out again yet.
        q.add("a");
        assert!(q.is_empty());
        let got = tokio::time::timeout(Duration::from_millis(50), q.get()).await;
        assert!(got.is_err(), "a key in process must not be handed out");
        q.done(&k);
        assert_eq!(q.get().await, Some("a"), "dirty key comes back after done");
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_then_resets_on_success() {
        let q = WorkQueue::new(fast());
        let d: Vec<Duration> = (0..5).map(|_| q.add_rate_limited("k")).collect();
        assert_eq!(
            d,
            [10, 20, 40, 80, 80].map(Duration::from_millis).to_vec(),
            "exponential, capped"
        );
        assert_eq!(q.failures(&"k"), 5);
        q.forget(&"k");
        assert_eq!(q.failures(&"k"), 0);
        assert_eq!(q.add_rate_limited("k"), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_add_arrives_after_the_delay() {
        let q = WorkQueue::new(fast());
        q.add_after("later", Duration::from_secs(5));
        tokio::task::yield_now().await;
        assert!(q.is_empty());
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(q.get().await, Some("later"));
    }

    #[tokio::test(start_paused = true)]
    async fn global_rate_limit_spaces_out_keys() {
        let q = WorkQueue::new(QueueOptions {
            rate: 10.0,
            burst: 2.0,
            ..fast()
        });
        for i in 0..6 {
            q.add(i);
        }
        let start = Instant::now();
        for _ in 0..6 {
            let k = q.get().await.unwrap();
            q.done(&k);
        }
        // Two from the burst, four at 10/s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(390), "{took:?}");
        assert!(took <= Duration::from_millis(500), "{took:?}");
    }

    #[tokio::test]
    async fn shut_down_releases_waiters() {
        let q: Arc<WorkQueue<u32>> = WorkQueue::new(fast());
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.get().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.shut_down();
        assert_eq!(waiter.await.unwrap(), None);
    }
}
