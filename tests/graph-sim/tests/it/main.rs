//! graph-sim's integration tests, one module per subject, built into one test binary. Run one
//! subject with a filter on its module: `cargo test -p graph-sim --test it -- owners::`.

mod owners;
mod sim;
