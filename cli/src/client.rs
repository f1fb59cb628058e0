//! The native API client the CLI verbs use: `corral-client`'s, shared
//! with node agents, tests and benchmarks.

pub use corral_client::*;
