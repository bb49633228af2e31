//! `usage_events`: the audit trail, as much of it as ours keeps.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::super::CompatError;
use super::Reader;
use super::cells::Select;
use crate::store::{AUDIT_RETENTION, UsageRecord};

impl Reader<'_> {
    /// The newest [`AUDIT_RETENTION`] events (by `created_at`, then by the order read), oldest
    /// first, and how many older ones are left out. Events outlive their key and consumer, so
    /// their ids are not checked against the keys and consumers read.
    pub(super) fn read_usage(&self) -> Result<(Vec<UsageRecord>, u64), CompatError> {
        let Some(columns) = self.columns("usage_events")? else {
            return Ok((Vec::new(), 0));
        };
        let select = Select::from("usage_events", &["id"])
            .column("key_id")
            .optional("consumer_id", &columns)
            .column("feature")
            .column("created_at");
        let keep = usize::try_from(AUDIT_RETENTION).unwrap_or(usize::MAX);
        // The oldest kept event on top, so that a newer one pushes it out.
        let mut newest: BinaryHeap<Reverse<(i64, u64, Event)>> = BinaryHeap::new();
        let mut read = 0u64;
        self.each_row(&select, |cells| {
            let event = UsageRecord {
                key_id: cells.id("key_id")?,
                consumer_id: match cells.opt_text("consumer_id")? {
                    None => None,
                    Some(_) => Some(cells.id("consumer_id")?),
                },
                feature: cells.name("feature")?,
                created_at_ms: cells
                    .opt_time("created_at")?
                    .ok_or_else(|| cells.fail("created_at is missing"))?,
                // The Go service's trail holds served keys only.
                event: None,
            };
            newest.push(Reverse((event.created_at_ms, read, Event(event))));
            read += 1;
            if newest.len() > keep {
                newest.pop();
            }
            Ok(())
        })?;
        let kept = newest.into_sorted_vec();
        let dropped = read - kept.len() as u64;
        // `into_sorted_vec` of `Reverse` is newest first.
        let events = kept
            .into_iter()
            .rev()
            .map(|Reverse((_, _, Event(event)))| event)
            .collect();
        Ok((events, dropped))
    }
}

/// An event in the heap, ordered only by the keys beside it.
struct Event(UsageRecord);

impl PartialEq for Event {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Event {}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Event {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}
