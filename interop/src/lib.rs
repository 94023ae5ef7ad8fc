//! Tests only: see `tests/`. Run with `cd interop && cargo test` (also run by `.ci/run`).
