//! The EC2 Query API façade: parses Query requests (GET or form POST, any
//! path), verifies SigV4/SigV2 signatures against the project's access
//! keys, and turns each action into reads and writes of Corral resources,
//! answering in EC2's XML.
//!
//! It owns the protocol (parameters, signatures, XML, errors, filters,
//! pagination, idempotency) and the mapping between EC2 shapes and
//! resources (ids derived from uids, EC2 names). It must not keep state of
//! its own: everything it remembers (client tokens, EC2 names, reservation
//! ids, terminated instances) is written on the resources in the store. It
//! must not depend on the API server (a peer) nor do what controllers do
//! (scheduling, status): status is only ever read here.

mod actions;
pub mod auth;
pub mod decoded;
pub mod error;
pub mod filter;
pub mod objects;
pub mod page;
pub mod query;
mod server;
pub mod testing;
pub mod xml;

pub use actions::{reads_only, ACTIONS};
pub use error::Ec2Error;
pub use server::{router, serve, Ec2Config, Ec2State};
