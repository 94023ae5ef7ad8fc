//! Connections carrying [`RemotingCommand`]s: a server that hands requests to a
//! [`Processor`] and a client that correlates responses by opaque.
//!
//! One task per connection, on both sides. It reads whatever bytes are there, decodes every
//! complete frame, and writes every response that is ready in one buffer with one flush, so
//! pipelined requests (a producer's 32 senders share one connection, as RocketMQ's clients
//! do) cost one system call per batch, not per message. On the server, requests of one
//! connection run concurrently inside that task (a long-polling pull does not hold up the
//! sends behind it) without a spawn per request.

mod client;
mod server;

pub use client::{RemotingClient, RequestHandler};
pub(crate) use server::write_all;
pub use server::{not_supported, Connection, Processor, Server, ServerConfig};

use std::future::Future;
use std::pin::Pin;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum RemotingError {
    #[error("connect to {0} failed: {1}")]
    Connect(String, String),
    #[error("request to {0} timed out after {1} ms")]
    Timeout(String, u64),
    #[error("connection to {0} closed")]
    Closed(String),
}
