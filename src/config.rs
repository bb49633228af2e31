//! Validated configuration. Each setting comes from its environment variable or the flag of
//! the same name; a bad value stops start-up with one line naming the variable, never the
//! secret it held.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

use crate::crypto::EncryptionKey;
use crate::hardening;
use crate::telemetry::{LogConfig, LogFormat};

/// A setting that is missing or malformed. The message names the variable, never a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The raw settings, as clap reads them (all text, so that clap never prints a bad value: a
/// secret could be in it).
#[derive(Args, Default)]
pub struct Settings {
    /// AES-256-GCM key for values at rest: 64 hex characters. Prefer the environment variable.
    #[arg(long, env = "ENCRYPTION_KEY", hide_env_values = true, global = true)]
    pub encryption_key: Option<String>,
    /// Bearer token of the superuser. Prefer the environment variable.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub admin_token: Option<String>,
    /// Port to listen on (1-65535) [default: 8080].
    #[arg(long, alias = "port", env = "SERVER_PORT", global = true)]
    pub server_port: Option<String>,
    /// The IP address to listen on, for the API and /metrics: 127.0.0.1 or ::1 for this host
    /// only [default: 0.0.0.0, every interface; IPv6 too (::) where the system allows dual stack].
    #[arg(long, env = "BIND_ADDRESS", global = true)]
    pub bind_address: Option<String>,
    /// The redb database file; its folder is created if missing [default: ./data/pool.redb].
    #[arg(long, env = "DB_PATH", global = true)]
    pub db_path: Option<String>,
    /// debug, info, warn or error [default: info].
    #[arg(long, env = "LOG_LEVEL", global = true)]
    pub log_level: Option<String>,
    /// json or pretty [default: json].
    #[arg(long, env = "LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
    /// Record every served key for `GET /admin/usage`: on or off [default: on].
    #[arg(long, env = "AUDIT", global = true)]
    pub audit: Option<String>,
    /// on or off: off records no metrics and serves no /metrics [default: on].
    #[arg(long, env = "METRICS", global = true)]
    pub metrics: Option<String>,
    /// Serve /metrics on this port (1-65535) instead of the main one [default: the main port].
    #[arg(long, env = "METRICS_PORT", global = true)]
    pub metrics_port: Option<String>,
    /// Bearer token /metrics requires [default: none, /metrics is public]. Prefer the environment
    /// variable.
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true, global = true)]
    pub metrics_token: Option<String>,
    /// on or off: the per-key budget series (off for very large pools) [default: on].
    #[arg(long, env = "METRICS_PER_KEY", global = true)]
    pub metrics_per_key: Option<String>,
    /// Most per-key series /metrics lists (0-10000000); above it they give way to the per-tier
    /// ones [default: 10000].
    #[arg(long, env = "METRICS_PER_KEY_MAX", global = true)]
    pub metrics_per_key_max: Option<String>,
    /// Seconds a client may take to send a request's head (0.001-3600) [default: 10].
    #[arg(long, env = "HEADER_READ_TIMEOUT", global = true)]
    pub header_read_timeout: Option<String>,
    /// Seconds to answer a request, reading its body included (0.001-3600) [default: 30].
    #[arg(long, env = "REQUEST_TIMEOUT", global = true)]
    pub request_timeout: Option<String>,
    /// Most connections open at once (1-1000000); more wait to be accepted [default: 4096].
    #[arg(long, env = "MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<String>,
    /// Seconds an answer may make no progress (the client not reading) before its connection is
    /// closed (0.001-3600) [default: 30].
    #[arg(long, env = "WRITE_TIMEOUT", global = true)]
    pub write_timeout: Option<String>,
    /// Most connections open at once from one IP address (an IPv6 /64), 1-1000000, or off (also
    /// 0); more are closed at accept [default: off].
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", global = true)]
    pub max_connections_per_ip: Option<String>,
    /// Longest cooldown of a key reported rate-limited, in seconds (1-86400); a provider's
    /// Retry-After is capped by it too [default: 300].
    #[arg(long, env = "COOLDOWN_MAX", global = true)]
    pub cooldown_max: Option<String>,
    /// Consecutive 5xx answers or timeouts reported for a key that cool it (1-1000)
    /// [default: 3].
    #[arg(long, env = "FAILURE_THRESHOLD", global = true)]
    pub failure_threshold: Option<String>,
    /// Most `GET /key?wait=` requests waiting for a key at once (0 to half of MAX_CONNECTIONS);
    /// more get 503 [default: 1024, or half of MAX_CONNECTIONS if that is less].
    #[arg(long, env = "MAX_WAITERS", global = true)]
    pub max_waiters: Option<String>,
    /// Leave core dumps on (they are turned off at start-up) [default: false].
    #[arg(long, env = "ALLOW_CORE_DUMPS", global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub allow_core_dumps: Option<String>,
    /// Lock all memory (mlockall) so that keys never reach swap [default: false].
    #[arg(long, env = "MLOCK", global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub mlock: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "[REDACTED]");
        f.debug_struct("Settings")
            .field("encryption_key", &redacted(&self.encryption_key))
            .field("admin_token", &redacted(&self.admin_token))
            .field("server_port", &self.server_port)
            .field("bind_address", &self.bind_address)
            .field("db_path", &self.db_path)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("audit", &self.audit)
            .field("metrics", &self.metrics)
            .field("metrics_port", &self.metrics_port)
            .field("metrics_token", &redacted(&self.metrics_token))
            .field("metrics_per_key", &self.metrics_per_key)
            .field("metrics_per_key_max", &self.metrics_per_key_max)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_connections", &self.max_connections)
            .field("write_timeout", &self.write_timeout)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("cooldown_max", &self.cooldown_max)
            .field("failure_threshold", &self.failure_threshold)
            .field("max_waiters", &self.max_waiters)
            .field("allow_core_dumps", &self.allow_core_dumps)
            .field("mlock", &self.mlock)
            .finish()
    }
}

/// What to measure and where to serve it.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// Off: no recorder, no request middleware, no `/metrics` route.
    pub enabled: bool,
    /// `/metrics` on its own listener at this port; `None`: on the main port.
    pub port: Option<u16>,
    /// The bearer token `/metrics` requires, if any.
    pub token: Option<SecretString>,
    /// Whether `/metrics` lists every key's budget per feature (only ever with a token).
    pub per_key: bool,
    /// The most per-key series one scrape lists; with more, it lists none and says so.
    pub per_key_max: usize,
}

impl MetricsConfig {
    /// The default of `METRICS_PER_KEY_MAX`.
    pub const DEFAULT_PER_KEY_MAX: usize = 10_000;
    /// The largest `METRICS_PER_KEY_MAX`.
    const MAX_PER_KEY_MAX: usize = 10_000_000;
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            port: None,
            token: None,
            per_key: true,
            per_key_max: Self::DEFAULT_PER_KEY_MAX,
        }
    }
}

/// How long clients may take and how many may be connected at once (the server's connection
/// limits, not a key's rate limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A whole request head must arrive within this, counted from when the server starts reading
    /// it; otherwise the connection is closed without a reply.
    pub header_read_timeout: Duration,
    /// A request must be answered within this, reading its body included; otherwise `408`.
    pub request_timeout: Duration,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: u32,
    /// A write that stays pending this long (the client reads nothing) closes the connection.
    pub write_timeout: Duration,
    /// Connections open at once from one address (IPv4, or an IPv6 /64); more are closed at
    /// accept. `None`: no cap (behind a proxy every client has the proxy's address).
    pub max_connections_per_ip: Option<u32>,
    /// `GET /key?wait=` requests that may wait for a key at once; more get 503. Each holds a
    /// connection, so at most half of `max_connections`: the other half still serves.
    pub max_waiters: u32,
}

impl ConnectionLimits {
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 4_096;
    pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_WAITERS: u32 = 1_024;
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            write_timeout: Self::DEFAULT_WRITE_TIMEOUT,
            max_connections_per_ip: None,
            max_waiters: Self::DEFAULT_MAX_WAITERS,
        }
    }
}

/// How reports of the provider's answers turn into cooldowns (the broker's `HealthPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyHealthSettings {
    /// `COOLDOWN_MAX`: the longest cooldown, in seconds.
    pub cooldown_max_seconds: u32,
    /// `FAILURE_THRESHOLD`: consecutive 5xx or timeouts that cool a key.
    pub failure_threshold: u32,
}

impl Default for KeyHealthSettings {
    fn default() -> Self {
        Self {
            cooldown_max_seconds: Self::DEFAULT_COOLDOWN_MAX,
            failure_threshold: Self::DEFAULT_FAILURE_THRESHOLD,
        }
    }
}

impl KeyHealthSettings {
    pub const DEFAULT_COOLDOWN_MAX: u32 = 300;
    pub const MAX_COOLDOWN_MAX: u32 = 86_400;
    pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
    pub const MAX_FAILURE_THRESHOLD: u32 = 1_000;
}

/// A value that was set to the empty string counts as unset.
fn given(value: Option<&String>) -> Option<&str> {
    value.map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// An encryption key setting (`ENCRYPTION_KEY`, `NEW_ENCRYPTION_KEY`): required, 64 hex
/// characters. The error names the variable, never the value.
pub fn encryption_key_setting(
    name: &str,
    value: Option<&String>,
) -> Result<EncryptionKey, ConfigError> {
    let text = given(value).ok_or_else(|| {
        ConfigError(format!(
            "{name} is required: 64 hex characters, e.g. from `openssl rand -hex 32`"
        ))
    })?;
    EncryptionKey::parse_hex(text).map_err(|err| ConfigError(format!("{name} {err}")))
}

impl Settings {
    pub fn log(&self) -> Result<LogConfig, ConfigError> {
        let level = match given(self.log_level.as_ref())
            .unwrap_or("info")
            .to_ascii_lowercase()
            .as_str()
        {
            "debug" => tracing::Level::DEBUG,
            "info" => tracing::Level::INFO,
            "warn" | "warning" => tracing::Level::WARN,
            "error" => tracing::Level::ERROR,
            "trace" => tracing::Level::TRACE,
            other => {
                return Err(ConfigError(format!(
                    "LOG_LEVEL must be one of debug, info, warn, error (got {other:?})"
                )));
            }
        };
        let format = match given(self.log_format.as_ref())
            .unwrap_or("json")
            .to_ascii_lowercase()
            .as_str()
        {
            "json" => LogFormat::Json,
            "pretty" | "text" => LogFormat::Pretty,
            other => {
                return Err(ConfigError(format!(
                    "LOG_FORMAT must be json or pretty (got {other:?})"
                )));
            }
        };
        Ok(LogConfig { level, format })
    }

    pub fn encryption_key(&self) -> Result<EncryptionKey, ConfigError> {
        encryption_key_setting("ENCRYPTION_KEY", self.encryption_key.as_ref())
    }

    pub fn admin_token(&self) -> Result<SecretString, ConfigError> {
        let token = given(self.admin_token.as_ref()).ok_or_else(|| {
            ConfigError(format!(
                "ADMIN_TOKEN is required: at least {MIN_ADMIN_TOKEN_CHARS} characters, e.g. from `openssl rand -hex 32`"
            ))
        })?;
        if token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
            return Err(ConfigError(format!(
                "ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_CHARS} characters, e.g. from `openssl rand -hex 32`"
            )));
        }
        Ok(SecretString::from(token.to_owned()))
    }

    pub fn port(&self) -> Result<u16, ConfigError> {
        given(self.server_port.as_ref()).map_or(Ok(8080), |text| parse_port("SERVER_PORT", text))
    }

    /// `None`: every interface (see [`ServeConfig::bind_address`]).
    pub fn bind_address(&self) -> Result<Option<IpAddr>, ConfigError> {
        given(self.bind_address.as_ref())
            .map(|text| {
                text.parse::<IpAddr>().map_err(|_| {
                    ConfigError(format!(
                        "BIND_ADDRESS must be an IP address such as 0.0.0.0, ::, 127.0.0.1 or ::1 (got {text:?})"
                    ))
                })
            })
            .transpose()
    }

    pub fn metrics(&self) -> Result<MetricsConfig, ConfigError> {
        let defaults = MetricsConfig::default();
        let port = given(self.metrics_port.as_ref())
            .map(|text| parse_port("METRICS_PORT", text))
            .transpose()?;
        if port.is_some() && port == Some(self.port()?) {
            return Err(ConfigError(
                "METRICS_PORT must differ from SERVER_PORT (leave it unset to serve /metrics on the main port)".into(),
            ));
        }
        Ok(MetricsConfig {
            enabled: switch("METRICS", self.metrics.as_ref(), defaults.enabled)?,
            port,
            token: given(self.metrics_token.as_ref()).map(|t| SecretString::from(t.to_owned())),
            per_key: switch(
                "METRICS_PER_KEY",
                self.metrics_per_key.as_ref(),
                defaults.per_key,
            )?,
            per_key_max: match given(self.metrics_per_key_max.as_ref()) {
                None => defaults.per_key_max,
                Some(text) => text
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n <= MetricsConfig::MAX_PER_KEY_MAX)
                    .ok_or_else(|| {
                        ConfigError(format!(
                            "METRICS_PER_KEY_MAX must be an integer from 0 to {} (got {text:?})",
                            MetricsConfig::MAX_PER_KEY_MAX
                        ))
                    })?,
            },
        })
    }

    pub fn audit(&self) -> Result<bool, ConfigError> {
        switch("AUDIT", self.audit.as_ref(), true)
    }

    pub fn db_path(&self) -> PathBuf {
        given(self.db_path.as_ref())
            .unwrap_or("./data/pool.redb")
            .into()
    }

    /// A `MAX_WAITERS` set above half of `MAX_CONNECTIONS` stops start-up: waiters would hold
    /// every connection. Unset, it is 1,024, or half of `MAX_CONNECTIONS` when that is less.
    pub fn limits(&self) -> Result<ConnectionLimits, ConfigError> {
        let max_connections = match given(self.max_connections.as_ref()) {
            None => ConnectionLimits::DEFAULT_MAX_CONNECTIONS,
            Some(text) => connection_count("MAX_CONNECTIONS", text)?,
        };
        let most_waiters = max_connections / 2;
        let max_waiters = match given(self.max_waiters.as_ref()) {
            None => ConnectionLimits::DEFAULT_MAX_WAITERS.min(most_waiters),
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= most_waiters)
                .ok_or_else(|| {
                    ConfigError(format!(
                        "MAX_WAITERS must be an integer from 0 to {most_waiters}, half of MAX_CONNECTIONS (got {text:?})"
                    ))
                })?,
        };
        Ok(ConnectionLimits {
            header_read_timeout: parse_timeout(
                "HEADER_READ_TIMEOUT",
                self.header_read_timeout.as_ref(),
                ConnectionLimits::DEFAULT_HEADER_READ_TIMEOUT,
            )?,
            request_timeout: parse_timeout(
                "REQUEST_TIMEOUT",
                self.request_timeout.as_ref(),
                ConnectionLimits::DEFAULT_REQUEST_TIMEOUT,
            )?,
            max_connections,
            write_timeout: parse_timeout(
                "WRITE_TIMEOUT",
                self.write_timeout.as_ref(),
                ConnectionLimits::DEFAULT_WRITE_TIMEOUT,
            )?,
            max_connections_per_ip: match given(self.max_connections_per_ip.as_ref()) {
                None => None,
                Some(off) if off == "0" || off.eq_ignore_ascii_case("off") => None,
                Some(text) => Some(connection_count("MAX_CONNECTIONS_PER_IP", text)?),
            },
            max_waiters,
        })
    }

    /// `COOLDOWN_MAX` and `FAILURE_THRESHOLD`.
    pub fn key_health(&self) -> Result<KeyHealthSettings, ConfigError> {
        let bounded = |variable: &str, value: Option<&String>, default: u32, max: u32| {
            given(value).map_or(Ok(default), |text| one_to(variable, text, max))
        };
        Ok(KeyHealthSettings {
            cooldown_max_seconds: bounded(
                "COOLDOWN_MAX",
                self.cooldown_max.as_ref(),
                KeyHealthSettings::DEFAULT_COOLDOWN_MAX,
                KeyHealthSettings::MAX_COOLDOWN_MAX,
            )?,
            failure_threshold: bounded(
                "FAILURE_THRESHOLD",
                self.failure_threshold.as_ref(),
                KeyHealthSettings::DEFAULT_FAILURE_THRESHOLD,
                KeyHealthSettings::MAX_FAILURE_THRESHOLD,
            )?,
        })
    }

    pub fn hardening(&self) -> Result<hardening::Options, ConfigError> {
        Ok(hardening::Options {
            allow_core_dumps: switch("ALLOW_CORE_DUMPS", self.allow_core_dumps.as_ref(), false)?,
            mlock: switch("MLOCK", self.mlock.as_ref(), false)?,
        })
    }
}

/// The shortest `ADMIN_TOKEN`: a guessable superuser token is refused at start-up.
const MIN_ADMIN_TOKEN_CHARS: usize = 16;
/// The largest `MAX_CONNECTIONS`.
const MAX_CONNECTIONS: u32 = 1_000_000;
/// The shortest and longest timeouts, in seconds.
const MIN_TIMEOUT_SECONDS: f64 = 0.001;
const MAX_TIMEOUT_SECONDS: f64 = 3_600.0;

/// An integer from 1 to `max`.
fn one_to(variable: &str, text: &str, max: u32) -> Result<u32, ConfigError> {
    text.parse::<u32>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ConfigError(format!(
                "{variable} must be an integer from 1 to {max} (got {text:?})"
            ))
        })
}

/// A number of connections, from 1 to [`MAX_CONNECTIONS`].
fn connection_count(variable: &str, text: &str) -> Result<u32, ConfigError> {
    one_to(variable, text, MAX_CONNECTIONS)
}

/// A duration in seconds (fractions allowed), from a millisecond to an hour.
fn parse_timeout(
    variable: &str,
    value: Option<&String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = given(value) else {
        return Ok(default);
    };
    text.parse::<f64>()
        .ok()
        .filter(|s| (MIN_TIMEOUT_SECONDS..=MAX_TIMEOUT_SECONDS).contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            ConfigError(format!(
                "{variable} must be a number of seconds from 0.001 to 3600 (got {text:?})"
            ))
        })
}

fn parse_port(name: &str, text: &str) -> Result<u16, ConfigError> {
    text.parse::<u16>()
        .ok()
        .filter(|port| *port >= 1)
        .ok_or_else(|| {
            ConfigError(format!(
                "{name} must be an integer from 1 to 65535 (got {text:?})"
            ))
        })
}

/// An on/off setting (also true/false, 1/0, yes/no).
fn switch(name: &str, value: Option<&String>, default: bool) -> Result<bool, ConfigError> {
    let Some(text) = given(value) else {
        return Ok(default);
    };
    match text.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(ConfigError(format!(
            "{name} must be on or off (got {text:?})"
        ))),
    }
}

/// Everything `serve` needs.
#[derive(Debug)]
pub struct ServeConfig {
    pub encryption_key: EncryptionKey,
    pub admin_token: SecretString,
    pub port: u16,
    /// The address both listeners bind; `None` (unset): every interface, as `::` with IPv4
    /// mapped in where the system allows dual stack, else `0.0.0.0`.
    pub bind_address: Option<IpAddr>,
    pub db_path: PathBuf,
    pub audit: bool,
    pub metrics: MetricsConfig,
    pub limits: ConnectionLimits,
    pub key_health: KeyHealthSettings,
    pub hardening: hardening::Options,
}

impl ServeConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            encryption_key: settings.encryption_key()?,
            admin_token: settings.admin_token()?,
            port: settings.port()?,
            bind_address: settings.bind_address()?,
            db_path: settings.db_path(),
            audit: settings.audit()?,
            metrics: settings.metrics()?,
            limits: settings.limits()?,
            key_health: settings.key_health()?,
            hardening: settings.hardening()?,
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn settings() -> Settings {
        Settings {
            encryption_key: Some("ab".repeat(32)),
            admin_token: Some("admin-token-0123456789".into()),
            ..Settings::default()
        }
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        let mut s = settings();
        s.server_port = Some(String::new());
        s.metrics_port = Some(" ".into());
        let config = ServeConfig::from_settings(&s).unwrap();
        assert_eq!(config.port, 8080);
        assert_eq!(config.bind_address, None);
        assert!(config.metrics.enabled && config.metrics.per_key);
        assert_eq!(config.metrics.per_key_max, 10_000);
        assert!(config.metrics.port.is_none() && config.metrics.token.is_none());
        assert_eq!(config.db_path, PathBuf::from("./data/pool.redb"));
        assert_eq!(config.limits, ConnectionLimits::default());
        assert_eq!(config.hardening, hardening::Options::default());
        assert_eq!(
            config.key_health,
            KeyHealthSettings {
                cooldown_max_seconds: 300,
                failure_threshold: 3
            }
        );
        s.cooldown_max = Some("60".into());
        s.failure_threshold = Some("1".into());
        assert_eq!(
            s.key_health(),
            Ok(KeyHealthSettings {
                cooldown_max_seconds: 60,
                failure_threshold: 1
            })
        );
        assert_eq!(
            s.log().unwrap(),
            LogConfig {
                level: tracing::Level::INFO,
                format: LogFormat::Json
            }
        );
    }

    #[test]
    fn every_bad_value_names_its_variable_and_hides_secrets() {
        type Change = Box<dyn Fn(&mut Settings)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|s| s.encryption_key = None),
                "ENCRYPTION_KEY is required",
            ),
            (
                Box::new(|s| s.encryption_key = Some("secret-short".into())),
                "ENCRYPTION_KEY must be exactly 64 hex characters",
            ),
            (
                Box::new(|s| s.admin_token = Some("  ".into())),
                "ADMIN_TOKEN is required",
            ),
            (
                Box::new(|s| s.admin_token = Some(" secret-short-15 ".into())),
                "ADMIN_TOKEN must be at least 16 characters",
            ),
            (
                Box::new(|s| s.server_port = Some("0".into())),
                "SERVER_PORT must be",
            ),
            (
                Box::new(|s| s.server_port = Some("65536".into())),
                "SERVER_PORT must be",
            ),
            (
                Box::new(|s| s.server_port = Some("http".into())),
                "SERVER_PORT must be",
            ),
            (
                Box::new(|s| s.metrics_port = Some("0".into())),
                "METRICS_PORT must be an integer from 1 to 65535",
            ),
            (
                Box::new(|s| s.metrics_port = Some("70000".into())),
                "METRICS_PORT must be an integer from 1 to 65535",
            ),
            (
                Box::new(|s| s.metrics_port = Some("8080".into())),
                "METRICS_PORT must differ from SERVER_PORT",
            ),
            (
                Box::new(|s| s.bind_address = Some("localhost".into())),
                "BIND_ADDRESS must be an IP address",
            ),
            (
                Box::new(|s| s.bind_address = Some("127.0.0.1:8080".into())),
                "BIND_ADDRESS must be an IP address",
            ),
            (
                Box::new(|s| s.metrics = Some("maybe".into())),
                "METRICS must be on or off",
            ),
            (
                Box::new(|s| s.metrics_per_key_max = Some("-1".into())),
                "METRICS_PER_KEY_MAX must be an integer from 0 to 10000000",
            ),
            (
                Box::new(|s| s.metrics_per_key_max = Some("10000001".into())),
                "METRICS_PER_KEY_MAX must be an integer from 0 to 10000000",
            ),
            (
                Box::new(|s| s.metrics_per_key = Some("sometimes".into())),
                "METRICS_PER_KEY must be on or off",
            ),
        ];
        let more: Vec<(Change, &str)> = vec![
            (
                Box::new(|s| s.header_read_timeout = Some("0".into())),
                "HEADER_READ_TIMEOUT must be a number of seconds",
            ),
            (
                Box::new(|s| s.header_read_timeout = Some("NaN".into())),
                "HEADER_READ_TIMEOUT must be a number of seconds",
            ),
            (
                Box::new(|s| s.request_timeout = Some("3601".into())),
                "REQUEST_TIMEOUT must be a number of seconds",
            ),
            (
                Box::new(|s| s.request_timeout = Some("-1".into())),
                "REQUEST_TIMEOUT must be a number of seconds",
            ),
            (
                Box::new(|s| s.max_connections = Some("0".into())),
                "MAX_CONNECTIONS must be an integer from 1 to 1000000",
            ),
            (
                Box::new(|s| s.max_connections = Some("1000001".into())),
                "MAX_CONNECTIONS must be an integer from 1 to 1000000",
            ),
            (
                Box::new(|s| s.write_timeout = Some("0".into())),
                "WRITE_TIMEOUT must be a number of seconds",
            ),
            (
                Box::new(|s| s.max_connections_per_ip = Some("1000001".into())),
                "MAX_CONNECTIONS_PER_IP must be an integer from 1 to 1000000",
            ),
            (
                Box::new(|s| s.max_connections_per_ip = Some("many".into())),
                "MAX_CONNECTIONS_PER_IP must be an integer from 1 to 1000000",
            ),
            (
                Box::new(|s| {
                    s.max_connections = Some("100".into());
                    s.max_waiters = Some("51".into());
                }),
                "MAX_WAITERS must be an integer from 0 to 50, half of MAX_CONNECTIONS",
            ),
            (
                Box::new(|s| s.max_waiters = Some("-1".into())),
                "MAX_WAITERS must be an integer from 0 to 2048",
            ),
            (
                Box::new(|s| s.allow_core_dumps = Some("maybe".into())),
                "ALLOW_CORE_DUMPS must be on or off",
            ),
            (
                Box::new(|s| s.mlock = Some("2".into())),
                "MLOCK must be on or off",
            ),
            (
                Box::new(|s| s.cooldown_max = Some("0".into())),
                "COOLDOWN_MAX must be an integer from 1 to 86400",
            ),
            (
                Box::new(|s| s.cooldown_max = Some("86401".into())),
                "COOLDOWN_MAX must be an integer from 1 to 86400",
            ),
            (
                Box::new(|s| s.failure_threshold = Some("1001".into())),
                "FAILURE_THRESHOLD must be an integer from 1 to 1000",
            ),
            (
                Box::new(|s| s.failure_threshold = Some("three".into())),
                "FAILURE_THRESHOLD must be an integer from 1 to 1000",
            ),
        ];
        for (change, expected) in cases.into_iter().chain(more) {
            let mut s = settings();
            change(&mut s);
            let err = ServeConfig::from_settings(&s).unwrap_err();
            assert!(err.0.starts_with(expected), "{err}");
            assert!(!err.0.contains("secret-short"));
        }
        let mut s = settings();
        s.log_level = Some("loud".into());
        assert!(s.log().unwrap_err().0.starts_with("LOG_LEVEL"));
        s.log_level = None;
        s.log_format = Some("xml".into());
        assert!(s.log().unwrap_err().0.starts_with("LOG_FORMAT"));
    }

    #[test]
    fn metrics_settings_are_read() {
        let mut s = settings();
        s.metrics = Some("OFF".into());
        s.metrics_port = Some("9091".into());
        s.metrics_token = Some("scrape-secret".into());
        s.metrics_per_key = Some("false".into());
        s.metrics_per_key_max = Some(" 250 ".into());
        let metrics = s.metrics().unwrap();
        assert!(!metrics.enabled && !metrics.per_key);
        assert_eq!(metrics.port, Some(9091));
        assert_eq!(metrics.per_key_max, 250);
        assert_eq!(
            metrics.token.as_ref().map(ExposeSecret::expose_secret),
            Some("scrape-secret")
        );
    }

    #[test]
    fn limits_and_switches_parse() {
        let mut s = settings();
        s.header_read_timeout = Some("0.25".into());
        s.request_timeout = Some(" 45 ".into());
        s.max_connections = Some("10".into());
        s.write_timeout = Some("1.5".into());
        s.max_connections_per_ip = Some("4".into());
        s.allow_core_dumps = Some("Yes".into());
        s.mlock = Some("off".into());
        let config = ServeConfig::from_settings(&s).unwrap();
        assert_eq!(
            config.limits,
            ConnectionLimits {
                header_read_timeout: Duration::from_millis(250),
                request_timeout: Duration::from_secs(45),
                max_connections: 10,
                write_timeout: Duration::from_millis(1_500),
                max_connections_per_ip: Some(4),
                // The default, 1,024, held to half of MAX_CONNECTIONS.
                max_waiters: 5,
            }
        );
        for off in ["OFF", "0"] {
            s.max_connections_per_ip = Some(off.into());
            assert_eq!(s.limits().unwrap().max_connections_per_ip, None);
        }
        s.max_waiters = Some("0".into());
        assert_eq!(s.limits().unwrap().max_waiters, 0);
        s.max_connections = None;
        assert_eq!(settings().limits().unwrap().max_waiters, 1_024);
        s.max_waiters = Some("2048".into());
        assert_eq!(s.limits().unwrap().max_waiters, 2_048);
        assert_eq!(
            config.hardening,
            hardening::Options {
                allow_core_dumps: true,
                mlock: false,
            }
        );
    }

    #[test]
    fn a_bind_address_is_any_ip_address() {
        let mut s = settings();
        for text in ["127.0.0.1", " ::1 ", "0.0.0.0", "::", "10.1.2.3"] {
            s.bind_address = Some(text.into());
            assert_eq!(
                s.bind_address().unwrap(),
                Some(text.trim().parse().unwrap())
            );
        }
    }

    /// A bare switch is on and never takes the next argument (the subcommand) as its value.
    #[test]
    fn a_bare_switch_is_on() {
        use clap::{Parser, Subcommand};
        /// The settings before a subcommand, flattened as the command line flattens them: a
        /// stand-in for `cli::Cli`, which sits above this layer (the binary tests run the real one).
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            settings: Settings,
            #[command(subcommand)]
            command: Option<Command>,
        }
        #[derive(Subcommand)]
        enum Command {
            Serve,
        }
        let args = ["keypooler", "--allow-core-dumps", "--mlock=false", "serve"];
        let cli = Cli::try_parse_from(args).unwrap();
        assert_eq!(
            cli.settings.hardening().unwrap(),
            hardening::Options {
                allow_core_dumps: true,
                mlock: false,
            }
        );
        assert!(cli.command.is_some());
    }

    #[test]
    fn debug_hides_the_secrets() {
        let mut s = settings();
        s.metrics_token = Some("scrape-secret".into());
        let text = format!("{s:?}");
        assert!(!text.contains(&"ab".repeat(32)));
        assert!(!text.contains("admin-token-0123456789"));
        assert!(!text.contains("scrape-secret"));
    }
}
