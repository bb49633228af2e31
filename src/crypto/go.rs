//! The Go keypooler's value format: lowercase hex of `nonce || ciphertext || tag`, no associated
//! data. Its later schema prefixes sealed values with `enc:gcm:` and keeps untagged values as
//! plaintext.

use zeroize::Zeroizing;

use super::{CryptoError, Sealer, into_text};

/// The prefix the Go service's later schema puts before sealed values.
pub const GCM_PREFIX: &str = "enc:gcm:";

impl Sealer {
    /// Seals `plaintext` as the Go service does (hex, no prefix).
    pub fn seal_go(&self, plaintext: &str) -> String {
        hex::encode(self.seal(plaintext.as_bytes(), b""))
    }

    /// Opens a hex value sealed by the Go service.
    pub fn open_go(&self, hex_text: &str) -> Result<Zeroizing<String>, CryptoError> {
        let sealed = Zeroizing::new(hex::decode(hex_text.trim()).map_err(|_| CryptoError::NotHex)?);
        into_text(self.open(&sealed, b"")?)
    }

    /// Opens a value of the Go service's later schema: `enc:gcm:<hex>` is sealed, anything else
    /// is stored as plaintext.
    pub fn open_go_tagged(&self, stored: &str) -> Result<Zeroizing<String>, CryptoError> {
        match stored.strip_prefix(GCM_PREFIX) {
            Some(hex_text) => self.open_go(hex_text),
            None => Ok(Zeroizing::new(stored.to_owned())),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::crypto::EncryptionKey;

    #[test]
    fn go_values_round_trip_with_and_without_the_tag() {
        let sealer = Sealer::new(&EncryptionKey::generate());
        let stored = sealer.seal_go("sk-\"quoted\" ü");
        assert!(
            stored
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(&*sealer.open_go(&stored).unwrap(), "sk-\"quoted\" ü");
        let tagged = format!("{GCM_PREFIX}{stored}");
        assert_eq!(&*sealer.open_go_tagged(&tagged).unwrap(), "sk-\"quoted\" ü");
        assert_eq!(
            &*sealer.open_go_tagged("plain-value").unwrap(),
            "plain-value"
        );
        assert_eq!(sealer.open_go("not hex"), Err(CryptoError::NotHex));
    }
}
