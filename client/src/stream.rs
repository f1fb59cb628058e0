//! An open watch: [`WatchStream`] reads the newline-delimited JSON
//! events of a `?watch=true` answer one [`WatchEvent`] at a time, and
//! takes a stream silent for three heartbeats for dead.
//!
//! It must not reconnect or relist: that is [`crate::Watcher`]'s loop.

use std::time::Duration;

use serde_json::Value;

use corral_api_types::wire::WatchLine;

use crate::status::{transport, ClientError};

/// Heartbeat asked of watch streams; a stream silent for three of them is
/// considered dead.
pub const WATCH_HEARTBEAT_SECONDS: u64 = 5;

/// One event of a watch stream.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` or `ERROR`.
    pub kind: String,
    pub object: Value,
}

impl WatchEvent {
    /// The object's `metadata.resourceVersion`.
    pub fn resource_version(&self) -> Option<&str> {
        self.object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
    }
}

/// An open watch: newline-delimited JSON events.
pub struct WatchStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
    /// Longest silence tolerated before the stream is taken for dead.
    idle_timeout: Duration,
}

impl WatchStream {
    /// Reads the events of `response`, a watch's answer.
    pub(crate) fn new(response: reqwest::Response) -> WatchStream {
        WatchStream {
            response,
            buffer: Vec::new(),
            idle_timeout: Duration::from_secs(WATCH_HEARTBEAT_SECONDS * 3),
        }
    }

    /// The next event; `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, ClientError> {
        loop {
            if let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=pos).collect();
                let line = &line[..line.len() - 1];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let raw: WatchLine = serde_json::from_slice(line)
                    .map_err(|e| ClientError::Decode(format!("watch event: {e}")))?;
                return Ok(Some(WatchEvent {
                    kind: raw.kind,
                    object: raw.object,
                }));
            }
            let chunk = tokio::time::timeout(self.idle_timeout, self.response.chunk())
                .await
                .map_err(|_| ClientError::Transport("the watch stream went silent".to_string()))?
                .map_err(transport)?;
            match chunk {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
    }
}
