//! The store boundary: redb reports most damage as `Corrupted`, but a file altered behind its
//! back can still make it panic (an index out of range in a page it trusted). Both become
//! [`StoreError::Damaged`] here, so start-up ends with one clear line instead of a panic.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::Once;

use super::StoreError;

thread_local! {
    /// Set while this thread runs inside [`guarded`]: its panics become errors, so the panic
    /// hook stays quiet for them.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Wraps the panic hook once: panics inside [`guarded`] print nothing (their message becomes
/// the error); every other panic still reaches the hook that was installed before.
fn quiet_hook_for_guarded_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Runs a redb operation on the file at `path`, turning a panic or a `Corrupted` error into
/// [`StoreError::Damaged`]. Nothing redb touched in `run` may be used after a panic: `run`
/// owns (and drops) every handle it opens, or the caller drops the store.
pub(super) fn guarded<T>(
    path: &Path,
    run: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    quiet_hook_for_guarded_panics();
    let outer = GUARDED.with(|flag| flag.replace(true));
    let outcome = panic::catch_unwind(AssertUnwindSafe(run));
    GUARDED.with(|flag| flag.set(outer));
    match outcome {
        Ok(Err(StoreError::Storage(redb::Error::Corrupted(reason)))) => Err(StoreError::Damaged {
            path: path.into(),
            reason,
        }),
        // Reading a file that passed the header checks, anything but an I/O failure (a table
        // whose stored type is not the one written, say) means its contents are damaged.
        Ok(Err(StoreError::Storage(err))) if !matches!(err, redb::Error::Io(_)) => {
            Err(StoreError::Damaged {
                path: path.into(),
                reason: err.to_string(),
            })
        }
        Ok(result) => result,
        Err(payload) => {
            let reason = payload
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no detail".into());
            Err(StoreError::Damaged {
                path: path.into(),
                reason: format!("redb found an inconsistency: {reason}"),
            })
        }
    }
}

/// Runs code of ours from inside [`guarded`] (a callback fed by a redb read) outside its reach:
/// a panic in it is reported by the panic hook as usual and handed back, for the caller to
/// resume once the redb operation has ended, instead of being taken for a damaged file.
pub(super) fn unguarded<T>(run: impl FnOnce() -> T) -> std::thread::Result<T> {
    let outer = GUARDED.with(|flag| flag.replace(false));
    let outcome = panic::catch_unwind(AssertUnwindSafe(run));
    GUARDED.with(|flag| flag.set(outer));
    outcome
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_damaged_error_and_the_flag_is_restored() {
        let path = Path::new("x.redb");
        let err = guarded::<()>(path, || panic!("page 7 out of range")).unwrap_err();
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("inconsistency: page 7 out of range"),
            "{err}"
        );
        assert!(!GUARDED.with(Cell::get));
        let err = guarded::<()>(path, || {
            Err(StoreError::Storage(redb::Error::Corrupted(
                "bad checksum".into(),
            )))
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("is damaged (bad checksum)"),
            "{err}"
        );
        assert_eq!(guarded(path, || Ok(7)).unwrap(), 7);
    }

    #[test]
    fn a_panic_of_our_own_inside_a_guarded_read_is_not_a_damaged_file() {
        let path = Path::new("x.redb");
        let mut escaped = None;
        let result = guarded(path, || {
            escaped = unguarded(|| panic!("a bug of ours")).err();
            Ok(())
        });
        assert!(result.is_ok());
        let payload = escaped.expect("the panic is handed back");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"a bug of ours"));
        assert!(!GUARDED.with(Cell::get));
    }
}
