//! The worker's integration tests, one module per subject, built into one test binary (one link
//! instead of one per file). Run one subject with a filter on its module:
//! `cargo test -p worker --test it -- sync::`.

// Helpers the subjects share (the benches include some of them with `#[path]`).
mod common;
mod graph_common;
mod soak_run;
mod world;

mod audit;
mod e2e;
mod faults;
mod graph_client;
mod isolation;
mod keys;
mod litellm_cache;
mod litellm_proxy;
mod log_levels;
mod metric_names;
mod nesting;
mod owners;
mod pgbouncer;
mod process;
mod reconcile;
mod revocation;
mod secrets;
mod soak;
mod store;
mod store_concurrency;
mod stream;
mod subscriptions;
mod sync;
mod team_rules;
