//! The names the writer's metrics are exported under.

/// Changes handled, by `kind` and `outcome` (see the writer's meters for the label values).
pub const COMMANDS: &str = "keypooler_writer_commands_total";
/// Seconds each durable commit of a batch took.
pub const COMMIT_DURATION: &str = "keypooler_writer_commit_duration_seconds";
