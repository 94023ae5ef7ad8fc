//! The simulation testbed: madsim clusters, fault injection, workload, history checker and
//! scenario runner. It builds on the simulated disk in `keel_core::rt::disk::sim` and the
//! store's `check_integrity`; the harness itself arrives with the simulation issue, once the
//! network layer exists to simulate.
