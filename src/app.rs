//! Wiring: open the store, build the first snapshot, start the writer, serve HTTP until the
//! shutdown future resolves, then let the writer finish its queue and close the database.

use std::future::Future;
use std::sync::Arc;

use secrecy::SecretString;
use tokio::net::TcpListener;

use crate::broker::{AuditLog, Clock, Pool};
use crate::crypto::Sealer;
use crate::store::{Store, StoreError};
use crate::writer::{self, Writer, WriterThread};

/// What every handler shares. Cloning it clones one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

struct Shared {
    pool: Arc<Pool>,
    writer: Writer,
    admin_token: SecretString,
    audit: Option<Arc<AuditLog>>,
}

impl AppState {
    pub fn pool(&self) -> &Pool {
        &self.0.pool
    }

    pub fn writer(&self) -> &Writer {
        &self.0.writer
    }

    pub fn admin_token(&self) -> &SecretString {
        &self.0.admin_token
    }

    /// The audit trail, when it is on.
    #[inline]
    pub fn audit(&self) -> Option<&AuditLog> {
        self.0.audit.as_deref()
    }
}

/// Choices made at start-up beyond the store and the token.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Record every served key in the audit trail (`GET /admin/usage`).
    pub audit: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { audit: true }
    }
}

/// A started broker: the state to serve and the writer thread to wait for at the end.
pub struct App {
    pub state: AppState,
    writer: WriterThread,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the writer thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("cannot reserve the usage of capped keys: {0}")]
    Reserve(writer::WriteError),
}

impl App {
    /// Loads everything in `store` into the first snapshot and starts the writer, with the
    /// default [`Options`].
    pub fn start(
        store: Store,
        sealer: Sealer,
        clock: Clock,
        admin_token: SecretString,
    ) -> Result<Self, StartError> {
        Self::start_with(store, sealer, clock, admin_token, Options::default())
    }

    pub fn start_with(
        store: Store,
        sealer: Sealer,
        clock: Clock,
        admin_token: SecretString,
        options: Options,
    ) -> Result<Self, StartError> {
        let contents = store.load()?;
        let (catalog, skipped) = writer::load::catalog(&contents, &sealer, &clock);
        for skip in &skipped {
            tracing::error!(table = skip.table, id = %skip.id, reason = %skip.reason, "record left out of the pool");
        }
        let pool = Arc::new(Pool::new(clock));
        let snapshot = pool.publish(catalog.clone(), &catalog.features());
        tracing::info!(
            path = %store.path().display(),
            tiers = snapshot.catalog.tier_count(),
            keys = snapshot.catalog.key_count(),
            features = snapshot.feature_count(),
            skipped = skipped.len(),
            encryption_verified = true,
            "database opened"
        );
        writer::reserve_all(&store, &catalog, pool.clock()).map_err(StartError::Reserve)?;
        let audit = options.audit.then(|| Arc::new(AuditLog::default()));
        let (writer, thread) =
            writer::spawn(store, sealer, Arc::clone(&pool), catalog, audit.clone())?;
        Ok(Self {
            state: AppState(Arc::new(Shared {
                pool,
                writer,
                admin_token,
                audit,
            })),
            writer: thread,
        })
    }

    /// Serves until `shutdown` resolves: then stops accepting, finishes in-flight requests, lets
    /// the writer apply what is queued, and closes the database before returning.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Self { state, writer } = self;
        let flusher = state
            .audit()
            .is_some()
            .then(|| tokio::spawn(flush_audit(state.clone())));
        let last_flush = state.writer().clone();
        axum::serve(listener, crate::http::router(state))
            .with_graceful_shutdown(shutdown)
            .await?;
        if let Some(flusher) = flusher {
            flusher.abort();
            let _ = flusher.await;
        }
        // What was served until the end is written before the database closes.
        last_flush.flush_audit();
        drop(last_flush);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(std::io::Error::other)
    }
}

/// Asks the writer to write the audit queue about once a second, while there is something in it.
async fn flush_audit(state: AppState) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if state.audit().is_some_and(|audit| !audit.is_empty()) {
            state.writer().flush_audit();
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests and queued writes");
}
