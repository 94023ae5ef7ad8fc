//! `drill scenarios/x.toml [--seed N] [--determinism]`: runs one scenario in the simulator
//! and prints the checker's table and where the delivery log was written.
//!
//! Built without `--cfg madsim` (`cargo run -p sim --bin drill -- …`), it hands over to a
//! madsim build in `target/sim`.

#[cfg(not(madsim))]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cargo = vec!["run", "-q", "-p", "sim", "--release", "--bin", "drill", "--"];
    cargo.extend(args.iter().map(String::as_str));
    match sim::delegate(&cargo) {
        Ok(s) => std::process::exit(s.code().unwrap_or(1)),
        Err(e) => {
            eprintln!("drill: cannot run cargo: {e}");
            std::process::exit(2);
        }
    }
}

#[cfg(madsim)]
fn main() {
    use sim::scenario::Scenario;
    if let Ok(filter) = std::env::var("RUST_LOG") {
        // Keel's own tracing, with simulated time and the node in each line.
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).init();
    }
    let mut args = std::env::args().skip(1);
    let mut path = None;
    let mut seed = None;
    let mut determinism = false;
    let mut bench: Option<u64> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {
                bench = args.next().and_then(|s| s.parse::<u64>().ok()).or_else(|| usage("--bench needs a seed count"))
            }
            "--seed" => {
                seed = args.next().and_then(|s| s.parse::<u64>().ok()).or_else(|| usage("--seed needs a number"))
            }
            "--determinism" => determinism = true,
            "-h" | "--help" => usage(""),
            _ if path.is_none() => path = Some(std::path::PathBuf::from(a)),
            _ => usage(&format!("unexpected argument {a}")),
        }
    }
    let Some(path) = path else { usage("which scenario?") };
    let root = sim::workspace_root();
    let path = if path.is_relative() && !path.exists() { root.join(path) } else { path };
    let sc = Scenario::load(&path, &root).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    if let Some(n) = bench {
        // One markdown row: simulation speed over seeds 1..=n (each in its own runtime).
        let wall = std::time::Instant::now();
        let mut sim_ms = 0;
        for seed in 1..=n {
            let o = sim::run::run_seed(&sc, seed);
            if !o.violations.is_empty() {
                eprintln!("seed {seed} failed: {}", o.violations.join("; "));
            }
            sim_ms += o.sim_ms;
        }
        let wall = wall.elapsed().as_secs_f64();
        let sim_s = sim_ms as f64 / 1000.0;
        println!(
            "| {} | {n} | {:.1} | {:.2} | {:.0} | {:.0} |",
            sc.name,
            sim_s / n as f64,
            wall / n as f64,
            sim_s / wall,
            n as f64 * 60.0 / wall
        );
        return;
    }
    let seed = seed.unwrap_or(sc.snapshot_seed);
    let wall = std::time::Instant::now();
    let o = if determinism { sim::run::check_determinism(&sc, seed) } else { sim::run::run_seed(&sc, seed) };
    let wall = wall.elapsed();
    println!(
        "scenario {} — {}\nseed {seed}: {:.1} s simulated in {:.2} s wall\n",
        sc.name,
        sc.description,
        o.sim_ms as f64 / 1000.0,
        wall.as_secs_f64()
    );
    println!("{}", o.report.table(&sc.expect));
    match sim::run::judge(&sc, seed, &o) {
        Ok(p) => println!("passed; delivery log: {}", p.display()),
        Err(msg) => {
            println!("{msg}");
            std::process::exit(1);
        }
    }
}

#[cfg(madsim)]
fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("drill: {err}");
    }
    eprintln!("usage: drill scenarios/<name>.toml [--seed N] [--determinism] [--bench SEEDS]");
    std::process::exit(2)
}
