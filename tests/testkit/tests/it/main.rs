//! The testkit's own tests, one module per subject, built into one test binary: the harness
//! (templates, databases, servers) and the query engine stand-in LiteLLM's proxy runs on.

mod harness;
mod query_engine;
