//! `bench`: Keel's benchmarks, each compared in the same run against a physical baseline.
//!
//! - `bench store`: appends through the store (ASYNC_FLUSH / SYNC_FLUSH, several message
//!   sizes and writer counts) and writes the same bytes with plain sequential writes +
//!   fdatasync; prints msgs/s, MB/s and latency percentiles.
//! - `bench recovery`: writes a log of a given size, abandons the store as a crash would, and
//!   times recovery (and a clean restart).
//! - `bench produce` / `bench consume`: against a running cluster, RocketMQ's benchmark lines.
//! - `bench echo`: raw loopback request/response of the same frame bytes (the baseline).
//! - `bench cluster`: the produce matrix with the echo baseline, broker processes per flush
//!   mode started and stopped by the bench itself.
//! - `bench replication`: single master, 2m-noslave, 2m-2s-async and 2m-2s-sync sends in one
//!   run, the slave's lag, and a consumer's resume time from the slave after a SIGKILL.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[path = "../bench/net.rs"]
mod net;
#[path = "../bench/replication.rs"]
mod replication;
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
    /// Send to a running cluster.
    Produce(net::ProduceArgs),
    /// Consume from a running cluster.
    Consume(net::ConsumeArgs),
    /// Raw loopback request/response echo (starts its own server unless --addr is given).
    Echo(net::EchoArgs),
    /// An echo server for `echo --addr` and `cluster`.
    #[command(name = "echo-server")]
    EchoServer {
        #[arg(long, default_value = "127.0.0.1:19999")]
        bind: String,
    },
    /// The produce matrix against broker processes, with the echo baseline.
    Cluster(net::ClusterArgs),
    /// Replicated against unreplicated sends, slave lag, resume from the slave.
    Replication(replication::ReplicationArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    match Cli::parse().mode {
        Mode::Store(a) => store::run_store(a),
        Mode::Recovery(a) => store::run_recovery(a),
        Mode::Produce(a) => {
            let rt = keel::runtime_with(0)?;
            let o = rt.block_on(net::produce(&a))?;
            net::print_percentiles(&format!("produce {} B x{}", a.size, a.threads), &o);
            Ok(())
        }
        Mode::Consume(a) => keel::runtime_with(0)?.block_on(net::consume(&a)),
        Mode::Echo(a) => keel::runtime_with(0)?.block_on(async {
            let addr = match &a.addr {
                Some(x) => x.clone(),
                None => net::echo_server("127.0.0.1:0").await?.to_string(),
            };
            let o = net::echo(&addr, a.size, a.threads, a.seconds).await?;
            net::print_percentiles(&format!("echo {} B x{}", a.size, a.threads), &o);
            Ok(())
        }),
        Mode::EchoServer { bind } => keel::runtime_with(0)?.block_on(async {
            net::echo_server(&bind).await?;
            std::future::pending::<()>().await;
            Ok(())
        }),
        Mode::Cluster(a) => keel::runtime_with(0)?.block_on(net::cluster(&a)),
        Mode::Replication(a) => keel::runtime_with(0)?.block_on(replication::run(&a)),
    }
}
