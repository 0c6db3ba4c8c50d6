//! graph-sim: a simulated Entra tenant behind the same HTTP API as Microsoft's token endpoint and
//! Graph v1.0, for entra-sync's tests, benchmarks and demo. No test ever calls Microsoft.
//!
//! What it plays, following Microsoft's documentation: client-credential tokens (secret,
//! certificate assertion, federated assertion); groups delta with paging, `members@delta`,
//! soft and hard deletion, `$deltatoken=latest`, `$filter=id eq`, expired tokens; users delta
//! (changed and deleted users, paged, `$deltatoken=latest`, expired tokens); group members
//! and transitive members; group owners (`/owners`, `$expand=owners`, `owners@delta`); JSON
//! batching (`$batch`); `directoryObjects/getByIds`; the service principal with its app roles
//! and `appRoleAssignedTo`; subscriptions with the validation handshake and change and lifecycle
//! notifications. On top: fault injection (429 with Retry-After, 503, slow answers), directory
//! replication lag (users and groups that reads of themselves miss while membership reads list
//! them), a request log, and an admin API (`/admin/...`) to change the tenant while it runs.
//!
//! Use it in-process with [`GraphSim::start`], or as the `graph-sim` binary.
#![allow(clippy::expect_used)] // a poisoned lock in a test double is a bug worth a panic
#![allow(clippy::result_large_err)] // handlers return ready HTTP responses as their errors

mod admin;
mod api;
mod auth;
mod batch;
mod faults;
mod lag;
mod notifications;
mod state;
pub mod tenant;

pub use faults::{Fault, FaultKind, RequestRecord};
pub use notifications::{DeliveryConfig, DeliveryRecord};
pub use state::{GraphSim, RegisteredCertificate, SimConfig};
