//! The webhook's integration tests, one module per subject, built into one test binary. Run one
//! subject with a filter on its module: `cargo test -p webhook --test it -- process::`.

mod process;
mod webhook;
