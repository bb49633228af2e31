//! Wiring: open the store, build the first snapshot, start the writer, serve HTTP until the
//! shutdown future resolves, then let the writer finish its queue and close the database.

use std::future::Future;
use std::sync::Arc;

use secrecy::SecretString;
use tokio::net::TcpListener;

use crate::broker::{Clock, Pool};
use crate::crypto::Sealer;
use crate::server::Limits;
use crate::store::{Store, StoreError};
use crate::writer::{self, Writer, WriterThread};

/// What every handler shares. Cloning it clones one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

struct Shared {
    pool: Arc<Pool>,
    writer: Writer,
    admin_token: SecretString,
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
}

/// A started broker: the state to serve and the writer thread to wait for at the end.
pub struct App {
    pub state: AppState,
    writer: WriterThread,
    limits: Limits,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the writer thread: {0}")]
    Thread(#[from] std::io::Error),
}

impl App {
    /// Loads everything in `store` into the first snapshot and starts the writer.
    pub fn start(
        store: Store,
        sealer: Sealer,
        clock: Clock,
        admin_token: SecretString,
    ) -> Result<Self, StartError> {
        let contents = store.load()?;
        let (catalog, skipped) = writer::load::catalog(&contents, &sealer);
        for skip in &skipped {
            tracing::error!(key_id = %skip.key_id, reason = %skip.reason, "key left out of the pool");
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
        let (writer, thread) = writer::spawn(store, sealer, Arc::clone(&pool), catalog)?;
        Ok(Self {
            state: AppState(Arc::new(Shared {
                pool,
                writer,
                admin_token,
            })),
            writer: thread,
            limits: Limits::default(),
        })
    }

    /// Serves under `limits` instead of [`Limits::default`].
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Serves until `shutdown` resolves: then stops accepting, finishes in-flight requests, lets
    /// the writer apply what is queued, and closes the database before returning.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Self {
            state,
            writer,
            limits,
        } = self;
        crate::server::serve(listener, crate::http::router(state), limits, shutdown).await?;
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(std::io::Error::other)
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled, so a signal sent as soon as the server says it listens
/// still stops it gracefully. Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        [SignalKind::interrupt(), SignalKind::terminate()].map(|kind| signal(kind).ok())
    };
    async move {
        #[cfg(unix)]
        {
            let [interrupt, terminate] = signals;
            let received = |signal: Option<tokio::signal::unix::Signal>| async move {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = received(interrupt) => {},
                () = received(terminate) => {},
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down: finishing in-flight requests and queued writes");
    }
}
