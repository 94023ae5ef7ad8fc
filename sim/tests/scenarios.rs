//! `cargo test -p sim`: every scenario in `scenarios/` over several seeds, the determinism
//! check, and the delivery-log snapshots in `snapshots/`.
//!
//! Built without `--cfg madsim` (as typed), the one test here re-runs this crate's tests
//! under madsim in `target/sim` and passes or fails with it.

#[cfg(not(madsim))]
#[test]
fn scenarios_under_madsim() {
    let status = sim::delegate(&["test", "-p", "sim", "--release"]).expect("running cargo");
    assert!(status.success(), "the madsim build of the simulation tests failed (its output is above)");
}

#[cfg(madsim)]
mod under_madsim {
    use sim::run::{check_determinism, judge, run_seed};
    use sim::scenario::{scenario_files, Scenario};
    use sim::workspace_root;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    fn scenarios() -> Vec<Scenario> {
        let root = workspace_root();
        let only = std::env::var("SIM_SCENARIO").ok();
        scenario_files(&root.join("scenarios"))
            .expect("scenarios/")
            .into_iter()
            .map(|p| Scenario::load(&p, &root).unwrap_or_else(|e| panic!("{e}")))
            .filter(|s| only.as_ref().is_none_or(|o| *o == s.name))
            .collect()
    }

    /// Every scenario at every seed; the run at a scenario's pinned seed is also its snapshot.
    #[test]
    fn every_scenario_over_seeds() {
        let all = scenarios();
        assert!(!all.is_empty(), "no scenario matched");
        let determinism = std::env::var("MADSIM_TEST_CHECK_DETERMINISM").is_ok();
        let jobs: Vec<(usize, u64)> = all
            .iter()
            .enumerate()
            .flat_map(|(i, s)| sim::seeds(s.seeds, &s.regression_seeds).into_iter().map(move |seed| (i, seed)))
            .collect();
        let next = AtomicUsize::new(0);
        let failures = Mutex::new(Vec::new());
        let snapshots = Mutex::new(Vec::new());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len());
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let Some(&(i, seed)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) else { return };
                    let sc = &all[i];
                    let o = if determinism { check_determinism(sc, seed) } else { run_seed(sc, seed) };
                    let r = &o.report;
                    println!(
                        "{:<34} seed {seed:>3}: sent {} acked {} delivered {} lost {} lost_unsynced {} dup {} recovered {} ({:.0} s simulated)",
                        sc.name,
                        r.get("sent"),
                        r.get("acked"),
                        r.get("delivered"),
                        r.get("lost"),
                        r.get("lost_unsynced"),
                        r.get("duplicated"),
                        r.get("recovered"),
                        o.sim_ms as f64 / 1000.0
                    );
                    if let Err(msg) = judge(sc, seed, &o) {
                        failures.lock().unwrap().push(msg);
                    }
                    if seed == sc.snapshot_seed {
                        // The checker's table heads the log, so a change in any count shows too.
                        let snap = format!("{}\n{}", o.report.table(&sc.expect), o.log);
                        snapshots.lock().unwrap().push((sc.name.clone(), snap));
                    }
                });
            }
        });
        let failures = failures.into_inner().unwrap();
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
        let mut snapshots = snapshots.into_inner().unwrap();
        snapshots.sort();
        for (name, log) in snapshots {
            insta::with_settings!({
                snapshot_path => workspace_root().join("snapshots"),
                prepend_module_to_snapshot => false,
                omit_expression => true,
            }, {
                insta::assert_snapshot!(name, log);
            });
        }
    }

    /// The same seed gives the same delivery log, byte for byte.
    #[test]
    fn same_seed_same_log() {
        let root = workspace_root();
        let sc = Scenario::load(&root.join("scenarios/two-master-broker-down.toml"), &root).unwrap();
        let a = run_seed(&sc, 7).log;
        let b = run_seed(&sc, 7).log;
        assert!(a.lines().count() > 100, "the run did something");
        assert!(a == b, "two runs of seed 7 differ");
        let c = run_seed(&sc, 8).log;
        assert_ne!(a, c, "another seed takes another path");
    }
}
