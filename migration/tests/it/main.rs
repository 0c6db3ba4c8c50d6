//! `entra-sync-migrate`'s integration tests, one module per subject, built into one test
//! binary. Run one subject with a filter on its module: `cargo test -p migration --test it -- tls::`.

mod litellm_schema;
mod migrate;
mod secrets;
mod tls;
