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
mod status;
mod stream;
mod watcher;

pub use client::{Client, ListResult, PAGE_SIZE};
pub use status::{ApiStatus, Cause, ClientError, StatusDetails};
pub use stream::{WatchEvent, WatchStream, WATCH_HEARTBEAT_SECONDS};
pub use watcher::{Watcher, WatcherEvent};
