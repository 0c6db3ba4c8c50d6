//! Leases in PostgreSQL: work that one worker replica at a time does, without holding a
//! transaction open while it waits for Graph.
//!
//! A lease is a row of `entra_sync_leases`: its holder, when it runs out (by the database's
//! clock, so replicas' clocks never matter), and a fence, a number that grows each time the
//! lease changes hands. The clock is read as it is when a statement asks (`clock_timestamp()`),
//! never as the transaction's start (`now()`): a transaction that began while its lease held
//! may reach its commit after the lease ran out. Two ways to hold one:
//! - [`Lease::try_acquire`]: taken or extended by one replica that keeps it for long (the
//!   subscription keeper), passing to another replica when it runs out;
//! - [`Lease::hold`]: taken for one unit of work (a round, a poll, a reconciliation), renewed
//!   in the background while the work runs, and given back at once after it. The work gets the
//!   lease's [`Fence`], and every commit it makes checks ([`check`]) that the fence is still
//!   current, under a share lock on the lease row until the commit. So a replica that lost its
//!   lease (paused, cut off from the database, too slow to renew) can never write over the work
//!   of the replica that took the lease over; its commit fails with [`Error::LeaseLost`].

use migration::database::Db;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::sync::lease;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, FromQueryResult, QueryFilter,
};

use super::sql::stmt;
use crate::error::{Error, Result};

/// Proof, checked at commit, that work still holds its lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    pub lease: &'static str,
    pub token: i64,
}

#[derive(Clone, Debug)]
pub struct Lease {
    db: Db,
    name: &'static str,
    holder: String,
    ttl: Duration,
}

#[derive(FromQueryResult)]
struct Token {
    fence: i64,
}

/// A duration as PostgreSQL milliseconds, saturating rather than overflowing.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The longest a lease may live without renewal.
const LONGEST: Duration = Duration::from_secs(366 * 24 * 3600);

impl Lease {
    /// A lease named `name`, held as `holder`, for `ttl` (between a second and a year).
    pub fn new(db: impl Into<Db>, name: &'static str, holder: &str, ttl: Duration) -> Self {
        Self {
            db: db.into(),
            name,
            holder: holder.to_owned(),
            ttl: ttl.clamp(Duration::from_secs(1), LONGEST),
        }
    }

    /// The replica that holds it when this does.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes the lease, or extends it when this replica already holds it. False when another
    /// replica holds it and it has not run out.
    #[tracing::instrument(skip(self), fields(lease = self.name, holder = self.holder), err(level = "debug"))]
    pub async fn try_acquire(&self) -> Result<bool> {
        Ok(self.take(true).await?.is_some())
    }

    /// Takes the lease when it is free (run out or released) or this replica's, for `ttl`;
    /// returns its fence. The fence grows when the lease changes hands, and, unless
    /// `extending` (a holder renewing what it holds), whenever it is taken.
    async fn take(&self, extending: bool) -> Result<Option<i64>> {
        Ok(Token::find_by_statement(stmt(
            "INSERT INTO entra_sync_leases (name, holder, expires_at, fence)
             VALUES ($1, $2, clock_timestamp() + $3 * interval '1 millisecond', 1)
             ON CONFLICT (name) DO UPDATE
               SET holder = excluded.holder, expires_at = excluded.expires_at,
                   fence = CASE WHEN $4 AND entra_sync_leases.holder = excluded.holder
                                 AND entra_sync_leases.expires_at > clock_timestamp()
                                THEN entra_sync_leases.fence
                                ELSE entra_sync_leases.fence + 1 END
             WHERE entra_sync_leases.holder = excluded.holder
                OR entra_sync_leases.expires_at <= clock_timestamp()
             RETURNING fence",
            [
                self.name.into(),
                self.holder.clone().into(),
                millis(self.ttl).into(),
                extending.into(),
            ],
        ))
        .one(&self.db)
        .await?
        .map(|taken| taken.fence))
    }

    /// Gives the lease up (on shutdown), so another replica need not wait for it to run out.
    pub async fn release(&self) -> Result<()> {
        self.db
            .execute(stmt(
                "DELETE FROM entra_sync_leases WHERE name = $1 AND holder = $2",
                [self.name.into(), self.holder.clone().into()],
            ))
            .await?;
        Ok(())
    }

    /// Runs `work` holding the lease: waits up to `patience` for it ([`Error::LeaseBusy`] after
    /// that), renews it every third of its time to live while the work runs, and gives it back
    /// when the work ends. The work's commits check the [`Fence`] it is given.
    /// The work's error is the caller's own: it only has to hold this crate's.
    pub async fn hold<T, E, F, Fut>(&self, patience: Duration, work: F) -> Result<T, E>
    where
        E: From<Error>,
        F: FnOnce(Fence) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let fence = self.take_within(patience).await?;
        let renewal = tokio::spawn(renew(self.clone(), fence));
        let result = work(fence).await;
        renewal.abort();
        if let Err(error) = self.give_back(fence).await {
            // It runs out on its own within its time to live.
            tracing::warn!(%error, lease = self.name, "cannot give the lease back");
        }
        result
    }

    /// Takes the lease for a unit of work once it is free (released, or run out), or at once when
    /// it is this replica's own: a replica does one unit at a time, so a lease of its own is one
    /// it could not give back (the database was away), and taking it over bumps the fence of
    /// whatever may still hold it.
    async fn take_within(&self, patience: Duration) -> Result<Fence> {
        use backon::{ExponentialBuilder, Retryable};
        let busy = || Error::LeaseBusy {
            lease: self.name,
            holder: String::new(),
        };
        let attempt = || async {
            match self.take(false).await? {
                Some(token) => Ok(Fence {
                    lease: self.name,
                    token,
                }),
                None => Err(busy()),
            }
        };
        // Asked again after 50 ms, doubling to a second, with jitter so that replicas waiting
        // for the same lease do not ask in step, until `patience` has been spent waiting.
        let taken = attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_delay(Duration::from_secs(1))
                    .with_jitter()
                    .without_max_times()
                    .with_total_delay(Some(patience)),
            )
            .when(|error| matches!(error, Error::LeaseBusy { .. }))
            .await;
        match taken {
            Err(Error::LeaseBusy { .. }) => Err(Error::LeaseBusy {
                lease: self.name,
                holder: holder(&self.db, self.name)
                    .await?
                    .map(|l| l.holder)
                    .unwrap_or_default(),
            }),
            other => other,
        }
    }

    /// Extends the lease if `fence` still holds it; false when it was lost.
    async fn extend(&self, fence: Fence) -> Result<bool> {
        let renewed = self
            .db
            .execute(stmt(
                "UPDATE entra_sync_leases
                 SET expires_at = clock_timestamp() + $3 * interval '1 millisecond'
                 WHERE name = $1 AND fence = $2 AND expires_at > clock_timestamp()",
                [
                    self.name.into(),
                    fence.token.into(),
                    millis(self.ttl).into(),
                ],
            ))
            .await?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Ends a unit of work: the lease is free at once (the row stays, for its fence).
    async fn give_back(&self, fence: Fence) -> Result<()> {
        self.db
            .execute(stmt(
                "UPDATE entra_sync_leases SET expires_at = clock_timestamp()
                 WHERE name = $1 AND fence = $2 AND expires_at > clock_timestamp()",
                [self.name.into(), fence.token.into()],
            ))
            .await?;
        Ok(())
    }
}

/// Keeps a unit of work's lease alive until the work ends (and the task is aborted), or until the
/// lease is lost, after which the work's commits fail on their own.
async fn renew(lease: Lease, fence: Fence) {
    let every = lease.ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        match lease.extend(fence).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    lease = lease.name,
                    "lease lost: the work in progress cannot commit"
                );
                return;
            }
            // Renewed at the next tick, or the lease runs out and the commits fail.
            Err(error) => tracing::warn!(%error, lease = lease.name, "cannot renew the lease"),
        }
    }
}

/// Fails with [`Error::LeaseLost`] unless `fence` is still its lease's current one and has not run
/// out by the clock now (however long ago the transaction began). Called in the transaction about
/// to commit: the share lock it takes on the lease row keeps any other replica from taking the
/// lease over before the commit.
pub async fn check(txn: &DatabaseTransaction, fence: Fence) -> Result<()> {
    #[derive(FromQueryResult)]
    struct Held {
        #[allow(dead_code)]
        fence: i64,
    }
    let held = Held::find_by_statement(stmt(
        "SELECT fence FROM entra_sync_leases
         WHERE name = $1 AND fence = $2 AND expires_at > clock_timestamp()
         FOR SHARE",
        [fence.lease.into(), fence.token.into()],
    ))
    .one(txn)
    .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(Error::LeaseLost { lease: fence.lease }),
    }
}

/// This process's name among the replicas when none is configured: the host name (the pod's
/// name on Kubernetes) and the process id.
pub fn this_process() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// Who holds a lease, and until when.
pub async fn holder(db: &impl ConnectionTrait, name: &str) -> Result<Option<lease::Model>> {
    Ok(lease::Entity::find()
        .filter(lease::Column::Name.eq(name))
        .one(db)
        .await?)
}

/// Whether a lease is held now, by the database's clock.
pub async fn held(
    db: &impl ConnectionTrait,
    name: &str,
) -> Result<Option<(String, DateTime<Utc>)>> {
    #[derive(FromQueryResult)]
    struct Row {
        holder: String,
        expires_at: DateTime<Utc>,
    }
    Ok(Row::find_by_statement(stmt(
        "SELECT holder, expires_at FROM entra_sync_leases
         WHERE name = $1 AND expires_at > clock_timestamp()",
        [name.into()],
    ))
    .one(db)
    .await?
    .map(|row| (row.holder, row.expires_at)))
}
