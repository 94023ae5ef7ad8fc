pub mod config;
pub mod json;
pub mod rt;
pub mod store;
