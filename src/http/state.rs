//! What every handler shares.

use std::sync::Arc;

use secrecy::SecretString;
use tokio::sync::Semaphore;

use super::PrometheusExporter;
use super::wait::Waiters;
use crate::broker::{AuditLog, Pool};
use crate::telemetry::Meter;
use crate::writer::Writer;

/// What every handler shares. Cloning it clones one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

struct Shared {
    pool: Arc<Pool>,
    writer: Writer,
    admin_token: SecretString,
    exporter: Option<PrometheusExporter>,
    audit: Option<Arc<AuditLog>>,
    /// The one backup slot: `GET /admin/backup` answers 409 while it is taken.
    backups: Arc<Semaphore>,
    /// The `GET /key?wait=` requests waiting for a key.
    waiters: Waiters,
}

impl AppState {
    /// The state over a started pool and writer; `exporter` is `None` when metrics are off, and
    /// `audit` when the audit trail is. At most `max_waiters` requests wait for a key at once.
    pub fn new(
        pool: Arc<Pool>,
        writer: Writer,
        admin_token: SecretString,
        exporter: Option<PrometheusExporter>,
        audit: Option<Arc<AuditLog>>,
        max_waiters: usize,
    ) -> Self {
        let meter = exporter
            .as_ref()
            .map_or_else(Meter::off, PrometheusExporter::meter);
        let waiters = Waiters::new(Arc::clone(&pool), max_waiters, &meter);
        Self(Arc::new(Shared {
            pool,
            writer,
            admin_token,
            exporter,
            audit,
            backups: super::backup::slot(),
            waiters,
        }))
    }

    pub fn pool(&self) -> &Pool {
        &self.0.pool
    }

    pub fn writer(&self) -> &Writer {
        &self.0.writer
    }

    pub fn admin_token(&self) -> &SecretString {
        &self.0.admin_token
    }

    /// The Prometheus exporter, unless metrics are off.
    pub fn exporter(&self) -> Option<&PrometheusExporter> {
        self.0.exporter.as_ref()
    }

    /// The requests waiting for a key.
    pub fn waiters(&self) -> &Waiters {
        &self.0.waiters
    }

    /// The one backup slot.
    pub fn backups(&self) -> &Arc<Semaphore> {
        &self.0.backups
    }

    /// The audit trail, when it is on.
    #[inline]
    pub fn audit(&self) -> Option<&AuditLog> {
        self.0.audit.as_deref()
    }
}
