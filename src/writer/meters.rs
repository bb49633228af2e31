//! The writer's metric handles, registered once when it starts, so every series exists (at 0)
//! before its first change.

use metrics::{Counter, Histogram};

use super::WriteError;
use crate::broker::{Spend, Unit};
use crate::telemetry::{Meter, SPENT, WRITER_COMMANDS, WRITER_COMMIT_DURATION};

/// Declares [`Kind`] from one list: its variants, every value in declaration order, and each
/// one's label.
macro_rules! kinds {
    ($($kind:ident => $label:literal,)*) => {
        /// What a request asks the writer: the `kind` label of [`WRITER_COMMANDS`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(super) enum Kind {
            $($kind,)*
        }

        impl Kind {
            /// Every kind, in declaration order: `kind as usize` is its position.
            const ALL: [Kind; [$($label),*].len()] = [$(Kind::$kind),*];

            pub(super) fn label(self) -> &'static str {
                match self {
                    $(Kind::$kind => $label,)*
                }
            }
        }
    };
}

kinds! {
    CreateTier => "create_tier",
    UpdateTier => "update_tier",
    AddKey => "add_key",
    DeleteKey => "delete_key",
    ReportHealth => "report_health",
    Exhaust => "exhaust_key",
    PatchKey => "patch_key",
    Spend => "spend",
    DeleteTier => "delete_tier",
    CreateConsumer => "create_consumer",
    AddScope => "add_scope",
    RemoveScope => "remove_scope",
    RotateToken => "rotate_token",
    DeleteConsumer => "delete_consumer",
    ReserveUsage => "reserve_usage",
    FlushAudit => "flush_audit",
    RecentUsage => "recent_usage",
    ExpireKeys => "expire_keys",
    SaveRunningTime => "save_running_time",
    Snapshot => "snapshot",
}

/// One kind's counters, by the `outcome` label of [`WRITER_COMMANDS`].
struct ByOutcome {
    /// Committed.
    applied: Counter,
    /// Refused as invalid or conflicting (a 4xx).
    refused: Counter,
    /// Not saved because storage failed or the writer stopped (a 5xx).
    failed: Counter,
}

impl ByOutcome {
    fn new(meter: &Meter, kind: Kind) -> Self {
        let counter = |outcome| {
            meter.counter(
                WRITER_COMMANDS,
                &[("kind", kind.label()), ("outcome", outcome)],
            )
        };
        Self {
            applied: counter("applied"),
            refused: counter("refused"),
            failed: counter("failed"),
        }
    }
}

pub(super) struct CommandSeries {
    /// By [`Kind`].
    commands: [ByOutcome; Kind::ALL.len()],
    /// Billionths counted by spends, by [`Unit`] (in `Unit::ALL` order).
    spent: [Counter; Unit::ALL.len()],
    pub(super) commit: Histogram,
}

impl CommandSeries {
    pub(super) fn new(meter: &Meter) -> Self {
        Self {
            commands: Kind::ALL.map(|kind| ByOutcome::new(meter, kind)),
            spent: Unit::ALL.map(|unit| meter.counter(SPENT, &[("unit", unit.as_str())])),
            commit: meter.histogram(WRITER_COMMIT_DURATION, &[]),
        }
    }

    /// Counts a committed spend (not a replay) by its unit.
    pub(super) fn spent(&self, (_, spend): &(String, Spend)) {
        let unit = Unit::ALL.iter().position(|unit| *unit == spend.unit());
        if let Some(counter) = unit.and_then(|at| self.spent.get(at)) {
            counter.increment(spend.amount_nanos());
        }
    }

    pub(super) fn count<T>(&self, kind: Kind, result: &Result<T, WriteError>) {
        let outcomes = &self.commands[kind as usize];
        let counter = match result {
            Ok(_) => &outcomes.applied,
            Err(WriteError::Storage(_) | WriteError::Unsaved(_) | WriteError::Stopped) => {
                &outcomes.failed
            }
            Err(_) => &outcomes.refused,
        };
        counter.increment(1);
    }
}
