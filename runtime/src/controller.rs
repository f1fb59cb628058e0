//! Runs a [`Reconciler`] over a kind: every change to an object (or to
//! something mapped to it) queues its key; workers take keys from the
//! [`WorkQueue`] and reconcile them, level-triggered, with the object as the
//! cache has it now — or `None` when it is gone, which is a normal case.
//!
//! A reconcile is idempotent and takes no input but the key: the happy path
//! and the recovery path are the same code. A periodic resync queues every
//! key again, backing up the triggers.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use corral_api_types::Resource;
use tokio::sync::watch;

use crate::metrics::ControllerMetrics;
use crate::queue::{QueueOptions, WorkQueue};
use crate::reflector::{Cache, Change, ObjectRef};

/// What to do after a successful reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reconcile again after this long even if nothing changes.
    Requeue(Duration),
    /// Wait for the next change (or resync).
    AwaitChange,
}

/// A reconcile failure: logged, counted, retried with per-key backoff.
pub type ReconcileError = Box<dyn std::error::Error + Send + Sync>;

#[async_trait]
pub trait Reconciler<K: Resource>: Send + Sync + 'static {
    /// Makes the world match `object` (or clean up after it, if `None`).
    async fn reconcile(
        &self,
        key: &ObjectRef,
        object: Option<Arc<K>>,
    ) -> Result<Action, ReconcileError>;
}

/// Stops controllers: flip to `true` to stop.
pub type Shutdown = watch::Receiver<bool>;

/// Starts a secondary trigger feeding the queue.
type Trigger = Box<dyn FnOnce(Arc<WorkQueue<ObjectRef>>, Shutdown) + Send>;

/// Builder and runner of one controller.
pub struct Controller<K: Resource> {
    name: &'static str,
    cache: Cache<K>,
    queue: Arc<WorkQueue<ObjectRef>>,
    concurrency: usize,
    resync: Duration,
    metrics: Option<ControllerMetrics>,
    triggers: Vec<Trigger>,
}

impl<K: Resource> Controller<K> {
    pub fn new(name: &'static str, cache: Cache<K>) -> Controller<K> {
        Controller {
            name,
            cache,
            queue: WorkQueue::new(QueueOptions::default()),
            concurrency: 8,
            resync: Duration::from_secs(300),
            metrics: None,
            triggers: Vec::new(),
        }
    }

    pub fn queue_options(mut self, options: QueueOptions) -> Self {
        self.queue = WorkQueue::new(options);
        self
    }

    /// Workers reconciling different keys at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    pub fn resync_every(mut self, every: Duration) -> Self {
        self.resync = every;
        self
    }

    pub fn metrics(mut self, metrics: ControllerMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Also reconcile the keys `map` returns whenever an object of another
    /// kind changes (e.g. a Node change wakes the Pending Instances).
    pub fn watches<O, F>(mut self, other: Cache<O>, map: F) -> Self
    where
        O: Resource,
        F: Fn(&Change<O>) -> Vec<ObjectRef> + Send + Sync + 'static,
    {
        self.triggers.push(Box::new(move |queue, mut shutdown| {
            let mut changes = other.subscribe();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        c = changes.recv() => match c {
                            Some(c) => for key in map(&c) { queue.add(key) },
                            None => return,
                        },
                        _ = shutdown.changed() => return,
                    }
                }
            });
        }));
        self
    }

    /// A handle to queue keys from outside (tests, other controllers).
    pub fn queue(&self) -> Arc<WorkQueue<ObjectRef>> {
        self.queue.clone()
    }

    /// Runs until `shutdown` turns true. In-flight reconciles finish.
    pub async fn run<R: Reconciler<K>>(self, reconciler: Arc<R>, mut shutdown: Shutdown) {
        let Controller {
            name,
            cache,
            queue,
            concurrency,
            resync,
            metrics,
            triggers,
        } = self;
        let mut changes = cache.subscribe();
        cache.wait_ready().await;
        for trigger in triggers {
            trigger(queue.clone(), shutdown.clone());
        }
        for key in cache.keys() {
            queue.add(key);
        }
        tracing::info!(
            controller = name,
            objects = cache.len(),
            "controller started"
        );

        // Own changes -> queue; periodic resync.
        let feeder = {
            let queue = queue.clone();
            let cache = cache.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(resync);
                ticker.tick().await;
                loop {
                    tokio::select! {
                        c = changes.recv() => match c {
                            Some(c) => queue.add(ObjectRef::of(c.object().as_ref())),
                            None => return,
                        },
                        _ = ticker.tick() => for key in cache.keys() { queue.add(key) },
                        _ = shutdown.changed() => return,
                    }
                }
            })
        };

        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let queue = queue.clone();
            let cache = cache.clone();
            let reconciler = reconciler.clone();
            let metrics = metrics.clone();
            workers.push(tokio::spawn(async move {
                while let Some(key) = queue.get().await {
                    let object = cache.get(&key);
                    let started = Instant::now();
                    let result = reconciler.reconcile(&key, object).await;
                    if let Some(m) = &metrics {
                        m.observe(started.elapsed(), result.is_err(), queue.len());
                    }
                    match result {
                        Ok(Action::AwaitChange) => queue.forget(&key),
                        Ok(Action::Requeue(after)) => {
                            queue.forget(&key);
                            queue.add_after(key.clone(), after);
                        }
                        Err(e) => {
                            let delay = queue.add_rate_limited(key.clone());
                            tracing::warn!(controller = name, %key, error = %e, retry_in = ?delay, "reconcile failed");
                        }
                    }
                    queue.done(&key);
                }
            }));
        }
        let _ = shutdown.wait_for(|stop| *stop).await;
        queue.shut_down();
        feeder.abort();
        for w in workers {
            let _ = w.await;
        }
        tracing::info!(controller = name, "controller stopped");
    }
}

/// Runs `f` only while `leading` is true; stops it (via its shutdown)
/// when leadership is lost, and starts it again when regained.
pub async fn while_leading<F, Fut>(mut leading: watch::Receiver<bool>, mut stop: Shutdown, f: F)
where
    F: Fn(Shutdown) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        if !becomes(&mut leading, true).await {
            return;
        }
        let (tx, rx) = watch::channel(false);
        let running = tokio::spawn(f(rx));
        let stopping = tokio::select! {
            _ = becomes(&mut leading, false) => false,
            _ = becomes(&mut stop, true) => true,
        };
        let _ = tx.send(true);
        let _ = running.await;
        if stopping || *stop.borrow() {
            return;
        }
    }
}

/// Waits until the flag equals `value`; false if its sender is gone.
/// (Returns no guard, so callers' futures stay `Send`.)
async fn becomes(flag: &mut watch::Receiver<bool>, value: bool) -> bool {
    flag.wait_for(|v| *v == value).await.is_ok()
}
