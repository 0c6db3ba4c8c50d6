//! entra-sync's webhook: the HTTP endpoint Microsoft Graph delivers change notifications to.
//! It verifies each notification and stores it on a Redis stream for the worker.

pub mod config;
