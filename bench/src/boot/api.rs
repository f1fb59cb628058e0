//! The benchmark's view of the native API: requests and a watch of the
//! bench project's instances.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use serde_json::Value;

use super::*;

#[derive(Clone)]
pub(super) struct Api {
    pub(super) url: String,
    pub(super) token: String,
    pub(super) http: reqwest::Client,
}

impl Api {
    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(60));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let code = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((code, v))
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

pub(super) fn resource_version(obj: &Value) -> Option<String> {
    match &obj["metadata"]["resourceVersion"] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
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

    /// Lists the project: every item observed, names no longer listed
    /// are gone; answers the list's revision.
    pub(super) async fn relist(&self, api: &Api) -> Result<String> {
        let list = api
            .ok(
                reqwest::Method::GET,
                &format!("/v1/projects/{PROJECT}/instances"),
                None,
            )
            .await?;
        let now = Instant::now();
        let mut listed = HashSet::new();
        for item in list["items"].as_array().into_iter().flatten() {
            self.observe(item, now);
            if let Some(n) = item["metadata"]["name"].as_str() {
                listed.insert(n.to_string());
            }
        }
        let known: Vec<String> = self.seen.lock().expect("seen").keys().cloned().collect();
        for n in known.iter().filter(|n| !listed.contains(*n)) {
            self.gone(n, now);
        }
        self.bump();
        resource_version(&list).context("the instance list has no resourceVersion")
    }

    /// Follows the project's instances until aborted, resuming after
    /// disconnects and relisting when the revision expired.
    pub(super) async fn run(self, api: Api) {
        let mut rv: Option<String> = None;
        loop {
            let from = match rv.clone() {
                Some(rv) => rv,
                None => match self.relist(&api).await {
                    Ok(rv) => rv,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "bench watch: relist failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            rv = Some(from.clone());
            let resp = api
                .http
                .get(format!(
                    "{}/v1/projects/{PROJECT}/instances?watch=true&resourceVersion={from}",
                    api.url
                ))
                .bearer_auth(&api.token)
                .send()
                .await;
            match resp {
                Ok(r) if r.status().as_u16() == 410 => rv = None,
                Ok(r) if r.status().is_success() => {
                    let mut stream = r.bytes_stream();
                    let mut buf: Vec<u8> = Vec::new();
                    while let Some(Ok(chunk)) = stream.next().await {
                        let now = Instant::now();
                        buf.extend_from_slice(&chunk);
                        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=pos).collect();
                            let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                                continue;
                            };
                            let obj = &ev["object"];
                            match ev["type"].as_str().unwrap_or("") {
                                "ADDED" | "MODIFIED" => self.observe(obj, now),
                                "DELETED" => {
                                    if let Some(n) = obj["metadata"]["name"].as_str() {
                                        self.gone(n, now);
                                    }
                                }
                                "ERROR" => {
                                    rv = None;
                                    continue;
                                }
                                _ => {}
                            }
                            if rv.is_some() {
                                if let Some(v) = resource_version(obj) {
                                    rv = Some(v);
                                }
                            }
                            self.bump();
                        }
                        if rv.is_none() {
                            break;
                        }
                    }
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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
