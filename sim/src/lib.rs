//! The simulation testbed: clusters in madsim built from the binaries' `.properties` files,
//! fault injection (nodes, network, disk, a seeded nemesis), a workload that records every
//! client-visible event, the history checker, and the scenario runner.
//!
//! The harness needs `--cfg madsim`; built without it (a plain `cargo test -p sim`), the
//! test and the `drill` binary hand over to a madsim build in `target/sim` ([`delegate`]).
//! Scenario parsing and the checker are plain code and are unit-tested in both builds.

pub mod checker;
#[cfg(madsim)]
pub mod harness;
pub mod scenario;

use std::path::{Path, PathBuf};

/// The workspace root (scenario `conf` paths and `scenarios/` are relative to it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("sim/ sits in the workspace").to_path_buf()
}

/// Where delivery logs go: `target/sim-logs/<scenario>-seed<N>.log`.
pub fn log_path(scenario: &str, seed: u64) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    let target = if target.is_relative() { workspace_root().join(target) } else { target };
    target.join("sim-logs").join(format!("{scenario}-seed{seed}.log"))
}

/// The seeds to run: `MADSIM_TEST_SEED` (with `MADSIM_TEST_NUM` seeds from it), else
/// `MADSIM_TEST_NUM` or the scenario's `seeds` starting at 1, then its regression seeds.
pub fn seeds(default_count: u64, regressions: &[u64]) -> Vec<u64> {
    let num = std::env::var("MADSIM_TEST_NUM").ok().and_then(|n| n.parse().ok());
    match std::env::var("MADSIM_TEST_SEED").ok().and_then(|s| s.parse::<u64>().ok()) {
        Some(s) => (s..s + num.unwrap_or(1)).collect(),
        None => {
            let mut all: Vec<u64> = (1..=num.unwrap_or(default_count)).collect();
            for s in regressions {
                if !all.contains(s) {
                    all.push(*s);
                }
            }
            all
        }
    }
}

/// The command that replays one scenario at one seed.
pub fn replay_command(scenario: &str, seed: u64) -> String {
    format!("SIM_SCENARIO={scenario} MADSIM_TEST_SEED={seed} cargo test -p sim   # or: cargo run -p sim --bin drill -- scenarios/{scenario}.toml --seed {seed}")
}

/// Runs `cargo <args>` again with `--cfg madsim` in `target/sim` (so the normal build is not
/// rebuilt), passing the environment through; returns its exit status.
#[cfg(not(madsim))]
pub fn delegate(args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let flags = match std::env::var("SIM_RUSTFLAGS") {
        Ok(extra) => format!("--cfg madsim {extra}"),
        Err(_) => "--cfg madsim".to_string(),
    };
    std::process::Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .env("RUSTFLAGS", flags)
        .env("CARGO_TARGET_DIR", workspace_root().join("target/sim"))
        .status()
}

#[cfg(madsim)]
pub mod run {
    //! Running scenarios on madsim runtimes.
    use super::*;
    use crate::harness::{self, Outcome};
    use crate::scenario::Scenario;
    use madsim::runtime::Runtime;
    use std::sync::Mutex;
    use std::time::Duration;

    fn runtime(sc: &Scenario, seed: u64) -> Runtime {
        let mut rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
        let mut end = sc.workload_end() + sc.liveness.0 * 3 + Duration::from_secs(300);
        for f in &sc.faults {
            end += f.duration.map_or(Duration::ZERO, |d| d.0);
        }
        rt.set_time_limit(end);
        rt
    }

    /// One run of a scenario at a seed, on a fresh runtime in a fresh thread: thread-locals
    /// (std's hash keys, which madsim seeds on first use) must not carry over from an
    /// earlier run, or the same seed could take another path.
    pub fn run_seed(sc: &Scenario, seed: u64) -> Outcome {
        let (sc, name) = (sc.clone(), sc.name.clone());
        std::thread::spawn(move || runtime(&sc, seed).block_on(harness::run(sc))).join().unwrap_or_else(|e| {
            eprintln!("the run panicked; replay: {}", replay_command(&name, seed));
            std::panic::resume_unwind(e)
        })
    }

    static CURRENT: Mutex<Option<Scenario>> = Mutex::new(None);

    async fn current() -> Outcome {
        let sc = CURRENT.lock().unwrap().clone().expect("scenario set");
        harness::run(sc).await
    }

    /// Runs the seed twice with madsim's determinism check (every random draw compared, a
    /// divergence panics where it happens); returns the second run.
    pub fn check_determinism(sc: &Scenario, seed: u64) -> Outcome {
        // madsim takes a plain `fn`, so the scenario goes through a static: one check at a time.
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        *CURRENT.lock().unwrap() = Some(sc.clone());
        Runtime::check_determinism(seed, madsim::Config::default(), current)
    }

    /// Writes the delivery log and, for a failed run, the message to print: scenario, seed,
    /// violated checks, the end of the log and the command that replays it.
    pub fn judge(sc: &Scenario, seed: u64, o: &Outcome) -> Result<PathBuf, String> {
        let path = log_path(&sc.name, seed);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(&path, &o.log);
        if o.violations.is_empty() {
            return Ok(path);
        }
        let lines: Vec<&str> = o.log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        Err(format!(
            "scenario {} ({}) failed at seed {seed}\nviolated:\n  {}\n\n{}\nlast lines of the delivery log ({}):\n{tail}\n\nreplay: {}\n",
            sc.name,
            sc.description,
            o.violations.join("\n  "),
            o.report.table(&sc.expect),
            path.display(),
            replay_command(&sc.name, seed)
        ))
    }
}
