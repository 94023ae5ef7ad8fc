//! Keel's core: everything a RocketMQ-compatible broker needs, written against one runtime
//! seam ([`rt`]) so the same code runs on tokio in production and inside madsim in simulation.
//!
//! Data flows one way: [`store`] knows nothing of the broker; [`config`] reads RocketMQ's
//! properties files; [`rt`] is the only door to time, tasks, network, randomness and disk.

pub mod broker;
pub mod client;
pub mod config;
pub mod json;
pub mod namesrv;
pub mod protocol;
pub mod remoting;
pub mod rt;
pub mod store;
