pub mod config;
pub mod rt;
pub mod store;
