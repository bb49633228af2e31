//! Logs: one JSON object per line, or human-readable lines, at the configured level; and
//! Prometheus metrics ([`prometheus`]).
//!
//! What is logged: start-up (version, addresses, database path, pool size, encryption verified),
//! each committed admin change (ids and names, never values), failures (5xx, write batches),
//! and at debug level one line per request (method, route template, status, duration). No
//! header is ever logged, so neither is `Authorization`.

pub mod prometheus;

use std::io::IsTerminal;

use crate::config::{LogConfig, LogFormat};

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
