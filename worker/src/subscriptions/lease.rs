//! A lease in PostgreSQL: work that exactly one worker replica does at a time. The holder renews
//! it well within its time to live; when the holder dies, the lease runs out and the next replica
//! to ask takes it over.

use chrono::{DateTime, Utc};
use entity::sync::lease;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, FromQueryResult, QueryFilter,
};

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct Lease {
    db: DatabaseConnection,
    name: String,
    holder: String,
    ttl: chrono::Duration,
}

impl Lease {
    pub fn new(db: DatabaseConnection, name: &str, holder: &str, ttl: chrono::Duration) -> Self {
        Self {
            db,
            name: name.to_owned(),
            holder: holder.to_owned(),
            ttl,
        }
    }

    /// Takes the lease, or extends it when this replica already holds it, until `now + ttl`.
    /// False when another replica holds it and it has not run out at `now`.
    #[tracing::instrument(skip(self), fields(lease = self.name, holder = self.holder), err(level = "debug"))]
    pub async fn try_acquire(&self, now: DateTime<Utc>) -> Result<bool> {
        let until = now.checked_add_signed(self.ttl).ok_or_else(|| {
            Error::Settings(format!(
                "the {} lease cannot last {} s: that is beyond the calendar",
                self.name,
                self.ttl.num_seconds()
            ))
        })?;
        #[derive(FromQueryResult)]
        struct Row {
            #[allow(dead_code)]
            holder: String,
        }
        let taken = Row::find_by_statement(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "INSERT INTO entra_sync_leases (name, holder, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                                              expires_at = excluded.expires_at
             WHERE entra_sync_leases.holder = excluded.holder
                OR entra_sync_leases.expires_at <= $4
             RETURNING holder",
            [
                self.name.clone().into(),
                self.holder.clone().into(),
                until.into(),
                now.into(),
            ],
        ))
        .one(&self.db)
        .await?;
        Ok(taken.is_some())
    }

    /// Gives the lease up (on shutdown), so another replica need not wait for it to run out.
    pub async fn release(&self) -> Result<()> {
        self.db
            .execute(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "DELETE FROM entra_sync_leases WHERE name = $1 AND holder = $2",
                [self.name.clone().into(), self.holder.clone().into()],
            ))
            .await?;
        Ok(())
    }
}

/// Who holds a lease, and until when.
pub async fn holder(db: &DatabaseConnection, name: &str) -> Result<Option<lease::Model>> {
    Ok(lease::Entity::find()
        .filter(lease::Column::Name.eq(name))
        .one(db)
        .await?)
}
