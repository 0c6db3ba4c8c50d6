//! The soak, longer (not a test): for each seed, random Entra changes, faults and keys for a
//! while (see `tests/it/soak_run`), then the wait until LiteLLM equals graph-sim. Prints, per seed:
//! the steps taken and what they were, how long LiteLLM took to converge, and the result; a
//! failure also lists what differs and every step. Exits non-zero if a seed failed.
//!
//! Run: `cargo bench -p worker --bench soak`, with
//! - `ENTRA_SYNC_SOAK_SECONDS`: how long each seed takes steps (default 120), or
//!   `ENTRA_SYNC_SOAK_STEPS`: exactly this many steps (what reproduces a seed's sequence);
//! - `ENTRA_SYNC_SOAK_SEEDS`: comma-separated seeds (default: three from the clock);
//! - `ENTRA_SYNC_SOAK_SETUP`: `direct`, `transitive` or `block` (default: the seeds take them in
//!   turn).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

#[path = "../tests/it/graph_common/mod.rs"]
mod graph_common;
#[path = "../tests/it/soak_run/mod.rs"]
mod soak_run;
#[path = "../tests/it/world/mod.rs"]
mod world;

use soak_run::{Length, Setup, soak};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> T {
    value
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{name}: {value:?} is not a number"))
}

fn main() {
    let length = match (var("ENTRA_SYNC_SOAK_STEPS"), var("ENTRA_SYNC_SOAK_SECONDS")) {
        (Some(steps), _) => Length::Steps(number("ENTRA_SYNC_SOAK_STEPS", &steps)),
        (None, seconds) => Length::For(Duration::from_secs(
            seconds.map_or(120, |s| number("ENTRA_SYNC_SOAK_SECONDS", &s)),
        )),
    };
    let seeds: Vec<u64> = match var("ENTRA_SYNC_SOAK_SEEDS") {
        Some(list) => list
            .split(',')
            .map(|s| number("ENTRA_SYNC_SOAK_SEEDS", s))
            .collect(),
        None => {
            let clock = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            (0..3).map(|i| clock * 10 + i).collect()
        }
    };
    let setup = var("ENTRA_SYNC_SOAK_SETUP").map(|name| {
        Setup::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, setup)| *setup)
            .unwrap_or_else(|| {
                panic!("ENTRA_SYNC_SOAK_SETUP: {name:?} is not direct, transitive or block")
            })
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("soak: {length} per seed, seeds {seeds:?}");
    let mut failed = Vec::new();
    for (i, seed) in seeds.iter().enumerate() {
        let setup = setup.unwrap_or(Setup::ALL[i % Setup::ALL.len()].1);
        println!("seed {seed} ({setup}): running");
        let outcome = runtime.block_on(soak(*seed, setup, length));
        if outcome.passed() {
            println!("{}", outcome.summary());
        } else {
            println!("{}", outcome.report());
            println!(
                "again: ENTRA_SYNC_SOAK_SEEDS={seed} ENTRA_SYNC_SOAK_STEPS={} \
                 ENTRA_SYNC_SOAK_SETUP={} cargo bench -p worker --bench soak",
                outcome.steps,
                setup.name()
            );
            failed.push(*seed);
        }
    }
    if !failed.is_empty() {
        println!("soak: seeds {failed:?} FAILED");
        std::process::exit(1);
    }
}
