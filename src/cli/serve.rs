//! `keypooler serve`: validated settings, the process hardened, the runtime, the listeners.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::Failure;
use crate::app::{App, Options, shutdown_signal};
use crate::broker::Clock;
use crate::compat::PostgresUrl;
use crate::config::{ServeConfig, Settings};
use crate::crypto::Sealer;
use crate::store::Store;

pub(super) fn run(settings: &Settings) -> Result<(), Failure> {
    let config = ServeConfig::from_settings(settings)?;
    warn_of_database_url(&config.db_path);
    crate::hardening::apply_at_start_up(config.hardening, config.limits.max_connections)
        .map_err(anyhow::Error::from)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keypooler-http")
        .build()
        .map_err(anyhow::Error::from)?;
    runtime.block_on(async move {
        let sealer = Sealer::new(&config.encryption_key);
        let store = Store::open(&config.db_path, &sealer).map_err(anyhow::Error::from)?;
        let metrics = &config.metrics;
        let options = Options {
            audit: config.audit,
            metrics: metrics.clone(),
            limits: config.limits,
            health: config.key_health,
        };
        let app = App::start_with(
            store,
            sealer,
            Clock::monotonic(),
            config.admin_token,
            options,
        )
        .map_err(anyhow::Error::from)?;
        let listener = bind(config.bind_address, config.port).await?;
        let metrics_listener = match metrics.port.filter(|_| metrics.enabled) {
            Some(port) => Some(bind(config.bind_address, port).await?),
            None => None,
        };
        let shutdown = shutdown_signal();
        let address = listener.local_addr().map_err(anyhow::Error::from)?;
        let metrics_at = match (&metrics_listener, metrics.enabled) {
            (Some(listener), _) => listener
                .local_addr()
                .map_err(anyhow::Error::from)?
                .to_string(),
            (None, true) => address.to_string(),
            (None, false) => "off".to_owned(),
        };
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            address = %address,
            metrics = %metrics_at,
            metrics_token = metrics.enabled && metrics.token.is_some(),
            "listening"
        );
        let serving = match metrics_listener {
            Some(metrics_listener) => {
                app.serve_with_metrics_listener(listener, metrics_listener, shutdown)
                    .await
            }
            None => app.serve(listener, shutdown).await,
        };
        serving.map_err(anyhow::Error::from)?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// The Go service's newest version keeps its data at `DATABASE_URL`; hosting platforms set that
/// variable on their own. Set to a PostgreSQL URL while there is no database at DB_PATH yet, it
/// most likely means a move from the Go service that has not brought its data over: one warning
/// (without the URL) names the import command, and start-up goes on with an empty database.
fn warn_of_database_url(db_path: &std::path::Path) {
    let postgres = std::env::var("DATABASE_URL").is_ok_and(|url| PostgresUrl::is_url(url.trim()));
    if postgres && !db_path.exists() {
        tracing::warn!(
            db_path = %db_path.display(),
            "DATABASE_URL names a PostgreSQL database (the Go keypooler's), which keypooler does not use: it keeps its data in DB_PATH, which does not exist yet, and starts empty. To bring the Go service's data over, stop keypooler and run: keypooler import --from \"$DATABASE_URL\""
        );
    }
}

/// Binds `address`, or when it is unset every interface (IPv6 and IPv4 where the system allows
/// dual stack, else IPv4).
async fn bind(address: Option<IpAddr>, port: u16) -> Result<tokio::net::TcpListener, Failure> {
    let cannot = |at: &dyn std::fmt::Display, err: std::io::Error| -> Failure {
        anyhow::anyhow!("cannot listen on {at}: {err}").into()
    };
    if let Some(address) = address {
        let at = SocketAddr::new(address, port);
        return tokio::net::TcpListener::bind(at)
            .await
            .map_err(|err| cannot(&at, err));
    }
    let every = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    match tokio::net::TcpListener::bind(every).await {
        Ok(listener) => Ok(listener),
        Err(_) => tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
            .await
            .map_err(|err| cannot(&format_args!("port {port}"), err)),
    }
}
