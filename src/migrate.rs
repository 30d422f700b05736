//! The embedded migrator: `sql/NNNN_name.sql` files compiled into the binary,
//! applied in order, each in its own transaction, under an advisory lock so two
//! nodes starting together never both apply one.

use std::fmt;
use tokio_postgres::Client;

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Arbitrary but fixed: "chatapp" in ASCII, the key of the migration lock.
const MIGRATION_LOCK: i64 = 0x63_68_61_74_61_70_70;

#[derive(Debug)]
pub enum MigrateError {
    Db(tokio_postgres::Error),
    /// An applied migration's file changed since it was applied.
    Modified {
        name: String,
    },
    /// The database has a migration this binary does not ship.
    Unknown {
        version: i32,
        name: String,
    },
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrateError::Db(_) => f.write_str("migration failed"),
            MigrateError::Modified { name } => write!(
                f,
                "migration {name} was changed after it was applied; restore the original file and add a new migration instead"
            ),
            MigrateError::Unknown { version, name } => write!(
                f,
                "the database has migration {name} (version {version}) that this binary does not know; run a newer chatapp"
            ),
        }
    }
}

impl std::error::Error for MigrateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MigrateError::Db(e) => Some(e),
            _ => None,
        }
    }
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        MigrateError::Db(e)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i32,
    pub name: String,
    /// RFC 3339 time it was applied, `None` while pending.
    pub applied_at: Option<String>,
}

/// Applies every pending migration; returns the names applied now.
pub async fn run(client: &mut Client) -> Result<Vec<&'static str>, MigrateError> {
    client
        .execute("select pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = apply_pending(client).await;
    // Unlock even on failure; a dropped connection releases it anyway.
    let _ = client
        .execute("select pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn apply_pending(client: &mut Client) -> Result<Vec<&'static str>, MigrateError> {
    ensure_table(client).await?;
    let applied = check_applied(client).await?;
    let mut done = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        let tx = client.transaction().await?;
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "insert into schema_migrations (version, name, checksum) values ($1, $2, md5($3))",
            &[&m.version, &m.name, &m.sql],
        )
        .await?;
        tx.commit().await?;
        log::info!("applied migration {}", m.name);
        done.push(m.name);
    }
    Ok(done)
}

/// Lists applied and pending migrations, failing like `run` would on drift.
pub async fn status(client: &mut Client) -> Result<Vec<MigrationStatus>, MigrateError> {
    ensure_table(client).await?;
    check_applied(client).await?;
    let rows = client
        .query(
            "select version, name, to_char(applied_at at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
             from schema_migrations order by version",
            &[],
        )
        .await?;
    let mut out: Vec<MigrationStatus> = rows
        .iter()
        .map(|r| MigrationStatus {
            version: r.get(0),
            name: r.get(1),
            applied_at: r.get(2),
        })
        .collect();
    for m in MIGRATIONS {
        if !out.iter().any(|s| s.version == m.version) {
            out.push(MigrationStatus {
                version: m.version,
                name: m.name.to_string(),
                applied_at: None,
            });
        }
    }
    out.sort_by_key(|s| s.version);
    Ok(out)
}

async fn ensure_table(client: &Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(
            "create table if not exists schema_migrations (
                version    integer     primary key,
                name       text        not null,
                checksum   text        not null,
                applied_at timestamptz not null default now()
            )",
        )
        .await
}

/// Verifies that every applied migration is known and unchanged; returns their versions.
async fn check_applied(client: &Client) -> Result<Vec<i32>, MigrateError> {
    let known_sql: Vec<&str> = MIGRATIONS.iter().map(|m| m.sql).collect();
    let known_versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    // Let PostgreSQL hash the embedded files too, so both sides use the same md5.
    let rows = client
        .query(
            "select s.version, s.name, k.sql_md5 is not null, s.checksum = k.sql_md5
             from schema_migrations s
             left join (select v, md5(t) as sql_md5
                        from unnest($1::int[], $2::text[]) as k(v, t)) k on k.v = s.version
             order by s.version",
            &[&known_versions, &known_sql],
        )
        .await?;
    let mut applied = Vec::with_capacity(rows.len());
    for row in rows {
        let version: i32 = row.get(0);
        let name: String = row.get(1);
        let known: bool = row.get(2);
        if !known {
            return Err(MigrateError::Unknown { version, name });
        }
        let unchanged: bool = row.get(3);
        if !unchanged {
            let name = MIGRATIONS
                .iter()
                .find(|m| m.version == version)
                .map_or(name, |m| m.name.to_string());
            return Err(MigrateError::Modified { name });
        }
        applied.push(version);
    }
    Ok(applied)
}
