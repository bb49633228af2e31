//! Schema 1 to schema 2, once, at the first open of a schema 1 file for writing, in one redb
//! write transaction:
//!
//! * every tier, key and consumer record is signed (schema 1 records carry no signature: they
//!   are trusted this once, as schema 1 trusted them at every start);
//! * every key value and bound secret is re-sealed from schema 1's joined associated data
//!   (`keypooler:keys/<id>/value`, which a secret's could equal) to [`value_aad`] and
//!   [`secret_aad`];
//! * the schema version and the canary (whose text names the version) become schema 2's.
//!
//! A crash before the commit leaves the file at schema 1, upgraded at the next open; after it,
//! entirely at schema 2. A key whose value or secret does not open under schema 1's associated
//! data is signed with its sealed fields as they were: it stays left out at start-up, by id, as
//! it was before. A record that does not decode is signed as its bytes were, and reported as it
//! would have been.

use redb::ReadableTable;

use super::open::{CANARY_AAD, CANARY_KEY, SCHEMA_KEY, canary_text};
use super::records::{decode, encode, legacy_secret_aad, legacy_value_aad, sign};
use super::{
    CONSUMERS, Hex, KEYS, KeyRecord, META, SCHEMA_VERSION, Store, StoreError, TIERS, secret_aad,
    value_aad,
};
use crate::crypto::{CryptoError, Sealer};

/// What an upgrade did, for its log line.
#[derive(Default)]
struct Upgraded {
    /// Records signed.
    records: usize,
    /// Key values and bound secrets re-sealed.
    values: usize,
    /// Keys whose sealed fields did not open under schema 1's associated data, left as they were.
    unopened: usize,
}

impl Store {
    /// Brings a schema 1 file to schema 2 (see the module's doc).
    pub(super) fn upgrade(&self, sealer: &Sealer) -> Result<(), StoreError> {
        let txn = self.db().begin_write()?;
        let mut done = Upgraded::default();
        for (definition, table) in [(TIERS, "tiers"), (CONSUMERS, "consumers")] {
            let mut records = txn.open_table(definition)?;
            for (id, json) in entries(&records)? {
                records.insert(id.as_str(), sign(&self.signer, table, &id, json).as_slice())?;
                done.records += 1;
            }
        }
        let mut keys = txn.open_table(KEYS)?;
        for (id, json) in entries(&keys)? {
            let json = match decode::<KeyRecord>("keys", &id, &json) {
                Ok(mut record) => match reseal_aad(&mut record, sealer) {
                    Ok(values) => {
                        done.values += values;
                        encode(&record)
                    }
                    Err(_) => {
                        done.unopened += 1;
                        json
                    }
                },
                Err(_) => json,
            };
            keys.insert(
                id.as_str(),
                sign(&self.signer, "keys", &id, json).as_slice(),
            )?;
            done.records += 1;
        }
        drop(keys);
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION.to_le_bytes().as_slice())?;
            let canary = sealer.seal(&canary_text(SCHEMA_VERSION), CANARY_AAD);
            meta.insert(CANARY_KEY, canary.as_slice())?;
        }
        txn.commit()?;
        tracing::info!(
            path = %self.path.display(),
            records_signed = done.records,
            values_resealed = done.values,
            keys_not_opened = done.unopened,
            "database upgraded to schema {SCHEMA_VERSION}: records signed, values re-sealed"
        );
        Ok(())
    }
}

/// Every entry of a table, copied out (the table is rewritten while they are reworked).
fn entries(table: &redb::Table<'_, &str, &[u8]>) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut entries = Vec::new();
    for entry in table.iter()? {
        let (id, bytes) = entry?;
        entries.push((id.value().to_owned(), bytes.value().to_vec()));
    }
    Ok(entries)
}

/// Re-seals a key's value and secrets from schema 1's associated data to schema 2's; changes
/// nothing unless every one of them opens. Answers how many were re-sealed.
fn reseal_aad(record: &mut KeyRecord, sealer: &Sealer) -> Result<usize, CryptoError> {
    let id = record.id.clone();
    let value = move_aad(
        &record.value,
        &legacy_value_aad(&id),
        &value_aad(&id),
        sealer,
    )?;
    let secrets = record
        .secrets
        .iter()
        .map(|(name, sealed)| {
            let (old, new) = (legacy_secret_aad(&id, name), secret_aad(&id, name));
            Ok((name.clone(), move_aad(sealed, &old, &new, sealer)?))
        })
        .collect::<Result<Vec<_>, CryptoError>>()?;
    record.value = value;
    let count = 1 + secrets.len();
    record.secrets = secrets.into_iter().collect();
    Ok(count)
}

fn move_aad(sealed: &Hex, old: &[u8], new: &[u8], sealer: &Sealer) -> Result<Hex, CryptoError> {
    let plain = sealer.open(&sealed.0, old)?;
    Ok(Hex(sealer.seal(&plain, new)))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use redb::{Database, ReadableDatabase};

    use super::*;
    use crate::broker::Clock;
    use crate::crypto::EncryptionKey;
    use crate::store::{ConsumerRecord, LimitRecord, TierRecord, USAGE, load_catalog, open_key};

    fn sealer(byte: u8) -> Sealer {
        Sealer::new(&EncryptionKey::parse_hex(&format!("{byte:02x}").repeat(32)).unwrap())
    }

    fn key(id: &str, value: &[u8], secrets: &[(&str, &[u8])], sealer: &Sealer) -> KeyRecord {
        KeyRecord {
            id: id.into(),
            name: id.into(),
            tier_id: "t".into(),
            active: true,
            created_at_ms: 1,
            value: Hex(sealer.seal(value, &legacy_value_aad(id))),
            secrets: secrets
                .iter()
                .map(|(name, plain)| {
                    let sealed = sealer.seal(plain, &legacy_secret_aad(id, name));
                    ((*name).to_owned(), Hex(sealed))
                })
                .collect(),
            ..KeyRecord::default()
        }
    }

    fn tier() -> TierRecord {
        TierRecord {
            id: "t".into(),
            name: "pro".into(),
            description: String::new(),
            created_at_ms: 1,
            features: BTreeMap::from([(
                "chat".to_owned(),
                LimitRecord {
                    rate_limit: 5,
                    window_seconds: 60,
                },
            )]),
        }
    }

    /// A file as schema 1 wrote it: no signatures, joined associated data, canary v1.
    fn write_schema_1(path: &Path, sealer: &Sealer, keys: &[KeyRecord]) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(SCHEMA_KEY, 1u32.to_le_bytes().as_slice())
                .unwrap();
            let canary = sealer.seal(b"keypooler canary v1", CANARY_AAD);
            meta.insert(CANARY_KEY, canary.as_slice()).unwrap();
            txn.open_table(TIERS)
                .unwrap()
                .insert("t", encode(&tier()).as_slice())
                .unwrap();
            let mut table = txn.open_table(KEYS).unwrap();
            for record in keys {
                table
                    .insert(record.id.as_str(), encode(record).as_slice())
                    .unwrap();
            }
            let consumer = ConsumerRecord {
                id: "c".into(),
                name: "billing".into(),
                description: String::new(),
                token_hash: Hex(vec![1; 32]),
                active: true,
                created_at_ms: 1,
                scopes: vec!["t".into()],
            };
            txn.open_table(CONSUMERS)
                .unwrap()
                .insert("c", encode(&consumer).as_slice())
                .unwrap();
            txn.open_table(USAGE).unwrap();
        }
        txn.commit().unwrap();
    }

    fn schema_version(path: &Path) -> u32 {
        let db = redb::ReadOnlyDatabase::open(path).unwrap();
        let read = db.begin_read().unwrap();
        let meta = read.open_table(META).unwrap();
        let version = meta.get(SCHEMA_KEY).unwrap().unwrap();
        u32::from_le_bytes(version.value().try_into().unwrap())
    }

    #[test]
    fn a_schema_1_file_opens_with_every_record_and_is_upgraded_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.redb");
        let sealer = sealer(3);
        // Sealed for another record already: stays left out, as before.
        let mut moved = key("moved", b"sk-m", &[], &sealer);
        moved.value = key("X", b"sk-x", &[], &sealer).value;
        // The two ids whose associated data were equal in schema 1.
        let keys = [
            key("X", b"sk-x", &[("n/value", b"org-x")], &sealer),
            key("X/secrets/n", b"sk-n", &[], &sealer),
            moved,
        ];
        write_schema_1(&path, &sealer, &keys);

        let store = Store::open(&path, &sealer).unwrap();
        let (catalog, skipped) = load_catalog(&store, &sealer, &Clock::manual().0).unwrap();
        assert_eq!((catalog.tier_count(), catalog.key_count()), (1, 2));
        assert!(catalog.consumer("c").is_some());
        let skipped: Vec<_> = skipped.iter().map(|s| (s.table, s.id.as_str())).collect();
        assert_eq!(skipped, [("keys", "moved")]);
        let contents = store.load().unwrap();
        assert!(contents.left_out.is_empty(), "{:?}", contents.left_out);
        for record in &contents.keys[..2] {
            // Under the new associated data only: the old form is never needed again.
            let opened = open_key(record, &sealer).unwrap();
            let want = if record.id == "X" { "sk-x" } else { "sk-n" };
            assert_eq!(&*opened.value, want);
            assert!(
                sealer
                    .open(&record.value.0, &legacy_value_aad(&record.id))
                    .is_err()
            );
        }
        assert_eq!(
            &*open_key(&contents.keys[0], &sealer).unwrap().secrets["n/value"],
            "org-x"
        );
        drop(store);
        assert_eq!(schema_version(&path), SCHEMA_VERSION);
    }

    #[test]
    fn a_schema_version_edited_back_to_1_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.redb");
        let sealer = sealer(4);
        drop(Store::open(&path, &sealer).unwrap());
        {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SCHEMA_KEY, 1u32.to_le_bytes().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let err = Store::open(&path, &sealer).unwrap_err();
        assert!(
            err.to_string().contains("does not match its sealed canary"),
            "{err}"
        );
        assert!(std::fs::read(&path).unwrap() == before, "the file changed");
    }

    #[test]
    fn a_secret_moved_onto_the_value_whose_schema_1_associated_data_it_shared_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.redb");
        let sealer = sealer(5);
        let store = Store::open(&path, &sealer).unwrap();
        let batch = store.begin().unwrap();
        let fresh = |id: &str, secrets: &[(&str, &str)]| {
            let mut record = key(id, b"", &[], &sealer);
            record.value = Hex(sealer.seal(b"sk", &value_aad(id)));
            record.secrets = secrets
                .iter()
                .map(|(name, plain)| {
                    let sealed = sealer.seal(plain.as_bytes(), &secret_aad(id, name));
                    ((*name).to_owned(), Hex(sealed))
                })
                .collect();
            record
        };
        let x = fresh("X", &[("n/value", "org-x")]);
        let mut target = fresh("X/secrets/n", &[]);
        // A signed record (as the key holder would write it) with the other's ciphertext.
        target.value = x.secrets["n/value"].clone();
        batch.put_tier(&tier()).unwrap();
        batch.put_key(&x).unwrap();
        batch.put_key(&target).unwrap();
        batch.commit().unwrap();
        let (catalog, skipped) = load_catalog(&store, &sealer, &Clock::manual().0).unwrap();
        assert_eq!(catalog.key_count(), 1);
        let skipped: Vec<_> = skipped.iter().map(|s| (s.table, s.id.as_str())).collect();
        assert_eq!(skipped, [("keys", "X/secrets/n")]);
    }
}
