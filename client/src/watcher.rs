//! [`Watcher`]: the one list → watch → relist loop. It lists a path
//! (every page), then watches from the list's revision, resuming after
//! the last revision it saw when a stream ends, and lists again when the
//! server says that revision is compacted (410) or the stream reports an
//! error — as kube-runtime's watcher does. Callers see a
//! [`WatcherEvent::Restarted`] with the whole set after every (re)list,
//! then one event per change. Bookmarks move the revision silently.

use std::time::Duration;

use serde_json::Value;

use crate::{Client, ClientError, WatchStream};

/// What a watcher reports.
#[derive(Debug, Clone)]
pub enum WatcherEvent {
    /// The whole set, after a list: anything not in it is gone.
    Restarted(Vec<Value>),
    Added(Value),
    Modified(Value),
    Deleted(Value),
}

enum State {
    /// Next: list.
    Empty,
    /// Next: open a watch from `revision`.
    Listed { revision: String },
    Watching {
        stream: Box<WatchStream>,
        revision: String,
    },
}

/// A list-and-watch of one list path.
pub struct Watcher {
    client: Client,
    path: String,
    query: Vec<(String, String)>,
    state: State,
    /// Pause after a failed list or watch, before the next try.
    backoff: Duration,
}

impl Watcher {
    pub(crate) fn new(client: Client, path: &str, query: &[(&str, &str)]) -> Watcher {
        Watcher {
            client,
            path: path.to_string(),
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            state: State::Empty,
            backoff: Duration::from_secs(1),
        }
    }

    fn query(&self) -> Vec<(&str, &str)> {
        self.query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// The next event. Errors are returned (for the caller to log or give
    /// up on) and the watcher carries on from where it was at the next
    /// call, after a pause: a failed list is listed again, a failed watch
    /// resumed. Not cancel-safe: a call dropped while it waits (a losing
    /// `select!` branch) drops the open watch, and the next call lists
    /// again — select on a channel fed by a task that owns the watcher.
    pub async fn next(&mut self) -> Result<WatcherEvent, ClientError> {
        loop {
            match std::mem::replace(&mut self.state, State::Empty) {
                State::Empty => {
                    let page = match self.list().await {
                        Ok(p) => p,
                        Err(e) => {
                            tokio::time::sleep(self.backoff).await;
                            return Err(e);
                        }
                    };
                    self.state = State::Listed { revision: page.1 };
                    return Ok(WatcherEvent::Restarted(page.0));
                }
                State::Listed { revision } => {
                    let mut q = self.query();
                    q.push(("resourceVersion", &revision));
                    match self.client.watch(&self.path, &q).await {
                        Ok(stream) => {
                            self.state = State::Watching {
                                stream: Box::new(stream),
                                revision,
                            }
                        }
                        // Compacted: list again.
                        Err(e) if e.code() == Some(410) => {}
                        Err(e) => {
                            self.state = State::Listed { revision };
                            tokio::time::sleep(self.backoff).await;
                            return Err(e);
                        }
                    }
                }
                State::Watching {
                    mut stream,
                    mut revision,
                } => match stream.next().await {
                    // The server ended the stream: resume where we were.
                    Ok(None) => self.state = State::Listed { revision },
                    Ok(Some(event)) => {
                        if let Some(rv) = event.resource_version() {
                            revision = rv.to_string();
                        }
                        let kind = event.kind.clone();
                        self.state = State::Watching { stream, revision };
                        match kind.as_str() {
                            "ADDED" => return Ok(WatcherEvent::Added(event.object)),
                            "MODIFIED" => return Ok(WatcherEvent::Modified(event.object)),
                            "DELETED" => return Ok(WatcherEvent::Deleted(event.object)),
                            // An error (410 once the revision is
                            // compacted) ends the stream: list again.
                            "ERROR" => self.state = State::Empty,
                            // Bookmarks only move the revision.
                            _ => {}
                        }
                    }
                    Err(e) => {
                        self.state = State::Listed { revision };
                        return Err(e);
                    }
                },
            }
        }
    }

    /// Every item, and the revision of the list.
    async fn list(&self) -> Result<(Vec<Value>, String), ClientError> {
        let q = self.query();
        let page = self.client.list_all(&self.path, &q).await?;
        Ok((page.items, page.resource_version))
    }
}
