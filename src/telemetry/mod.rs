//! Telemetry, a leaf every layer may import: the name of every metric, the [`Meter`] handles are
//! registered with, and the log setup.
//!
//! What is logged: start-up (version, addresses, database path, pool size, encryption verified),
//! each committed admin change (ids and names, never values), failures (5xx, write batches),
//! and at debug level one line per request (method, route template, status, duration). No
//! header is ever logged, so neither is `Authorization`.
//!
//! The Prometheus exporter, which reads the live snapshot at scrape time, sits above the layers
//! it reads, in `http`.

mod meter;
mod names;

use std::io::IsTerminal;

pub use meter::Meter;
pub use names::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// How to log; from the `LOG_LEVEL` and `LOG_FORMAT` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    pub level: tracing::Level,
    pub format: LogFormat,
}

/// Installs the global subscriber, writing to stdout. Call once, before anything logs.
pub fn init_logging(config: LogConfig) {
    // Colours only for a terminal: piped into a file or a collector they are noise.
    let builder = tracing_subscriber::fmt()
        .with_max_level(config.level)
        .with_writer(std::io::stdout)
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(false);
    let installed = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    if installed.is_err() {
        tracing::debug!("a log subscriber was already installed");
    }
}
