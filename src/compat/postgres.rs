//! The Go service's newest generation keeps its data in PostgreSQL (`DATABASE_URL`): the URL,
//! the connection, and the export into an empty database.
//!
//! The connection is plain TCP (or a local socket): keypooler has no TLS client for PostgreSQL,
//! so a URL asking for `sslmode=require` is refused rather than sent in the clear. Use
//! `sslmode=disable` on a trusted network, or a tunnel.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use indicatif::ProgressBar;
use postgres::config::SslMode;
use postgres::{Client, NoTls, Transaction};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::export::{open_for_export, seal_tagged};
use super::{CompatError, ExportSummary, Schema};
use crate::broker::format_nanos;
use crate::crypto::Sealer;
use crate::store::{Contents, KeyRecord, key_budget};

/// How long a connection may take to open when the URL sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The Go service's migration bookkeeping table and its migrations, statement for statement as
/// its runner applies them (each with its `schema_migrations` row).
const SCHEMA_MIGRATIONS_SQL: &str = include_str!("../../migrations/postgres/schema_migrations.sql");
const MIGRATIONS: [(i32, &str, &str); 2] = [
    (
        1,
        "init",
        include_str!("../../migrations/postgres/001_init.sql"),
    ),
    (
        2,
        "budgets",
        include_str!("../../migrations/postgres/002_budgets.sql"),
    ),
];

/// A `postgres://` (or `postgresql://`) URL. It is shown (`Display`, `Debug`, every error)
/// without its password.
#[derive(Clone)]
pub struct PostgresUrl {
    config: postgres::Config,
    shown: String,
    password: Option<Zeroizing<String>>,
}

impl PostgresUrl {
    /// Whether `text` is meant as a PostgreSQL URL rather than a file.
    pub fn is_url(text: &str) -> bool {
        ["postgres://", "postgresql://"].iter().any(|scheme| {
            text.get(..scheme.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
        })
    }

    pub fn parse(text: &str) -> Result<Self, CompatError> {
        let shown = redact(text);
        let fail = |reason: String| CompatError::Postgres {
            url: shown.clone(),
            reason,
        };
        if !Self::is_url(text) {
            return Err(fail("not a postgres:// URL".into()));
        }
        let mut config: postgres::Config = text.parse().map_err(|err: postgres::Error| {
            fail(format!("not a PostgreSQL URL ({})", chain(&err)))
        })?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(fail(
                "sslmode=require asks for TLS, which keypooler does not speak to PostgreSQL; use sslmode=disable on a trusted network or through a tunnel".into(),
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let password = config
            .get_password()
            .map(|bytes| Zeroizing::new(String::from_utf8_lossy(bytes).into_owned()));
        Ok(Self {
            config,
            shown,
            password,
        })
    }

    pub(super) fn connect(&self) -> Result<Client, CompatError> {
        self.config
            .connect(NoTls)
            .map_err(|err| self.error("cannot connect", &err))
    }

    /// An error of the server or the connection, without the password even if a message
    /// quoted it.
    pub(super) fn error(&self, doing: &str, err: &postgres::Error) -> CompatError {
        let mut reason = format!("{doing}: {}", chain(err));
        if let Some(password) = self.password.as_deref().filter(|p| !p.is_empty()) {
            reason = reason.replace(password, "***");
        }
        CompatError::Postgres {
            url: self.shown.clone(),
            reason,
        }
    }

    pub(super) fn not_keypooler(&self, reason: String) -> CompatError {
        CompatError::NotKeypoolerPostgres {
            url: self.shown.clone(),
            reason,
        }
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresUrl({})", self.shown)
    }
}

/// `url` with the password of its user part and of a `password=` parameter replaced by `***`.
pub fn redact(url: &str) -> String {
    let (head, query) = url.split_once('?').unwrap_or((url, ""));
    let mut shown = match head.split_once("://") {
        // The user part ends at the last '@': a password may hold '/' or '@' unescaped.
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((user, after)) => match user.split_once(':') {
                Some((name, _)) => format!("{scheme}://{name}:***@{after}"),
                None => head.to_owned(),
            },
            None => head.to_owned(),
        },
        None => head.to_owned(),
    };
    if !query.is_empty() {
        let parameters: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&parameters.join("&"));
    }
    shown
}

/// An error with its causes: the driver's own text is only the first link.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(cause.to_string().trim());
        source = cause.source();
    }
    text
}

/// Unix milliseconds as a `TIMESTAMPTZ` parameter.
fn at(unix_ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Writes `contents` (values opened with `sealer`, re-sealed Go-style under it) into the empty
/// database at `url`, the Go service's schema first, all in one transaction: a database that
/// already holds a table is refused, and on any error nothing is left written. `now_ms` dates
/// the budgets' current periods.
pub fn export_postgres(
    contents: &Contents,
    sealer: &Sealer,
    url: &PostgresUrl,
    now_ms: i64,
    progress: &ProgressBar,
) -> Result<ExportSummary, CompatError> {
    let mut client = url.connect()?;
    let mut txn = client
        .transaction()
        .map_err(|err| url.error("cannot start a transaction", &err))?;
    let present: Vec<String> = txn
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') \
             ORDER BY c.relname",
            &[],
        )
        .map_err(|err| url.error("cannot list the tables", &err))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if !present.is_empty() {
        return Err(CompatError::PostgresNotEmpty {
            url: url.to_string(),
            tables: present.join(", "),
        });
    }
    let summary = fill(&mut txn, contents, sealer, now_ms, progress).map_err(|err| match err {
        FillError::Postgres(doing, err) => url.error(doing, &err),
        FillError::Compat(err) => err,
    })?;
    txn.commit()
        .map_err(|err| url.error("cannot commit", &err))?;
    Ok(summary)
}

/// Errors while filling the database: the server's (with what was being written), or ours
/// about a record.
enum FillError {
    Postgres(&'static str, postgres::Error),
    Compat(CompatError),
}

impl From<CompatError> for FillError {
    fn from(err: CompatError) -> Self {
        FillError::Compat(err)
    }
}

/// Tags a server error with what was being written.
trait Doing<T> {
    fn doing(self, what: &'static str) -> Result<T, FillError>;
}

impl<T> Doing<T> for Result<T, postgres::Error> {
    fn doing(self, what: &'static str) -> Result<T, FillError> {
        self.map_err(|err| FillError::Postgres(what, err))
    }
}

fn fill(
    txn: &mut Transaction<'_>,
    contents: &Contents,
    sealer: &Sealer,
    now_ms: i64,
    progress: &ProgressBar,
) -> Result<ExportSummary, FillError> {
    txn.batch_execute(SCHEMA_MIGRATIONS_SQL)
        .doing("cannot create schema_migrations")?;
    for (version, name, sql) in MIGRATIONS {
        txn.batch_execute(sql).doing("cannot create the schema")?;
        txn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .doing("cannot write schema_migrations")?;
    }
    let tier_insert = txn
        .prepare("INSERT INTO tiers (id, name, description, created_at) VALUES ($1, $2, $3, $4)")
        .doing("cannot write tiers")?;
    let feature_insert = txn
        .prepare(
            "INSERT INTO tier_features (tier_id, feature, rate_limit, window_seconds) VALUES ($1, $2, $3, $4)",
        )
        .doing("cannot write tier_features")?;
    for tier in &contents.tiers {
        txn.execute(
            &tier_insert,
            &[
                &tier.id,
                &tier.name,
                &tier.description,
                &at(tier.created_at_ms),
            ],
        )
        .doing("cannot write tiers")?;
        for (feature, limit) in &tier.features {
            let rate = i32::try_from(limit.rate_limit).map_err(|_| {
                CompatError::row(
                    "tiers",
                    tier.id.clone(),
                    format!(
                        "feature {feature:?}: rate_limit does not fit the Go service's INTEGER"
                    ),
                )
            })?;
            let window = i32::try_from(limit.window_seconds).unwrap_or(i32::MAX);
            txn.execute(&feature_insert, &[&tier.id, feature, &rate, &window])
                .doing("cannot write tier_features")?;
        }
    }
    let tiers: HashSet<&str> = contents.tiers.iter().map(|t| t.id.as_str()).collect();
    progress.set_length(contents.keys.len() as u64);
    progress.set_message("writing");
    let key_insert = txn
        .prepare(
            "INSERT INTO keys (id, name, key_value, tier_id, is_active, expires_at, usage_limit, usage_count, \
             usage_window_seconds, usage_window_start, exhausted_until, metadata_json, created_at, \
             budget_amount, budget_unit, budget_reset_day, spent, spent_period_start) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             CAST($14::text AS DOUBLE PRECISION), $15, $16, CAST($17::text AS DOUBLE PRECISION), $18)",
        )
        .doing("cannot write keys")?;
    let secret_insert = txn
        .prepare("INSERT INTO key_secrets (key_id, name, value) VALUES ($1, $2, $3)")
        .doing("cannot write key_secrets")?;
    for key in &contents.keys {
        write_key(
            txn,
            &key_insert,
            &secret_insert,
            key,
            &tiers,
            sealer,
            now_ms,
        )?;
        progress.inc(1);
    }
    let consumer_insert = txn
        .prepare(
            "INSERT INTO consumers (id, name, token_hash, description, is_active, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .doing("cannot write consumers")?;
    let scope_insert = txn
        .prepare(
            "INSERT INTO consumer_scopes (consumer_id, tier_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .doing("cannot write consumer_scopes")?;
    for consumer in &contents.consumers {
        txn.execute(
            &consumer_insert,
            &[
                &consumer.id,
                &consumer.name,
                &hex::encode(&consumer.token_hash.0),
                &consumer.description,
                &consumer.active,
                &at(consumer.created_at_ms),
            ],
        )
        .doing("cannot write consumers")?;
        for tier_id in &consumer.scopes {
            txn.execute(&scope_insert, &[&consumer.id, tier_id])
                .doing("cannot write consumer_scopes")?;
        }
    }
    Ok(ExportSummary {
        schema: Schema::Latest,
        tiers: contents.tiers.len(),
        keys: contents.keys.len(),
        consumers: contents.consumers.len(),
        written_inactive: Default::default(),
        left_out: Vec::new(),
    })
}

fn write_key(
    txn: &mut Transaction<'_>,
    key_insert: &postgres::Statement,
    secret_insert: &postgres::Statement,
    key: &KeyRecord,
    tiers: &HashSet<&str>,
    sealer: &Sealer,
    now_ms: i64,
) -> Result<(), FillError> {
    let opened = open_for_export(key, tiers, sealer)?;
    let integer = |what: &str, n: u64| {
        i32::try_from(n).map_err(|_| {
            CompatError::row(
                "keys",
                key.id.clone(),
                format!("{what} does not fit the Go service's INTEGER"),
            )
        })
    };
    let usage_limit = key
        .usage_limit
        .map(|n| integer("usage_limit", n))
        .transpose()?;
    let usage_window = key
        .usage_window_seconds
        .map(|n| integer("usage_window_seconds", n))
        .transpose()?;
    // The Go service counts `usage_count` in an INTEGER too; past it, the key is used up anyway.
    let usage_count = i32::try_from(key.usage_count).unwrap_or(i32::MAX);
    // What is spent counts in the budget's period open now (0 once that period has ended).
    let budget = key_budget(key, now_ms);
    let reset_day = budget.and_then(|b| b.limit.reset_day).map(i32::from);
    let spent_period_start = budget.map(|b| at(b.period_start_ms));
    txn.execute(
        key_insert,
        &[
            &key.id,
            &key.name,
            &seal_tagged(sealer, &opened.value),
            &key.tier_id,
            &key.active,
            &key.expires_at_ms.map(at),
            &usage_limit,
            &usage_count,
            &usage_window,
            &key.usage_window_start_ms.map(at),
            &key.exhausted_until_ms.map(at),
            &serde_json::Value::Object(key.metadata.clone()).to_string(),
            &at(key.created_at_ms),
            &budget.map(|b| format_nanos(b.limit.amount_nanos)),
            &budget.map(|b| b.limit.unit.as_str()),
            &reset_day,
            &format_nanos(budget.map_or(0, |b| b.spent_nanos)),
            &spent_period_start,
        ],
    )
    .doing("cannot write keys")?;
    for (name, value) in &opened.secrets {
        txn.execute(secret_insert, &[&key.id, name, &seal_tagged(sealer, value)])
            .doing("cannot write key_secrets")?;
    }
    Ok(())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        for (url, shown) in [
            (
                "postgres://kp:hunter2@127.0.0.1:5432/go?sslmode=disable",
                "postgres://kp:***@127.0.0.1:5432/go?sslmode=disable",
            ),
            (
                "postgresql://kp:p%40ss:w@db/go",
                "postgresql://kp:***@db/go",
            ),
            ("postgres://kp:pa/s@s@db/go", "postgres://kp:***@db/go"),
            (
                "postgres://kp@db/go?password=hunter2&sslmode=disable",
                "postgres://kp@db/go?password=***&sslmode=disable",
            ),
            ("postgres://db/go", "postgres://db/go"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
        let url =
            PostgresUrl::parse("postgres://kp:hunter2@127.0.0.1:1/go?sslmode=disable").unwrap();
        assert!(!format!("{url} {url:?}").contains("hunter2"));
    }

    /// The migrations written are the Go service's own files: the fixture the tests load into
    /// PostgreSQL is its runner's transcript, each file verbatim between its markers, and the
    /// round-trip test compares the schema an export creates with the fixture's.
    #[test]
    fn the_migrations_are_the_go_services_files_verbatim() {
        let transcript = include_str!("../../tests/fixtures/go-keypooler-postgres/schema.sql");
        assert!(transcript.contains(&format!(
            "-- internal/db/migrations.go\n{SCHEMA_MIGRATIONS_SQL}"
        )));
        for (version, name, sql) in MIGRATIONS {
            let file = format!("migrations/{version:03}_{name}.sql");
            assert!(
                transcript.contains(&format!("-- {file}\n{sql}-- (end of {file})\n")),
                "{file}"
            );
        }
    }

    #[test]
    fn tls_is_refused_rather_than_skipped() {
        let err = PostgresUrl::parse("postgres://kp:hunter2@db/go?sslmode=require").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sslmode=require"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(PostgresUrl::parse("/tmp/go.db").is_err());
        assert!(PostgresUrl::is_url("PostgreSQL://db/go"));
        assert!(!PostgresUrl::is_url("go.db"));
    }
}
