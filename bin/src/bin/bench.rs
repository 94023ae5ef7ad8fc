//! `bench`: Keel's benchmarks, each compared in the same run against a physical baseline.
//!
//! - `bench store`: appends through the store (ASYNC_FLUSH / SYNC_FLUSH, several message
//!   sizes and writer counts) and writes the same bytes with plain sequential writes +
//!   fdatasync; prints msgs/s, MB/s and latency percentiles.
//! - `bench recovery`: writes a log of a given size, abandons the store as a crash would, and
//!   times recovery (and a clean restart).

use anyhow::Result;
use clap::{Parser, Subcommand};

#[path = "../bench/store.rs"]
mod store;

#[derive(Parser)]
#[command(name = "bench", about = "Keel benchmarks (each with its baseline, in the same run)")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Store append throughput and latency against raw sequential writes + fdatasync.
    Store(store::StoreArgs),
    /// Recovery time of a crashed store with a log of the given size.
    Recovery(store::RecoveryArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    match Cli::parse().mode {
        Mode::Store(a) => store::run_store(a),
        Mode::Recovery(a) => store::run_recovery(a),
    }
}
