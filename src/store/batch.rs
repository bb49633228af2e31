//! One write transaction and what it can do to each table.

use redb::ReadableTable;

use super::records::{decode, decode_signed, encode, encode_signed};
use super::{
    CONSUMERS, ConsumerRecord, KEYS, KeyRecord, Store, StoreError, TIERS, TierRecord, USAGE,
    UsageRecord,
};
use crate::crypto::Signer;

impl Store {
    /// Starts a write transaction. Only the writer thread (or an offline command) calls this.
    pub fn begin(&self) -> Result<Batch, StoreError> {
        Ok(Batch {
            txn: self.db().begin_write()?,
            signer: self.signer.clone(),
        })
    }
}

/// One write transaction: everything in it lands on disk together, or nothing does. Tiers, keys
/// and consumers are signed as they are written.
pub struct Batch {
    txn: redb::WriteTransaction,
    signer: Signer,
}

impl Batch {
    pub fn put_tier(&self, record: &TierRecord) -> Result<(), StoreError> {
        let id = record.id.as_str();
        let stored = encode_signed(&self.signer, "tiers", id, record);
        self.txn.open_table(TIERS)?.insert(id, stored.as_slice())?;
        Ok(())
    }

    pub fn put_key(&self, record: &KeyRecord) -> Result<(), StoreError> {
        let id = record.id.as_str();
        let stored = encode_signed(&self.signer, "keys", id, record);
        self.txn.open_table(KEYS)?.insert(id, stored.as_slice())?;
        Ok(())
    }

    /// A stored key; refused (an error naming it) if its signature does not match.
    pub fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let table = self.txn.open_table(KEYS)?;
        let Some(bytes) = table.get(id)? else {
            return Ok(None);
        };
        decode_signed(&self.signer, "keys", id, bytes.value()).map(Some)
    }

    /// Removes a key; `false` when there was none with that id.
    pub fn delete_key(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.txn.open_table(KEYS)?.remove(id)?.is_some())
    }

    pub fn put_consumer(&self, record: &ConsumerRecord) -> Result<(), StoreError> {
        let id = record.id.as_str();
        let stored = encode_signed(&self.signer, "consumers", id, record);
        self.txn
            .open_table(CONSUMERS)?
            .insert(id, stored.as_slice())?;
        Ok(())
    }

    /// Removes a consumer; `false` when there was none with that id.
    pub fn delete_consumer(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.txn.open_table(CONSUMERS)?.remove(id)?.is_some())
    }

    /// Appends audit events and keeps only the newest `keep`.
    pub fn append_usage(&self, events: &[UsageRecord], keep: u64) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(USAGE)?;
        let mut next = table.last()?.map_or(0, |(seq, _)| seq.value() + 1);
        for event in events {
            table.insert(next, encode(event).as_slice())?;
            next += 1;
        }
        if next > keep {
            table.retain_in(..next - keep, |_, _| false)?;
        }
        Ok(())
    }

    /// The newest `limit` audit events, newest first.
    pub fn recent_usage(&self, limit: usize) -> Result<Vec<UsageRecord>, StoreError> {
        let table = self.txn.open_table(USAGE)?;
        let mut events = Vec::with_capacity(limit);
        for entry in table.iter()?.rev().take(limit) {
            let (seq, bytes) = entry?;
            events.push(decode(
                "usage_events",
                &seq.value().to_string(),
                bytes.value(),
            )?);
        }
        Ok(events)
    }

    /// Removes every tier, key, consumer and audit event (the meta table, with the canary, stays).
    pub fn clear(&self) -> Result<(), StoreError> {
        self.txn.open_table(TIERS)?.retain(|_, _| false)?;
        self.txn.open_table(KEYS)?.retain(|_, _| false)?;
        self.txn.open_table(CONSUMERS)?.retain(|_, _| false)?;
        self.txn.open_table(USAGE)?.retain(|_, _| false)?;
        Ok(())
    }

    /// Commits durably: once this returns, the batch survives a crash.
    pub fn commit(self) -> Result<(), StoreError> {
        self.txn.commit()?;
        Ok(())
    }
}
