//! Usage: reservations of capped keys, and the audit trail.

use std::sync::Arc;

use super::Staging;
use crate::broker::to_cap_seconds;
use crate::broker::{Catalog, Clock, UsageCap};
use crate::store::{AUDIT_RETENTION, Batch, KeyRecord, Store, UsageRecord};
use crate::writer::WriteError;

/// A reservation written into the batch, to publish once it is committed.
pub(in crate::writer) struct Reservation {
    cap: Arc<UsageCap>,
    /// The clock second its window ends.
    end: u32,
    reserved: u32,
}

impl Reservation {
    pub(in crate::writer) fn publish(&self) {
        self.cap.apply_reservation(self.end, self.reserved);
    }
}

/// Reserves the next chunk of a capped key; `None` when it has no cap or needs no chunk.
pub(super) fn reserve(s: &mut Staging<'_>, id: &str) -> Result<Option<Reservation>, WriteError> {
    let Some(cap) = s.catalog.key(id).and_then(|key| key.usage.clone()) else {
        return Ok(None);
    };
    match write_reservation(&s.txn, id, &cap, s.clock)? {
        Some((end, reserved)) => Ok(Some(Reservation { cap, end, reserved })),
        None => {
            cap.clear_pending();
            Ok(None)
        }
    }
}

/// Writes the queued audit events.
pub(super) fn flush_audit(s: &mut Staging<'_>) -> Result<(), WriteError> {
    let Some(audit) = s.audit else {
        return Ok(());
    };
    let (events, dropped) = audit.drain();
    if dropped > 0 {
        tracing::warn!(dropped, "audit queue was full; events were dropped");
    }
    let records: Vec<UsageRecord> = events
        .into_iter()
        .map(|event| UsageRecord {
            key_id: event.key_id.to_string(),
            consumer_id: event.consumer_id.map(|id| id.to_string()),
            feature: event.feature.to_string(),
            created_at_ms: event.at_unix_ms,
            event: None,
        })
        .collect();
    s.txn.append_usage(&records, AUDIT_RETENTION)?;
    Ok(())
}

/// Writes the queued audit events, then reads the newest `limit` before event id `before` (or
/// the newest), newest first, with their ids.
pub(super) fn recent_usage(
    s: &mut Staging<'_>,
    limit: usize,
    before: Option<u64>,
) -> Result<Vec<(u64, UsageRecord)>, WriteError> {
    flush_audit(s)?;
    Ok(s.txn.recent_usage(limit, before)?)
}

/// Stores the usage window ending at running second `end_s` in `record`: its end in running
/// time (what a restart judges it on), and its start on the wall clock (what the listings and the
/// Go service's format show).
pub(super) fn store_window(record: &mut KeyRecord, clock: &Clock, end_s: u32, window_s: u32) {
    let start_s = u64::from(end_s.saturating_sub(window_s));
    record.usage_window_start_ms = Some(clock.to_unix_ms(start_s * 1_000));
    record.usage_window_end_running_ms = Some(u64::from(end_s) * 1_000);
}

/// Writes the next reservation of a capped key into `txn`; the caller publishes it with
/// [`UsageCap::apply_reservation`] once the transaction is committed.
pub(super) fn write_reservation(
    txn: &Batch,
    id: &str,
    cap: &UsageCap,
    clock: &Clock,
) -> Result<Option<(u32, u32)>, WriteError> {
    let Some((end, reserved)) = cap.next_reservation(to_cap_seconds(clock.now_ms())) else {
        return Ok(None);
    };
    let mut record = txn
        .get_key(id)?
        .ok_or_else(|| WriteError::KeyNotFound(id.to_owned()))?;
    record.usage_count = reserved.into();
    if let Some(window) = cap.window_s {
        store_window(&mut record, clock, end, window);
    }
    txn.put_key(&record)?;
    tracing::debug!(key_id = %id, reserved, "usage reserved");
    Ok(Some((end, reserved)))
}

/// Reserves a chunk for every capped key of `catalog` in one commit, so that after a start
/// they are servable at once instead of waiting for their first reservation.
pub fn reserve_all(store: &Store, catalog: &Catalog, clock: &Clock) -> Result<(), WriteError> {
    let capped: Vec<_> = catalog
        .keys()
        .filter_map(|key| Some((Arc::clone(&key.info.id), Arc::clone(key.usage.as_ref()?))))
        .collect();
    if capped.is_empty() {
        return Ok(());
    }
    let txn = store.begin()?;
    let mut reserved = Vec::new();
    for (id, cap) in capped {
        if let Some((end, count)) = write_reservation(&txn, &id, &cap, clock)? {
            reserved.push(Reservation {
                cap,
                end,
                reserved: count,
            });
        }
    }
    txn.save_running_ms(clock.now_ms())?;
    txn.commit()?;
    for reservation in &reserved {
        reservation.publish();
    }
    Ok(())
}
