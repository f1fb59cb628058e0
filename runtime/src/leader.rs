//! Leader election: exactly one process runs the controllers.
//!
//! On etcd, leadership is a key (`/corral/leader/<name>`) created only if
//! absent and attached to a lease of `ttl`. The leader renews the lease
//! every `ttl/3`. Two rules keep two leaders from ever reconciling at once:
//!
//! - The leader steps down on its own once `ttl - margin` has passed since
//!   the send time of its last *acknowledged* renewal. etcd can only expire
//!   the lease `ttl` after it received that renewal, which is later; so the
//!   old leader has stopped before the key can vanish. Nothing the leader
//!   waits on (a renewal, reopening its watch) may outlast that moment: a
//!   connection to etcd that neither answers nor fails must not keep it
//!   leading.
//! - A follower campaigns only when the key is gone (deleted by a graceful
//!   leader's lease revoke, or by etcd at lease expiry after a crash).
//!
//! ```text
//!  follower --key absent, create wins--> leader --renewals stop for ttl-margin--> follower
//!     ^                                    |
//!     └──── key deleted / lease expired ───┘ (another process)
//! ```
//!
//! With the embedded store there is one process by construction:
//! [`always_leader`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::controller::Shutdown;

/// A leadership flag that is always true (single-process deployments).
pub fn always_leader() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(true);
    // Keep the sender alive for the life of the process.
    std::mem::forget(tx);
    rx
}

/// Campaigns for and holds leadership on etcd.
pub struct LeaderElection {
    client: Client,
    key: String,
    identity: String,
    ttl: Duration,
    /// Test hook: when false, renewals are not sent (a hung leader).
    renewals: Arc<AtomicBool>,
}

impl LeaderElection {
    pub fn new(client: Client, name: &str, identity: &str, ttl: Duration) -> LeaderElection {
        LeaderElection {
            client,
            key: format!("/corral/leader/{name}"),
            identity: identity.to_string(),
            ttl: ttl.max(Duration::from_secs(2)),
            renewals: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Switch to stop (false) or resume (true) lease renewals, to test what
    /// a leader does when it cannot reach etcd.
    pub fn renewals_switch(&self) -> Arc<AtomicBool> {
        self.renewals.clone()
    }

    /// Starts campaigning in the background; the returned flag says whether
    /// this process leads right now. `stop` resigns (revoking the lease).
    pub fn spawn(self, stop: Shutdown) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(self.run(tx, stop));
        rx
    }

    async fn run(mut self, leading: watch::Sender<bool>, mut stop: Shutdown) {
        loop {
            if *stop.borrow() {
                return;
            }
            let outcome = tokio::select! {
                r = self.term(&leading) => r,
                _ = stop.wait_for(|s| *s) => Ok(()),
            };
            leading.send_replace(false);
            if let Err(e) = outcome {
                tracing::warn!(key = %self.key, error = %e, "leader election error; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    /// One term: get a lease, win the key, hold it while renewals succeed.
    async fn term(&mut self, leading: &watch::Sender<bool>) -> Result<(), etcd_client::Error> {
        let ttl_secs = self.ttl.as_secs() as i64;
        let lease = self.client.lease_grant(ttl_secs, None).await?.id();
        let result = self.campaign_and_hold(lease, leading).await;
        // Whatever happened, let the key go quickly (best effort).
        leading.send_replace(false);
        let _ = self.client.lease_revoke(lease).await;
        result
    }

    async fn campaign_and_hold(
        &mut self,
        lease: i64,
        leading: &watch::Sender<bool>,
    ) -> Result<(), etcd_client::Error> {
        let (mut keeper, mut responses) = self.client.lease_keep_alive(lease).await?;
        let renew_every = self.ttl / 3;
        let margin = self.ttl / 3;
        // Keep the lease alive while campaigning too.
        let mut last_ack = Instant::now();
        loop {
            // Try to take the key.
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    self.key.clone(),
                    self.identity.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(self.key.clone(), None)]);
            let resp = self.client.txn(txn).await?;
            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            if resp.succeeded() {
                tracing::info!(key = %self.key, identity = %self.identity, "became leader");
                leading.send_replace(true);
                return self
                    .hold(
                        lease,
                        &mut keeper,
                        &mut responses,
                        revision,
                        last_ack,
                        renew_every,
                        margin,
                    )
                    .await;
            }
            // Someone leads: wait for the key to go, renewing our lease.
            let mut watch = self
                .client
                .watch(
                    self.key.clone(),
                    Some(WatchOptions::new().with_start_revision(revision + 1)),
                )
                .await?;
            let mut tick = tokio::time::interval(renew_every);
            loop {
                tokio::select! {
                    m = watch.message() => {
                        let Some(m) = m? else { break };
                        if m.events().iter().any(|e| e.event_type() == etcd_client::EventType::Delete) {
                            break;
                        }
                    }
                    _ = tick.tick() => {
                        if self.renewals.load(Ordering::SeqCst) {
                            // etcd renewed the lease between send and
                            // answer: count from the send, the earlier.
                            let sent = Instant::now();
                            keeper.keep_alive().await?;
                            if let Some(r) = responses.message().await? {
                                if r.ttl() <= 0 {
                                    return Ok(()); // lease gone: new term
                                }
                                last_ack = sent;
                            }
                        }
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn hold(
        &mut self,
        lease: i64,
        keeper: &mut etcd_client::LeaseKeeper,
        responses: &mut etcd_client::LeaseKeepAliveStream,
        won_at: i64,
        mut last_ack: Instant,
        renew_every: Duration,
        margin: Duration,
    ) -> Result<(), etcd_client::Error> {
        let mut watch = self
            .client
            .watch(
                self.key.clone(),
                Some(WatchOptions::new().with_start_revision(won_at + 1)),
            )
            .await?;
        let mut tick = tokio::time::interval(renew_every);
        loop {
            // Nothing below may wait past the deadline: a renewal or a
            // watch reopening that hangs (etcd unreachable through a
            // connection that neither answers nor fails) would otherwise
            // keep this process leading after etcd let the lease go.
            let deadline = last_ack + self.ttl - margin;
            tokio::select! {
                // The deadline first: tokio picks at random among ready
                // branches, and a renewal tick due at the same moment
                // must not win that draw. Renewals before the watch: a
                // watch that cannot be reopened is ready at every turn
                // and must not starve them.
                biased;
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(key = %self.key, "lease not renewed in time; stepping down");
                    return Ok(());
                }
                _ = tick.tick() => {
                    if !self.renewals.load(Ordering::SeqCst) {
                        continue;
                    }
                    let sent = Instant::now();
                    let renewed = async {
                        keeper.keep_alive().await?;
                        responses.message().await
                    };
                    match tokio::time::timeout_at(deadline.min(sent + renew_every), renewed).await {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => last_ack = sent,
                        Ok(Ok(_)) => {
                            tracing::warn!(key = %self.key, lease, "lease expired; stepping down");
                            return Ok(());
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "lease renewal failed"),
                        Err(_) => tracing::warn!("lease renewal timed out"),
                    }
                }
                m = watch.message() => {
                    match m {
                        Ok(Some(m)) if !m.events().is_empty() => {
                            tracing::warn!(key = %self.key, "leader key changed; stepping down");
                            return Ok(());
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => {
                            // Lost the watch: renewals decide from here.
                            let reopen = self.client.watch(self.key.clone(), Some(WatchOptions::new().with_start_revision(won_at + 1)));
                            watch = match tokio::time::timeout_at(deadline, reopen).await {
                                Ok(Ok(w)) => w,
                                _ => {
                                    tokio::time::sleep_until(deadline.min(Instant::now() + renew_every / 4)).await;
                                    continue;
                                }
                            };
                        }
                    }
                }
            }
        }
    }
}
