//! Wiring: open the store, build the first snapshot, start the writer, serve HTTP until the
//! shutdown future resolves, then let the writer finish its queue and close the database.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::net::TcpListener;

use crate::broker::{AuditLog, Clock, HealthPolicy, Pool};
use crate::config::{ConnectionLimits, KeyHealthSettings, MetricsConfig};
use crate::crypto::Sealer;
use crate::http::{AppState, PrometheusExporter};
use crate::store::{Store, StoreError, load_catalog};
use crate::telemetry::Meter;
use crate::writer::{self, WriterThread};

/// How often recorded histogram samples are moved into their buckets: often enough that the
/// samples waiting in between stay a few MiB even at full speed.
const METRICS_UPKEEP: Duration = Duration::from_secs(1);
/// Seconds between saves of the running time when no other commit saves it: what a crash can
/// lose of it (and so lengthen the usage windows open then).
const SAVE_RUNNING_TIME: u64 = 60;

/// Choices made at start-up beyond the store and the token.
#[derive(Clone, Debug)]
pub struct Options {
    /// Record every served key in the audit trail (`GET /admin/usage`).
    pub audit: bool,
    pub metrics: MetricsConfig,
    /// Connection limits and timeouts.
    pub limits: ConnectionLimits,
    /// How reports of the provider's answers turn into cooldowns.
    pub health: KeyHealthSettings,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            audit: true,
            metrics: MetricsConfig::default(),
            limits: ConnectionLimits::default(),
            health: KeyHealthSettings::default(),
        }
    }
}

/// A started broker: the state to serve and the writer thread to wait for at the end.
pub struct App {
    pub state: AppState,
    writer: WriterThread,
    limits: ConnectionLimits,
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
    /// default [`Options`] (metrics and the audit trail on).
    pub fn start(
        store: Store,
        sealer: Sealer,
        clock: Clock,
        admin_token: SecretString,
    ) -> Result<Self, StartError> {
        Self::start_with(store, sealer, clock, admin_token, Options::default())
    }

    /// [`App::start`], measuring as `metrics` says (its port is the caller's to bind).
    pub fn start_with_metrics(
        store: Store,
        sealer: Sealer,
        clock: Clock,
        admin_token: SecretString,
        metrics: &MetricsConfig,
    ) -> Result<Self, StartError> {
        let options = Options {
            metrics: metrics.clone(),
            ..Options::default()
        };
        Self::start_with(store, sealer, clock, admin_token, options)
    }

    pub fn start_with(
        store: Store,
        sealer: Sealer,
        clock: Clock,
        admin_token: SecretString,
        options: Options,
    ) -> Result<Self, StartError> {
        let exporter = PrometheusExporter::new(&options.metrics);
        let meter = exporter
            .as_ref()
            .map_or_else(Meter::off, PrometheusExporter::meter);
        // Running time goes on from where the last run saved it: usage windows end in it.
        let clock = clock.resumed_at(store.running_ms()?);
        let (mut catalog, skipped) = load_catalog(&store, &sealer, &clock)?;
        catalog.expire(clock.unix_now_ms());
        for skip in &skipped {
            tracing::error!(table = skip.table, id = %skip.id, reason = %skip.reason, "record left out of the pool");
        }
        let pool = Arc::new(Pool::with_meter(clock, meter.clone()));
        let snapshot = pool.publish(catalog.clone(), &catalog.features());
        let unix_now = pool.clock().unix_now_ms();
        tracing::info!(
            path = %store.path().display(),
            tiers = snapshot.catalog.tier_count(),
            pool_size = snapshot.catalog.key_count(),
            active_keys = snapshot.catalog.tier_keys(unix_now).map(|(_, keys)| keys.active).sum::<usize>(),
            features = snapshot.feature_count(),
            skipped = skipped.len(),
            encryption_verified = true,
            "database opened"
        );
        writer::reserve_all(&store, &catalog, pool.clock()).map_err(StartError::Reserve)?;
        let audit = options.audit.then(|| Arc::new(AuditLog::default()));
        let (writer, thread) = writer::spawn(
            store,
            sealer,
            Arc::clone(&pool),
            catalog,
            audit.clone(),
            &meter,
            HealthPolicy {
                cooldown_max_seconds: options.health.cooldown_max_seconds,
                failure_threshold: options.health.failure_threshold,
            },
        )?;
        Ok(Self {
            state: AppState::new(
                pool,
                writer,
                admin_token,
                exporter,
                audit,
                options.limits.max_waiters as usize,
            ),
            writer: thread,
            limits: options.limits,
        })
    }

    /// Serves everything on `listener` until `shutdown` resolves: then stops accepting, finishes
    /// in-flight requests, lets the writer apply what is queued, and closes the database before
    /// returning.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_on(listener, None, shutdown).await
    }

    /// [`App::serve`], with `/metrics` on `metrics_listener` instead of `listener`.
    pub async fn serve_with_metrics_listener(
        self,
        listener: TcpListener,
        metrics_listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_on(listener, Some(metrics_listener), shutdown)
            .await
    }

    async fn serve_on(
        self,
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Self {
            state,
            writer,
            limits,
        } = self;
        let api_state = state.clone();
        // Dropped when `shutdown` resolves (or the main server fails), which stops the metrics
        // listener and the upkeep.
        let (stop, stopped) = tokio::sync::watch::channel(());
        let waiters = state.waiters().clone();
        let shutdown = async move {
            shutdown.await;
            // Waiting requests are answered 503 now, so the connections they hold can close.
            waiters.close();
            drop(stop);
        };
        let upkeep = state.exporter().map(|exporter| {
            let (handle, mut stopped) = (exporter.handle(), stopped.clone());
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(METRICS_UPKEEP);
                loop {
                    tokio::select! {
                        _ = ticks.tick() => handle.run_upkeep(),
                        _ = stopped.changed() => break,
                    }
                }
            })
        });
        let (api, scrape) = match metrics_listener {
            None => (crate::http::router(state), None),
            Some(metrics_listener) => {
                let mut stopped = stopped;
                let scrape = crate::server::serve(
                    metrics_listener,
                    crate::http::metrics_router(state.clone()),
                    limits,
                    async move {
                        let _ = stopped.changed().await;
                    },
                );
                (crate::http::api_router(state), Some(tokio::spawn(scrape)))
            }
        };
        let chores = writer_chores(&api_state);
        let served = crate::server::serve(listener, api, limits, shutdown).await;
        chores.abort();
        let _ = chores.await;
        // What was served until the end is written before the database closes.
        api_state.writer().flush_audit();
        drop(api_state);
        if let Some(upkeep) = upkeep {
            upkeep.await.map_err(std::io::Error::other)?;
        }
        if let Some(scrape) = scrape {
            scrape.await.map_err(std::io::Error::other)??;
        }
        served?;
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(std::io::Error::other)
    }
}

/// Once a second, asks the writer for its periodic work when there is some: writing the audit
/// queue when something is in it, taking keys that have expired out of the rotation (until
/// then `GET /key` skips them), bringing back keys whose spend budget has reset, and letting
/// keys whose cooldown or exhaustion ended be available again (`GET /key` serves them from
/// their deadline on; this is for what waits on them); and once every [`SAVE_RUNNING_TIME`]
/// seconds, saving the running time (every commit does too).
fn writer_chores(state: &AppState) -> tokio::task::JoinHandle<()> {
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for second in 0u64.. {
            tick.tick().await;
            if second % SAVE_RUNNING_TIME == SAVE_RUNNING_TIME - 1 {
                state.writer().save_running_time();
            }
            if state.audit().is_some_and(|audit| !audit.is_empty()) {
                state.writer().flush_audit();
            }
            let clock = state.pool().clock();
            let snapshot = state.pool().load();
            let catalog = &snapshot.catalog;
            let unix_now = clock.unix_now_ms();
            let due = (catalog.next_expiry().into_iter())
                .chain(catalog.next_reset())
                .min()
                .is_some_and(|at| at <= unix_now);
            let recovered = (catalog.next_recovery()).is_some_and(|at| at <= clock.now_ms());
            if due || recovered {
                state.writer().expire_keys();
            }
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called (inside the
/// runtime), not when the future is first polled, so a signal sent as soon as "listening" is
/// logged stops the server gracefully instead of killing it.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        [SignalKind::terminate(), SignalKind::interrupt()].map(|kind| signal(kind).ok())
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |signal: Option<tokio::signal::unix::Signal>| async move {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let [terminate, interrupt] = signals;
            tokio::select! {
                () = wait(terminate) => {},
                () = wait(interrupt) => {},
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down: finishing in-flight requests and queued writes");
    }
}
