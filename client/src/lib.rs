//! The one client of Corral's native API, for everything that talks to it
//! over HTTP: the CLI, node agents, tests and benchmarks (and later the
//! web console's server side and GitOps tooling).
//!
//! [`Client`] sends JSON with a bearer token and turns `Status` error
//! bodies into [`ApiStatus`]; it pages lists and opens NDJSON watch
//! streams. [`Watcher`] is the one list → watch → relist-on-410 loop.
//!
//! It must not know any kind's rules, nor the server's internals: it
//! speaks the wire format of docs/API.md only.

mod client;
mod watcher;

pub use client::{
    ApiStatus, Cause, Client, ClientError, ListResult, StatusDetails, WatchEvent, WatchStream,
    PAGE_SIZE, WATCH_HEARTBEAT_SECONDS,
};
pub use watcher::{Watcher, WatcherEvent};
