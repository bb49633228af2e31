//! Sealing values at rest: AES-256-GCM with a fresh random 96-bit nonce per value.
//!
//! Our own format binds each ciphertext to the record and field it belongs to (associated
//! data), so a value copied onto another record fails to open. The Go service's format, used by
//! the SQLite import and export, is in `go` ([`Sealer::seal_go`], [`Sealer::open_go`]).
//!
//! Associated data and signed input are [`fields`]: each part prefixed with its length, so no
//! two different lists of parts give the same bytes (a `/` in an id cannot pass for a
//! separator). Records that are not sealed (tiers, consumers, a key's other fields) are signed
//! by a [`Signer`]: HMAC-SHA256 under a key derived from the encryption key with HKDF, so whoever
//! can write the database file but lacks the key can neither forge nor alter one.

mod go;

pub use go::GCM_PREFIX;

use aes_gcm::aead::{Aead, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac as _};
use secrecy::{ExposeSecret, ExposeSecretMut, SecretBox};
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// The HKDF-SHA256 `info` the signing key is derived with: the same encryption key never
/// serves as both the AES key and the HMAC key.
const SIGNING_INFO: &[u8] = b"keypooler record signing key v1";
/// The length of a [`Signer`]'s signature (HMAC-SHA256).
pub const SIGNATURE_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Wrong key, a tampered value, or a value sealed for another record.
    #[error("the value does not open under this ENCRYPTION_KEY")]
    Open,
    #[error("the sealed value is too short to hold a nonce and a tag")]
    Truncated,
    #[error("the sealed value is not hex")]
    NotHex,
    #[error("the opened value is not UTF-8 text")]
    NotText,
}

/// The 32-byte AES-256 key, parsed from 64 hex characters. Never printed.
pub struct EncryptionKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey([REDACTED])")
    }
}

/// Why a text is not an encryption key. Never contains the text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyParseError {
    #[error("must be exactly 64 hex characters (32 bytes), got {0} characters")]
    Length(usize),
    #[error("must be hex (0-9, a-f), found a character that is not")]
    NotHex,
}

impl EncryptionKey {
    pub fn parse_hex(text: &str) -> Result<Self, KeyParseError> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(KeyParseError::Length(text.chars().count()));
        }
        let mut bytes = SecretBox::new(Box::new([0u8; 32]));
        hex::decode_to_slice(text, bytes.expose_secret_mut()).map_err(|_| KeyParseError::NotHex)?;
        Ok(Self(bytes))
    }

    /// A fresh random key (for tests and `rekey`).
    pub fn generate() -> Self {
        let mut bytes = SecretBox::new(Box::new([0u8; 32]));
        rand::fill(bytes.expose_secret_mut());
        Self(bytes)
    }

    /// The key as 64 lowercase hex characters, in a zeroizing buffer.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.expose_secret()))
    }
}

/// Seals and opens values under one key, and signs records with the key derived from it.
/// Holds only the expanded cipher and the keyed HMAC, which zeroize themselves on drop.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
    signer: Signer,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([REDACTED])")
    }
}

impl Sealer {
    pub fn new(key: &EncryptionKey) -> Self {
        let cipher = Aes256Gcm::new_from_slice(key.0.expose_secret())
            .expect("an EncryptionKey is always 32 bytes");
        Self {
            cipher,
            signer: Signer::derive(key.0.expose_secret()),
        }
    }

    /// The signer derived from the same key.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// `nonce || ciphertext || tag`, authenticated together with `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM seals any value under 64 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what [`Sealer::seal`] produced with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Truncated);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| CryptoError::Truncated)?;
        self.cipher
            .decrypt(&nonce, Payload { msg: body, aad })
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Open)
    }

    /// Opens a sealed text value.
    pub fn open_text(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<String>, CryptoError> {
        into_text(self.open(sealed, aad)?)
    }
}

/// Signs records and checks their signatures: HMAC-SHA256 under a key derived from the
/// encryption key (HKDF-SHA256, [`SIGNING_INFO`]). Holds the keyed HMAC state, zeroized on
/// drop; cloning it copies that state, so signing never derives the key again.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<sha2::Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer([REDACTED])")
    }
}

impl Signer {
    fn derive(key: &[u8; 32]) -> Self {
        let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(None, key);
        let mut derived = Zeroizing::new([0u8; 32]);
        hkdf.expand(SIGNING_INFO, &mut derived[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let mac = Hmac::new_from_slice(&derived[..]).expect("HMAC takes a key of any length");
        Self { mac }
    }

    /// The signature of `parts`, taken as [`fields`].
    pub fn sign(&self, parts: &[&[u8]]) -> [u8; SIGNATURE_LEN] {
        let mut mac = self.mac.clone();
        each_field(parts, |bytes| mac.update(bytes));
        mac.finalize().into_bytes().into()
    }

    /// Whether `signature` is the signature of `parts`, compared in constant time.
    pub fn verify(&self, parts: &[&[u8]], signature: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        each_field(parts, |bytes| mac.update(bytes));
        mac.verify_slice(signature).is_ok()
    }
}

/// `parts` as one unambiguous byte string: each part as its length (4 bytes, big-endian) then
/// its bytes. Two different lists of parts never give the same bytes.
pub fn fields(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|part| 4 + part.len()).sum());
    each_field(parts, |bytes| out.extend_from_slice(bytes));
    out
}

fn each_field(parts: &[&[u8]], mut out: impl FnMut(&[u8])) {
    for part in parts {
        let len = u32::try_from(part.len()).expect("a field is under 4 GiB");
        out(&len.to_be_bytes());
        out(part);
    }
}

/// SHA-256 of a consumer token: tokens are stored and looked up only by this.
pub fn token_hash(token: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token).into()
}

/// A new consumer token: 32 random bytes as 64 hex characters, and its hash.
pub fn new_token() -> (Zeroizing<String>, [u8; 32]) {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::fill(&mut bytes[..]);
    let token = Zeroizing::new(hex::encode(&bytes[..]));
    let hash = token_hash(token.as_bytes());
    (token, hash)
}

/// Moves opened bytes into a zeroizing `String` without leaving a copy behind.
fn into_text(mut bytes: Zeroizing<Vec<u8>>) -> Result<Zeroizing<String>, CryptoError> {
    let owned = std::mem::take(&mut *bytes);
    match String::from_utf8(owned) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(err) => {
            drop(Zeroizing::new(err.into_bytes()));
            Err(CryptoError::NotText)
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::new(&EncryptionKey::generate())
    }

    #[test]
    fn a_sealed_value_opens_with_its_own_associated_data_only() {
        let sealer = sealer();
        let sealed = sealer.seal(b"sk-abc", b"keys/1/value");
        assert_eq!(&*sealer.open(&sealed, b"keys/1/value").unwrap(), b"sk-abc");
        assert_eq!(
            sealer.open(&sealed, b"keys/2/value"),
            Err(CryptoError::Open)
        );
    }

    #[test]
    fn the_same_value_seals_differently_each_time() {
        let sealer = sealer();
        assert_ne!(sealer.seal(b"x", b""), sealer.seal(b"x", b""));
    }

    #[test]
    fn another_key_cannot_open_it() {
        let sealed = sealer().seal(b"secret", b"");
        assert_eq!(sealer().open(&sealed, b""), Err(CryptoError::Open));
    }

    #[test]
    fn a_flipped_bit_or_a_short_value_is_refused() {
        let sealer = sealer();
        let mut sealed = sealer.seal(b"secret", b"");
        sealed[NONCE_LEN] ^= 1;
        assert_eq!(sealer.open(&sealed, b""), Err(CryptoError::Open));
        assert_eq!(sealer.open(&sealed[..20], b""), Err(CryptoError::Truncated));
    }

    #[test]
    fn fields_are_unambiguous_where_a_joined_text_is_not() {
        // Joined with "/", these two are the same text.
        let value = fields(&[b"key-value", b"X/secrets/n"]);
        let secret = fields(&[b"key-secret", b"X", b"n/value"]);
        assert_ne!(value, secret);
        assert_ne!(fields(&[b"ab", b"c"]), fields(&[b"a", b"bc"]));
        assert_ne!(fields(&[b"a", b""]), fields(&[b"a"]));
    }

    #[test]
    fn a_signature_checks_only_its_own_parts_under_its_own_key() {
        let key = EncryptionKey::generate();
        let signer = Sealer::new(&key).signer().clone();
        let signature = signer.sign(&[b"consumers", b"c1", b"{}"]);
        assert!(signer.verify(&[b"consumers", b"c1", b"{}"], &signature));
        assert!(!signer.verify(&[b"consumers", b"c2", b"{}"], &signature));
        assert!(!signer.verify(&[b"consumers", b"c1", b"{ }"], &signature));
        assert!(!signer.verify(&[b"consumers", b"c1", b"{}"], &signature[..31]));
        let other = sealer();
        assert!(
            !other
                .signer()
                .verify(&[b"consumers", b"c1", b"{}"], &signature)
        );
        // Derived, not the key itself: an HMAC under the raw key gives another signature.
        let raw = Hmac::<sha2::Sha256>::new_from_slice(key.0.expose_secret())
            .unwrap()
            .chain_update(fields(&[b"consumers", b"c1", b"{}"]))
            .finalize()
            .into_bytes();
        assert_ne!(raw.as_slice(), signature.as_slice());
        assert_eq!(format!("{signer:?}"), "Signer([REDACTED])");
    }

    #[test]
    fn key_parsing_names_the_problem_and_never_the_key() {
        let err = EncryptionKey::parse_hex("abcd").unwrap_err();
        assert_eq!(err, KeyParseError::Length(4));
        assert!(!err.to_string().contains("abcd"));
        let not_hex = "zz".repeat(32);
        assert_eq!(
            EncryptionKey::parse_hex(&not_hex).unwrap_err(),
            KeyParseError::NotHex
        );
        let key = EncryptionKey::parse_hex(&"0f".repeat(32)).unwrap();
        assert_eq!(&*key.to_hex(), &"0f".repeat(32));
        assert_eq!(format!("{key:?}"), "EncryptionKey([REDACTED])");
    }
}
