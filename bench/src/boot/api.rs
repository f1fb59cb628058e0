//! The benchmark's view of the native API: requests and a watch of the
//! bench project's instances.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use corral_client::{Client, WatcherEvent};
use serde_json::Value;

use super::*;

/// The admin's client, with the calls the rounds judge themselves.
#[derive(Clone)]
pub(super) struct Api {
    pub(super) url: String,
    pub(super) client: Client,
}

impl Api {
    pub(super) fn new(url: String, token: &str) -> Result<Api> {
        let client = Client::with_ca(&url, token, None)?;
        Ok(Api { url, client })
    }

    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let (code, v) = self
            .client
            .exchange(method.clone(), path, body)
            .await
            .with_context(|| format!("{method} {path}"))?;
        Ok((code.as_u16(), v))
    }

    pub(super) async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let (code, v) = self.call(method.clone(), path, body).await?;
        anyhow::ensure!((200..300).contains(&code), "{method} {path}: {code} {v}");
        Ok(v)
    }

    pub(super) async fn instance_names(&self) -> Result<Vec<String>> {
        let list = self
            .ok(
                reqwest::Method::GET,
                &format!("/v1/projects/{PROJECT}/instances"),
                None,
            )
            .await?;
        Ok(list["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

pub(super) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(super) fn has_true_condition(obj: &Value, type_: &str) -> bool {
    obj["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == type_ && c["status"] == "True")
    })
}

/// When the watch first showed each milestone of an instance.
#[derive(Clone, Copy, Default)]
pub(super) struct Seen {
    pub(super) scheduled: Option<Instant>,
    pub(super) running: Option<Instant>,
    pub(super) ready: Option<Instant>,
    pub(super) gone: Option<Instant>,
}

#[derive(Clone)]
pub(super) struct Watcher {
    pub(super) seen: Arc<Mutex<HashMap<String, Seen>>>,
    pub(super) uids: Arc<Mutex<HashSet<String>>>,
    pub(super) changed: tokio::sync::watch::Sender<u64>,
}

impl Watcher {
    pub(super) fn observe(&self, obj: &Value, at: Instant) {
        let Some(name) = obj["metadata"]["name"].as_str() else {
            return;
        };
        if let Some(uid) = obj["metadata"]["uid"].as_str() {
            self.uids.lock().expect("uids").insert(uid.to_string());
        }
        let mut seen = self.seen.lock().expect("seen");
        let s = seen.entry(name.to_string()).or_default();
        if obj["status"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
        {
            s.scheduled.get_or_insert(at);
        }
        if obj["status"]["phase"]
            .as_str()
            .is_some_and(|p| p.eq_ignore_ascii_case("running"))
        {
            s.running.get_or_insert(at);
        }
        if has_true_condition(obj, "Ready") {
            s.ready.get_or_insert(at);
        }
    }

    pub(super) fn gone(&self, name: &str, at: Instant) {
        let mut seen = self.seen.lock().expect("seen");
        seen.entry(name.to_string())
            .or_default()
            .gone
            .get_or_insert(at);
    }

    pub(super) fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// The whole set after a (re)list: every item observed, names no
    /// longer listed are gone.
    fn restarted(&self, items: &[Value], now: Instant) {
        let mut listed = HashSet::new();
        for item in items {
            self.observe(item, now);
            if let Some(n) = item["metadata"]["name"].as_str() {
                listed.insert(n.to_string());
            }
        }
        let known: Vec<String> = self.seen.lock().expect("seen").keys().cloned().collect();
        for n in known.iter().filter(|n| !listed.contains(*n)) {
            self.gone(n, now);
        }
    }

    /// Follows the project's instances until aborted, on corral-client's
    /// watcher (list, watch, resume, relist on 410).
    pub(super) async fn run(self, api: Api) {
        let mut watcher = api
            .client
            .watcher(&format!("/v1/projects/{PROJECT}/instances"), &[]);
        loop {
            let event = match watcher.next().await {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(error = %e, "bench watch");
                    continue;
                }
            };
            let now = Instant::now();
            match event {
                WatcherEvent::Restarted(items) => self.restarted(&items, now),
                WatcherEvent::Added(obj) | WatcherEvent::Modified(obj) => self.observe(&obj, now),
                WatcherEvent::Deleted(obj) => {
                    if let Some(n) = obj["metadata"]["name"].as_str() {
                        self.gone(n, now);
                    }
                }
            }
            self.bump();
        }
    }

    /// Waits until `done` holds for every name, or the deadline.
    pub(super) async fn wait_all(
        &self,
        names: &[String],
        deadline: tokio::time::Instant,
        done: impl Fn(&Seen) -> bool,
    ) -> Result<(), Vec<String>> {
        let mut rx = self.changed.subscribe();
        loop {
            let missing: Vec<String> = {
                let seen = self.seen.lock().expect("seen");
                names
                    .iter()
                    .filter(|n| !seen.get(*n).is_some_and(&done))
                    .cloned()
                    .collect()
            };
            if missing.is_empty() {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(missing),
            }
        }
    }
}
