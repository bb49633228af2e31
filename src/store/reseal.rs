//! Key rotation: every key value, bound secret and the canary re-sealed, and every tier, key
//! and consumer record re-signed, under a new key in one redb write transaction. A crash before
//! the commit leaves the file entirely under the old key; after it, entirely under the new one.
//! Never a mix.
//!
//! A record whose signature does not match under the old key is left byte for byte as it was
//! (never signed under the new key: that would vouch for it) and reported by id; it stays left
//! out at start-up, as it was.

use std::path::Path;

use redb::ReadableTable;

use super::open::{CANARY_AAD, CANARY_KEY, canary_text};
use super::records::{UNSIGNED, decode, encode, sign, verified};
use super::{
    CONSUMERS, Hex, KEYS, KeyRecord, META, SCHEMA_VERSION, Skipped, Store, StoreError, TIERS,
    secret_aad, value_aad,
};
use crate::crypto::Sealer;

/// What a [`reseal_file`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Resealed {
    /// Re-sealed and re-signed, and committed.
    Done {
        keys: usize,
        secrets: usize,
        /// Tiers, keys and consumers re-signed.
        records: usize,
        /// Records whose signature did not match under the old key, left as they were.
        left_out: Vec<Skipped>,
    },
    /// The file already opens under the new key only (a rekey that committed before): nothing
    /// to do, so running rekey again after a crash is safe.
    AlreadyDone,
}

/// Re-seals the database at `path` from `old` to `new`. Refuses (changing nothing) a missing
/// file, a file in use by a server, a wrong old key, or a key that does not open under `old`.
pub fn reseal_file(path: &Path, old: &Sealer, new: &Sealer) -> Result<Resealed, StoreError> {
    let store = match Store::open_existing(path, old) {
        Err(StoreError::WrongKey(_)) if Store::open(path, new).is_ok() => {
            return Ok(Resealed::AlreadyDone);
        }
        opened => opened?,
    };
    store.reseal(old, new)
}

impl Store {
    fn reseal(&self, old: &Sealer, new: &Sealer) -> Result<Resealed, StoreError> {
        let txn = self.db().begin_write()?;
        let (mut keys, mut secrets, mut records) = (0, 0, 0);
        let mut left_out = Vec::new();
        for (definition, table) in [(TIERS, "tiers"), (KEYS, "keys"), (CONSUMERS, "consumers")] {
            let mut stored = txn.open_table(definition)?;
            let mut signed = Vec::new();
            for entry in stored.iter()? {
                let (id, bytes) = entry?;
                let id = id.value().to_owned();
                match verified(old.signer(), table, &id, bytes.value()) {
                    Some(json) => signed.push((id, json.to_vec())),
                    None => left_out.push(Skipped {
                        table,
                        id,
                        reason: UNSIGNED.into(),
                    }),
                }
            }
            for (id, mut json) in signed {
                if table == "keys" {
                    let mut record = decode::<KeyRecord>(table, &id, &json)?;
                    record.value = reseal(&id, &record.value, &value_aad(&id), old, new)?;
                    for (name, sealed) in &mut record.secrets {
                        *sealed = reseal(&id, sealed, &secret_aad(&id, name), old, new)?;
                        secrets += 1;
                    }
                    json = encode(&record);
                    keys += 1;
                }
                let resigned = sign(new.signer(), table, &id, json);
                stored.insert(id.as_str(), resigned.as_slice())?;
                records += 1;
            }
        }
        txn.open_table(META)?.insert(
            CANARY_KEY,
            new.seal(&canary_text(SCHEMA_VERSION), CANARY_AAD)
                .as_slice(),
        )?;
        txn.commit()?;
        Ok(Resealed::Done {
            keys,
            secrets,
            records,
            left_out,
        })
    }
}

/// Opens one sealed field under `old` and seals it under `new`, for the same record and field.
fn reseal(
    id: &str,
    sealed: &Hex,
    aad: &[u8],
    old: &Sealer,
    new: &Sealer,
) -> Result<Hex, StoreError> {
    let plain = old
        .open(&sealed.0, aad)
        .map_err(|err| StoreError::BadRecord {
            table: "keys",
            id: id.to_owned(),
            reason: format!(
                "{err}; delete the key or restore it, then rekey (nothing was changed)"
            ),
        })?;
    Ok(Hex(new.seal(&plain, aad)))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::crypto::EncryptionKey;
    use crate::store::{ConsumerRecord, TierRecord};

    fn sealer(byte: u8) -> Sealer {
        Sealer::new(&EncryptionKey::parse_hex(&format!("{byte:02x}").repeat(32)).unwrap())
    }

    fn key(id: &str, sealer: &Sealer) -> KeyRecord {
        KeyRecord {
            id: id.into(),
            name: id.into(),
            tier_id: "t".into(),
            active: true,
            created_at_ms: 1,
            usage_limit: Some(9),
            usage_count: 3,
            value: Hex(sealer.seal(b"sk-1", &value_aad(id))),
            secrets: BTreeMap::from([(
                "org".to_string(),
                Hex(sealer.seal(b"org-1", &secret_aad(id, "org"))),
            )]),
            ..KeyRecord::default()
        }
    }

    /// A database at `path`, sealed under `sealer`, holding `keys`.
    fn write_keys(path: &Path, sealer: &Sealer, keys: &[KeyRecord]) {
        let store = Store::open(path, sealer).unwrap();
        let batch = store.begin().unwrap();
        for record in keys {
            batch.put_key(record).unwrap();
        }
        batch.commit().unwrap();
    }

    fn consumer(id: &str) -> ConsumerRecord {
        ConsumerRecord {
            id: id.into(),
            name: id.into(),
            description: String::new(),
            token_hash: Hex(vec![7; 32]),
            active: true,
            created_at_ms: 1,
            scopes: vec!["t".into()],
        }
    }

    #[test]
    fn everything_is_resealed_and_resigned_and_the_rest_of_each_record_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.redb");
        let (old, new) = (sealer(1), sealer(2));
        write_keys(&path, &old, &[key("a", &old)]);
        {
            let store = Store::open(&path, &old).unwrap();
            let batch = store.begin().unwrap();
            batch
                .put_tier(&TierRecord {
                    id: "t".into(),
                    name: "pro".into(),
                    description: String::new(),
                    created_at_ms: 1,
                    features: BTreeMap::new(),
                })
                .unwrap();
            batch.put_consumer(&consumer("c")).unwrap();
            batch.commit().unwrap();
            // Written into the file without the key: no signature.
            let txn = store.db().begin_write().unwrap();
            txn.open_table(CONSUMERS)
                .unwrap()
                .insert("forged", encode(&consumer("forged")).as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let forged = Skipped {
            table: "consumers",
            id: "forged".into(),
            reason: UNSIGNED.into(),
        };
        assert_eq!(
            reseal_file(&path, &old, &new).unwrap(),
            Resealed::Done {
                keys: 1,
                secrets: 1,
                records: 3,
                left_out: vec![forged],
            }
        );
        assert!(matches!(
            Store::open(&path, &old).unwrap_err(),
            StoreError::WrongKey(_)
        ));
        let mut contents = Store::open(&path, &new).unwrap().load().unwrap();
        assert_eq!(contents.tiers[0].name, "pro");
        assert_eq!(contents.consumers, vec![consumer("c")]);
        let left_out: Vec<_> = contents.left_out.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(left_out, ["forged"], "never signed under the new key");
        let record = contents.keys.remove(0);
        assert_eq!(
            &*new.open(&record.value.0, &value_aad("a")).unwrap(),
            b"sk-1"
        );
        let org = &record.secrets["org"].0;
        assert_eq!(&*new.open(org, &secret_aad("a", "org")).unwrap(), b"org-1");
        assert_eq!((record.usage_limit, record.usage_count), (Some(9), 3));
        assert_eq!(
            reseal_file(&path, &old, &new).unwrap(),
            Resealed::AlreadyDone
        );
    }

    #[test]
    fn a_value_that_does_not_open_stops_the_rekey_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.redb");
        let (old, new) = (sealer(1), sealer(2));
        // Sealed for another record: does not open as "b".
        let mut moved = key("b", &old);
        moved.value = key("a", &old).value;
        write_keys(&path, &old, &[key("a", &old), moved]);
        let err = reseal_file(&path, &old, &new).unwrap_err();
        assert!(
            err.to_string().contains("record keys/b is unreadable"),
            "{err}"
        );
        assert!(err.to_string().contains("nothing was changed"), "{err}");
        let contents = Store::open(&path, &old).unwrap().load().unwrap();
        assert_eq!(
            &*old
                .open(&contents.keys[0].value.0, &value_aad("a"))
                .unwrap(),
            b"sk-1"
        );
    }
}
