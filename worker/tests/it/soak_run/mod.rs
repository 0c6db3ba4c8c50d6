//! The soak: a seeded random sequence of Entra changes, faults and keys against graph-sim, the
//! webhook, Redis, PostgreSQL with LiteLLM's schema and two workers (one in this process, one
//! `entra-sync-worker run` process that is killed with SIGKILL now and then), then a wait, with
//! no reconciliation (`ENTRA_SYNC_RECONCILE_SECONDS=0`), until LiteLLM's rows equal what
//! graph-sim says: every assigned group's team in the four places a membership lives, its alias,
//! the unassigned groups' teams under the policy, every user's role, and the keys (see
//! [`keys`]), with every notification acknowledged and none dead-lettered. Shared by
//! `tests/it/soak.rs` (fixed seeds, 200 steps) and `benches/soak.rs` (longer runs for local use).
//!
//! The steps ([`changes`]): members added and removed, users disabled and enabled,
//! groups renamed, assigned and unassigned, app roles granted and revoked (to
//! users and to groups), groups nested and taken out; 429s and 503s, replication lag (also of a
//! member as they join), expired delta tokens, notifications duplicated, reordered, delayed and
//! lost, the worker process killed (also while a delta read is slow) and started again; team and
//! personal keys. Not among them: users or groups deleted (a deletion needs two answers a minute
//! apart), owners.
//!
//! Removals stay under the removal threshold (500, the default, given to both workers): the
//! tenant has 40 users and 8 groups, at most 320 memberships, and at most 300 keys are made, so
//! no unit of work can remove or delete 500; a held removal is a difference.
//!
//! A seed reproduces the starting tenant and every step in its order with its pauses (graph-sim's
//! delivery is seeded with it too, though which copy of a notification it drops also depends on
//! the order it visits its subscriptions). It does not reproduce timing: which round, poll or
//! retry sees which change, where a SIGKILL lands, and so which keys could be made (a team key
//! only for a member LiteLLM shows at that moment).
#![allow(dead_code, clippy::unwrap_used)]

mod changes;
mod entra;
mod keys;
mod litellm;
mod workers;

use std::time::{Duration, Instant};

use worker::sync::{Membership, UnassignedPolicy};

use crate::world::World;
use entra::{Entra, History};
use keys::Keys;
use litellm::{Difference, Litellm};
use workers::Workers;

/// How long the first sync of the starting tenant may take.
const FIRST_SYNC: Duration = Duration::from_secs(120);
/// How long the soak waits for LiteLLM to equal graph-sim after the last step: generous, since
/// it bounds a failure, not the speed.
const CONVERGENCE: Duration = Duration::from_secs(180);

/// The worker's configuration the soak runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    pub membership: Membership,
    pub unassigned: UnassignedPolicy,
}

impl Setup {
    pub const DIRECT: Self = Self {
        membership: Membership::Direct,
        unassigned: UnassignedPolicy::RemoveMembers,
    };
    pub const TRANSITIVE: Self = Self {
        membership: Membership::Transitive,
        unassigned: UnassignedPolicy::RemoveMembers,
    };
    pub const BLOCK: Self = Self {
        membership: Membership::Direct,
        unassigned: UnassignedPolicy::Block,
    };
    pub const ALL: [(&'static str, Self); 3] = [
        ("direct", Self::DIRECT),
        ("transitive", Self::TRANSITIVE),
        ("block", Self::BLOCK),
    ];

    /// Its short name, as [`Self::ALL`] gives it.
    pub fn name(&self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, setup)| setup == self)
            .map_or("other", |(name, _)| name)
    }

    pub fn membership_name(&self) -> &'static str {
        match self.membership {
            Membership::Direct => "direct",
            Membership::Transitive => "transitive",
        }
    }

    pub fn unassigned_name(&self) -> &'static str {
        match self.unassigned {
            UnassignedPolicy::Keep => "keep",
            UnassignedPolicy::RemoveMembers => "remove-members",
            UnassignedPolicy::Block => "block",
        }
    }
}

impl std::fmt::Display for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ENTRA_SYNC_MEMBERSHIP={} ENTRA_SYNC_UNASSIGNED_POLICY={}",
            self.membership_name(),
            self.unassigned_name()
        )
    }
}

/// How many steps the soak takes.
#[derive(Clone, Copy, Debug)]
pub enum Length {
    /// Exactly this many (what a seed reproduces).
    Steps(usize),
    /// As many as fit in this time.
    For(Duration),
}

impl std::fmt::Display for Length {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Steps(n) => write!(f, "{n} steps"),
            Self::For(time) => write!(f, "{} s of steps", time.as_secs()),
        }
    }
}

/// What one soak did and found.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub setup: Setup,
    pub steps: usize,
    pub counts: Counts,
    /// How long the steps took.
    pub stepping: Duration,
    /// How long LiteLLM took to equal graph-sim after the last step; `None`: it did not within
    /// the deadline (or the first sync did not).
    pub converged_in: Option<Duration>,
    /// What differed when the wait gave up, or what else went wrong.
    pub failures: Vec<String>,
    /// Every step, numbered, with when it came.
    pub log: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Entra changes.
    pub changes: usize,
    pub faults: usize,
    pub kills: usize,
    pub keys_tried: usize,
    pub keys_made: usize,
    /// The keys made, as they ended: there and unblocked, blocked, gone.
    pub keys_unblocked: usize,
    pub keys_blocked: usize,
    pub keys_gone: usize,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.converged_in.is_some() && self.failures.is_empty()
    }

    /// One line: the seed, its setup, what it did and how it ended.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        let result = match self.converged_in {
            Some(took) if self.failures.is_empty() => {
                format!("converged in {:.1} s", took.as_secs_f64())
            }
            Some(_) => "converged, but FAILED".into(),
            None => "DID NOT CONVERGE".into(),
        };
        format!(
            "seed {} ({}): {} steps in {:.1} s ({} Entra changes, {} faults, {} kills; {} of {} \
             keys made, at the end {} there, {} blocked, {} gone), {result}",
            self.seed,
            self.setup,
            self.steps,
            self.stepping.as_secs_f64(),
            c.changes,
            c.faults,
            c.kills,
            c.keys_made,
            c.keys_tried,
            c.keys_unblocked,
            c.keys_blocked,
            c.keys_gone,
        )
    }

    /// The summary, what differed, and the steps, for a failure.
    pub fn report(&self) -> String {
        let mut text = self.summary();
        text.push_str("\nwhat differs (subject: place: expected, found):\n");
        for failure in &self.failures {
            text.push_str(&format!("  {failure}\n"));
        }
        text.push_str("the steps:\n");
        for line in &self.log {
            text.push_str(&format!("  {line}\n"));
        }
        text.push_str(&format!("seed {} ({})", self.seed, self.setup));
        text
    }
}

/// One soak run.
pub(crate) struct Run {
    seed: u64,
    setup: Setup,
    world: World,
    workers: Workers,
    rng: fastrand::Rng,
    history: History,
    keys: Keys,
    counts: Counts,
    /// Steps until the killed worker process starts again.
    restart_in: Option<usize>,
    started: Instant,
    log: Vec<String>,
}

/// Runs the soak for `seed` under `setup`.
pub async fn soak(seed: u64, setup: Setup, length: Length) -> Outcome {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut world = World::new().await;
    world.sim.set_delivery(|d| d.seed = seed);
    changes::populate(&world.sim, &mut rng);
    // A subscription to users as well (and one more to groups), as the worker's keeper makes.
    world
        .subscription_manager()
        .ensure(chrono::Utc::now())
        .await
        .expect("the subscriptions are made");
    let workers = Workers::start(&mut world, setup);
    let entra = Entra::read(&world.sim, setup.membership);
    let mut run = Run {
        seed,
        setup,
        world,
        workers,
        rng,
        history: History::new(&entra),
        keys: Keys::default(),
        counts: Counts::default(),
        restart_in: None,
        started: Instant::now(),
        log: Vec::new(),
    };
    let mut outcome = Outcome {
        seed,
        setup,
        steps: 0,
        counts: Counts::default(),
        stepping: Duration::ZERO,
        converged_in: None,
        failures: Vec::new(),
        log: Vec::new(),
    };

    if let Err(differences) = run.converge(FIRST_SYNC).await {
        outcome
            .failures
            .push("the first sync did not converge".into());
        outcome
            .failures
            .extend(differences.iter().map(ToString::to_string));
        outcome.failures.extend(run.stop().await);
        return outcome;
    }
    run.note(0, "the first sync converged; the steps begin".into());
    let stepping = Instant::now();
    let mut steps = 0;
    loop {
        let done = match length {
            Length::Steps(n) => steps >= n,
            Length::For(time) => stepping.elapsed() >= time,
        };
        if done {
            break;
        }
        steps += 1;
        run.step(steps).await;
    }
    outcome.steps = steps;
    outcome.stepping = stepping.elapsed();

    // Graph answers again and the worker process runs: what is left is entra-sync's to do.
    run.world.sim.clear_faults();
    run.workers.start_process(&mut run.world);
    run.note(
        steps,
        "faults cleared, the worker process runs; waiting".into(),
    );
    match run.converge(CONVERGENCE).await {
        Ok(took) => outcome.converged_in = Some(took),
        Err(differences) => {
            outcome.failures.push(format!(
                "LiteLLM does not equal graph-sim {} s after the last step",
                CONVERGENCE.as_secs()
            ));
            outcome
                .failures
                .extend(differences.iter().map(ToString::to_string));
            outcome.failures.extend(run.diagnosis().await);
        }
    }
    outcome.failures.extend(run.stop().await);
    run.count_keys().await;
    outcome.counts = run.counts;
    outcome.log = std::mem::take(&mut run.log);
    outcome
}

impl Run {
    fn note(&mut self, step: usize, what: String) {
        let at = self.started.elapsed().as_secs_f64();
        self.log.push(format!("{step:>4} {at:>6.1} s  {what}"));
    }

    /// Everything that differs now between LiteLLM and graph-sim, the keys, and the stream
    /// (every notification acknowledged, none dead-lettered).
    async fn differences(&self) -> Vec<Difference> {
        let entra = Entra::read(&self.world.sim, self.setup.membership);
        let found = Litellm::read(self.world.db.conn()).await;
        let mut out = found.differences(&entra, self.setup.unassigned);
        out.extend(
            self.keys
                .differences(&found, &entra, &self.history, self.setup.unassigned),
        );
        let (unread, pending) = (self.world.unread(), self.world.pending());
        if unread > 0 || pending > 0 {
            out.push(Difference {
                subject: "the stream".into(),
                place: "unread, pending",
                expected: "0, 0".into(),
                found: format!("{unread}, {pending}"),
            });
        }
        if !self.world.dead.is_empty() {
            out.push(Difference {
                subject: "the stream".into(),
                place: "dead letters",
                expected: "none".into(),
                found: self.world.dead.len().to_string(),
            });
        }
        out
    }

    /// Waits until LiteLLM equals graph-sim; how long it took, or what still differs after
    /// `limit`.
    async fn converge(&self, limit: Duration) -> Result<Duration, Vec<Difference>> {
        let started = Instant::now();
        loop {
            let differences = self.differences().await;
            if differences.is_empty() {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= limit {
                return Err(differences);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// What entra-sync holds that may explain a difference: its failed items and departed
    /// users.
    async fn diagnosis(&self) -> Vec<String> {
        use sea_orm::{ConnectionTrait, DbBackend, Statement};
        let sql = "SELECT 'failed item ' || kind || ' ' || id || ' (' || attempts
                          || ' attempts, next at ' || retry_at || '): ' || error
                   FROM entra_sync_failed_items
                   UNION ALL
                   SELECT 'departed user ' || entra_user_id FROM entra_sync_departed_users";
        let rows = self
            .world
            .db
            .conn()
            .query_all(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .unwrap_or_default();
        rows.iter()
            .filter_map(|row| row.try_get_by_index::<String>(0).ok())
            .map(|line| format!("(entra-sync holds) {line}"))
            .collect()
    }

    /// Counts the keys made, and how they ended.
    async fn count_keys(&mut self) {
        let found = Litellm::read(self.world.db.conn()).await;
        let c = &mut self.counts;
        c.keys_made = self.keys.made.len();
        for key in &self.keys.made {
            match found.keys.get(&key.token) {
                None => c.keys_gone += 1,
                Some(row) if row.blocked => c.keys_blocked += 1,
                Some(_) => c.keys_unblocked += 1,
            }
        }
    }

    /// Stops the in-process worker; what went wrong with it, if anything.
    async fn stop(&mut self) -> Vec<String> {
        self.workers.stop().await.err().into_iter().collect()
    }
}
