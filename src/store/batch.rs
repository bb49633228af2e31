//! One write transaction and what it can do to each table.

use redb::ReadableTable;

use super::records::{decode, decode_signed, encode, encode_signed};
use super::{
    CONSUMERS, ConsumerRecord, IDEMPOTENCY, IDEMPOTENCY_BY_TIME, IdempotencyRecord, KEYS,
    KeyRecord, META, RUNNING_MS_KEY, SPENDS, SPENDS_BY_TIME, SpendTag, Store, StoreError, TIERS,
    TierRecord, USAGE, UsageRecord,
};
use crate::crypto::{Signer, token_hash};

impl Store {
    /// Starts a write transaction. Only the writer thread (or an offline command) calls this.
    pub fn begin(&self) -> Result<Batch, StoreError> {
        Ok(Batch {
            txn: self.db().begin_write()?,
            signer: self.signer.clone(),
        })
    }
}

/// A key record encoded and signed as the keys table stores it.
pub struct SignedKey {
    id: String,
    stored: Vec<u8>,
}

impl SignedKey {
    fn new(signer: &Signer, record: &KeyRecord) -> Self {
        Self {
            id: record.id.clone(),
            stored: encode_signed(signer, "keys", &record.id, record),
        }
    }
}

impl Store {
    /// `record` encoded and signed for [`Batch::put_signed_keys`]: the costly part of writing a
    /// key, which any thread can do.
    pub fn sign_key(&self, record: &KeyRecord) -> SignedKey {
        SignedKey::new(&self.signer, record)
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

    /// Removes a tier; `false` when there was none with that id.
    pub fn delete_tier(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.txn.open_table(TIERS)?.remove(id)?.is_some())
    }

    pub fn put_key(&self, record: &KeyRecord) -> Result<(), StoreError> {
        self.put_signed_keys(&[SignedKey::new(&self.signer, record)])
    }

    /// Writes keys encoded and signed beforehand (on any thread: [`Store::sign_key`]).
    pub fn put_signed_keys(&self, keys: &[SignedKey]) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(KEYS)?;
        for key in keys {
            table.insert(key.id.as_str(), key.stored.as_slice())?;
        }
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

    /// The newest `limit` audit events stored before sequence number `before` (the newest of
    /// all when `None`), newest first, with their sequence numbers.
    pub fn recent_usage(
        &self,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<(u64, UsageRecord)>, StoreError> {
        let table = self.txn.open_table(USAGE)?;
        let mut events = Vec::with_capacity(limit);
        for entry in table.range(..before.unwrap_or(u64::MAX))?.rev().take(limit) {
            let (seq, bytes) = entry?;
            let seq = seq.value();
            events.push((
                seq,
                decode("usage_events", &seq.to_string(), bytes.value())?,
            ));
        }
        Ok(events)
    }

    /// The answer stored under an idempotency key, including what this batch stored.
    pub fn get_idempotent(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let table = self.txn.open_table(IDEMPOTENCY)?;
        let Some(bytes) = table.get(key)? else {
            return Ok(None);
        };
        decode("idempotency_keys", key, bytes.value()).map(Some)
    }

    /// Stores the answer under an idempotency key, replacing an expired one.
    pub fn put_idempotent(&self, key: &str, record: &IdempotencyRecord) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(IDEMPOTENCY)?;
        let mut by_time = self.txn.open_table(IDEMPOTENCY_BY_TIME)?;
        let old = table
            .insert(key, encode(record).as_slice())?
            .map(|bytes| decode::<IdempotencyRecord>("idempotency_keys", key, bytes.value()))
            .transpose()?;
        if let Some(old) = old {
            by_time.remove((old.created_at_ms, key))?;
        }
        by_time.insert((record.created_at_ms, key), ())?;
        Ok(())
    }

    /// Removes up to `limit` idempotency keys stored before `before_ms`, oldest first; returns
    /// how many it removed.
    pub fn prune_idempotent(&self, before_ms: i64, limit: usize) -> Result<usize, StoreError> {
        let mut table = self.txn.open_table(IDEMPOTENCY)?;
        let mut by_time = self.txn.open_table(IDEMPOTENCY_BY_TIME)?;
        let mut expired = Vec::new();
        for entry in by_time.range(..(before_ms, ""))?.take(limit) {
            let (stored, _) = entry?;
            let (at, key) = stored.value();
            expired.push((at, key.to_owned()));
        }
        for (at, key) in &expired {
            by_time.remove((*at, key.as_str()))?;
            table.remove(key.as_str())?;
        }
        Ok(expired.len())
    }

    /// When the spend with this request id was counted (unix ms), if it is still stored.
    pub fn spend_counted_at(&self, tag: &SpendTag) -> Result<Option<i64>, StoreError> {
        Ok(self.txn.open_table(SPENDS)?.get(tag)?.map(|at| at.value()))
    }

    /// Stores a counted spend's request id.
    pub fn put_spend(&self, tag: &SpendTag, at_ms: i64) -> Result<(), StoreError> {
        self.txn.open_table(SPENDS)?.insert(tag, at_ms)?;
        self.txn
            .open_table(SPENDS_BY_TIME)?
            .insert((at_ms, *tag), ())?;
        Ok(())
    }

    /// Removes up to `limit` spend request ids counted before `before_ms`, oldest first; returns
    /// how many it removed.
    pub fn prune_spends(&self, before_ms: i64, limit: usize) -> Result<usize, StoreError> {
        let mut table = self.txn.open_table(SPENDS)?;
        let mut by_time = self.txn.open_table(SPENDS_BY_TIME)?;
        let mut expired = Vec::new();
        for entry in by_time.range(..(before_ms, [0; 16]))?.take(limit) {
            expired.push(entry?.0.value());
        }
        for (at, tag) in &expired {
            by_time.remove((*at, *tag))?;
            table.remove(tag)?;
        }
        Ok(expired.len())
    }

    /// Removes every tier, key, consumer, audit event, stored idempotent answer and spend
    /// request id (the meta table, with the canary, stays).
    pub fn clear(&self) -> Result<(), StoreError> {
        self.txn.open_table(TIERS)?.retain(|_, _| false)?;
        self.txn.open_table(KEYS)?.retain(|_, _| false)?;
        self.txn.open_table(CONSUMERS)?.retain(|_, _| false)?;
        self.txn.open_table(USAGE)?.retain(|_, _| false)?;
        self.txn.open_table(IDEMPOTENCY)?.retain(|_, _| false)?;
        self.txn
            .open_table(IDEMPOTENCY_BY_TIME)?
            .retain(|_, _| false)?;
        self.txn.open_table(SPENDS)?.retain(|_, _| false)?;
        self.txn.open_table(SPENDS_BY_TIME)?.retain(|_, _| false)?;
        Ok(())
    }

    /// Saves the broker's running time (ms), from which the next run goes on.
    pub fn save_running_ms(&self, running_ms: u64) -> Result<(), StoreError> {
        self.txn
            .open_table(META)?
            .insert(RUNNING_MS_KEY, running_ms.to_le_bytes().as_slice())?;
        Ok(())
    }

    /// Commits durably: once this returns, the batch survives a crash.
    pub fn commit(self) -> Result<(), StoreError> {
        self.txn.commit()?;
        Ok(())
    }
}

/// The stored tag of a spend's request id (see [`SpendTag`]).
pub fn spend_tag(request_id: &str) -> SpendTag {
    let digest = token_hash(request_id.as_bytes());
    let mut tag = [0; 16];
    tag.copy_from_slice(&digest[..16]);
    tag
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::crypto::{EncryptionKey, Sealer};
    use crate::store::Hex;

    fn record(at: i64) -> IdempotencyRecord {
        IdempotencyRecord {
            fingerprint: Hex(vec![7; 32]),
            created_at_ms: at,
            status: 201,
            body: format!("{{\"at\":{at}}}"),
        }
    }

    #[test]
    fn idempotency_keys_are_pruned_oldest_first_and_survive_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::new(&EncryptionKey::generate());
        let store = Store::open(&dir.path().join("pool.redb"), &sealer).unwrap();
        let txn = store.begin().unwrap();
        for (key, at) in [("a", 1_000), ("b", 2_000), ("c", 3_000), ("d", 4_000)] {
            txn.put_idempotent(key, &record(at)).unwrap();
        }
        // Stored again later (an expired key used anew): its old time no longer prunes it.
        txn.put_idempotent("a", &record(5_000)).unwrap();
        txn.commit().unwrap();

        let txn = store.begin().unwrap();
        assert_eq!(
            txn.prune_idempotent(3_500, 1).unwrap(),
            1,
            "at most `limit`"
        );
        assert_eq!(txn.get_idempotent("b").unwrap(), None);
        assert_eq!(txn.prune_idempotent(3_500, 10).unwrap(), 1);
        assert_eq!(txn.get_idempotent("c").unwrap(), None);
        assert_eq!(txn.prune_idempotent(3_500, 10).unwrap(), 0);
        txn.commit().unwrap();

        let txn = store.begin().unwrap();
        assert_eq!(txn.get_idempotent("a").unwrap(), Some(record(5_000)));
        assert_eq!(txn.get_idempotent("d").unwrap(), Some(record(4_000)));
        txn.clear().unwrap();
        assert_eq!(txn.get_idempotent("a").unwrap(), None);
        assert_eq!(txn.prune_idempotent(i64::MAX, 10).unwrap(), 0);
    }

    #[test]
    fn spend_request_ids_are_pruned_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::new(&EncryptionKey::generate());
        let store = Store::open(&dir.path().join("pool.redb"), &sealer).unwrap();
        let txn = store.begin().unwrap();
        for (id, at) in [("a", 1_000), ("b", 2_000), ("c", 3_000)] {
            txn.put_spend(&spend_tag(id), at).unwrap();
        }
        txn.commit().unwrap();
        let txn = store.begin().unwrap();
        assert_eq!(txn.spend_counted_at(&spend_tag("a")).unwrap(), Some(1_000));
        assert_eq!(txn.prune_spends(2_500, 1).unwrap(), 1, "at most `limit`");
        assert_eq!(txn.spend_counted_at(&spend_tag("a")).unwrap(), None);
        assert_eq!(txn.prune_spends(2_500, 10).unwrap(), 1);
        assert_eq!(txn.spend_counted_at(&spend_tag("b")).unwrap(), None);
        assert_eq!(txn.spend_counted_at(&spend_tag("c")).unwrap(), Some(3_000));
        txn.clear().unwrap();
        assert_eq!(txn.spend_counted_at(&spend_tag("c")).unwrap(), None);
    }
}
