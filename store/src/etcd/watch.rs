//! Watches on etcd: a task per watch that forwards etcd's events in
//! order and, when the connection drops, opens the watch again from the
//! last delivered revision + 1 (etcd-client does not), backing off while
//! etcd is away. A compacted start ends the watch with `Expired`.
//!
//! It must not skip nor repeat an event across reconnects.

use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::sync::mpsc;

use super::{convert_kv, map_err, utf8_key, EtcdStore};
use crate::contract::{prefix_end, Result, StoreError, WatchEvent, WatchStream};

impl EtcdStore {
    pub(super) async fn watch_from(
        &self,
        prefix: &str,
        after_revision: i64,
    ) -> Result<WatchStream> {
        // etcd acknowledges a watch from a compacted revision and only
        // later cancels it; a read at that revision fails at once, so a
        // caller learns about it here, as with the embedded backend.
        if after_revision > 0 {
            let mut kv = self.client.kv_client();
            kv.get(
                prefix,
                Some(
                    GetOptions::new()
                        .with_range(prefix_end(prefix))
                        .with_count_only()
                        .with_revision(after_revision),
                ),
            )
            .await
            .map_err(|e| map_err(e, after_revision + 1))?;
        }
        let (tx, stream) = WatchStream::channel(1024);
        let mut watcher = EtcdWatcher {
            client: self.client.clone(),
            prefix: prefix.to_string(),
            last_revision: after_revision,
            tx,
        };
        // Establish the first watch before returning, so that a caller who
        // writes right after `watch()` returns cannot race the registration.
        let first = watcher.open().await?;
        tokio::spawn(async move { watcher.run(first).await });
        Ok(stream)
    }
}

struct EtcdWatcher {
    client: Client,
    prefix: String,
    /// Revision of the last event delivered (or the starting point).
    last_revision: i64,
    tx: mpsc::Sender<Result<WatchEvent>>,
}

enum WatchEnd {
    /// The consumer went away.
    Closed,
    /// The connection broke: reopen from `last_revision + 1`.
    Broken,
}

impl EtcdWatcher {
    async fn open(&mut self) -> Result<etcd_client::WatchStream> {
        let options = WatchOptions::new()
            .with_range(prefix_end(&self.prefix))
            .with_start_revision(self.last_revision + 1)
            .with_prev_key();
        let mut client = self.client.watch_client();
        let mut stream = client
            .watch(self.prefix.clone(), Some(options))
            .await
            .map_err(|e| map_err(e, self.last_revision + 1))?;
        // Wait for the "created" ack (or an immediate compaction cancel).
        match stream.message().await {
            Ok(Some(resp)) if resp.canceled() => {
                Err(self.expired_or_backend(resp.compact_revision(), resp.cancel_reason()))
            }
            Ok(Some(resp)) => {
                // The ack carries no events in etcd 3.4, but be safe.
                if self.forward(&resp).await.is_err() {
                    return Err(StoreError::Backend("watch consumer closed".into()));
                }
                Ok(stream)
            }
            Ok(None) => Err(StoreError::Unavailable(
                "etcd closed the watch stream".into(),
            )),
            Err(e) => Err(map_err(e, self.last_revision + 1)),
        }
    }

    fn expired_or_backend(&self, compact_revision: i64, reason: &str) -> StoreError {
        if compact_revision > 0 {
            StoreError::Expired {
                requested: self.last_revision + 1,
                compacted: compact_revision,
            }
        } else {
            StoreError::Backend(format!("etcd cancelled the watch: {reason}").into())
        }
    }

    async fn run(mut self, first: etcd_client::WatchStream) {
        let mut stream = Some(first);
        let mut delay = Duration::from_millis(50);
        loop {
            let current = match stream.take() {
                Some(s) => s,
                None => match self.open().await {
                    Ok(s) => {
                        tracing::info!(prefix = %self.prefix, from = self.last_revision + 1, "etcd watch resumed");
                        delay = Duration::from_millis(50);
                        s
                    }
                    Err(StoreError::Backend(e)) if self.tx.is_closed() => {
                        let _ = e;
                        return;
                    }
                    Err(e @ StoreError::Expired { .. }) => {
                        let _ = self.tx.send(Err(e)).await;
                        return;
                    }
                    Err(e) => {
                        match &e {
                            StoreError::Unavailable(e) => {
                                tracing::debug!(error = %e, "etcd watch reconnect failed; retrying")
                            }
                            e => tracing::debug!(error = %e, "etcd watch reopen failed; retrying"),
                        }
                        if self.wait_or_closed(delay).await {
                            return;
                        }
                        delay = (delay * 2).min(Duration::from_secs(2));
                        continue;
                    }
                },
            };
            match self.pump(current).await {
                WatchEnd::Closed => return,
                WatchEnd::Broken => {
                    if self.wait_or_closed(delay).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps `delay`; true if the consumer went away meanwhile.
    async fn wait_or_closed(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => self.tx.is_closed(),
            _ = self.tx.closed() => true,
        }
    }

    async fn pump(&mut self, mut stream: etcd_client::WatchStream) -> WatchEnd {
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = self.tx.closed() => return WatchEnd::Closed,
            };
            match message {
                Ok(Some(resp)) => {
                    if resp.canceled() {
                        let err =
                            self.expired_or_backend(resp.compact_revision(), resp.cancel_reason());
                        if matches!(err, StoreError::Expired { .. }) {
                            let _ = self.tx.send(Err(err)).await;
                            return WatchEnd::Closed;
                        }
                        tracing::warn!(error = %err, "etcd watch cancelled; reopening");
                        return WatchEnd::Broken;
                    }
                    if self.forward(&resp).await.is_err() {
                        return WatchEnd::Closed;
                    }
                }
                Ok(None) => return WatchEnd::Broken,
                Err(e) => {
                    tracing::debug!(error = %e, prefix = %self.prefix, "etcd watch broke");
                    return WatchEnd::Broken;
                }
            }
        }
    }

    async fn forward(&mut self, resp: &etcd_client::WatchResponse) -> Result<(), ()> {
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision();
            let converted = match event.event_type() {
                EventType::Put => convert_kv(kv).map(|kv| WatchEvent::Put {
                    kv,
                    prev: event.prev_kv().and_then(|p| convert_kv(p).ok()),
                }),
                EventType::Delete => utf8_key(kv.key()).map(|key| WatchEvent::Delete {
                    key,
                    revision,
                    prev: event.prev_kv().and_then(|p| convert_kv(p).ok()),
                }),
            };
            if self.tx.send(converted).await.is_err() {
                return Err(());
            }
            self.last_revision = revision;
        }
        Ok(())
    }
}
