//! The admin JSON bodies as the handlers parse them: bytes → `TierBody`/`KeyBody` → the
//! validated `TierSpec`/`NewKey`. Any input must end in a value or a bounded 400 message, never
//! a panic, an overflow, or an error that repeats a key value.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run admin_json` (see docs/testing.md).

#![no_main]

use keypooler::broker::{KeyBody, NewKey, TierBody, TierSpec};
use keypooler::http::{ApiError, parse_json};
use libfuzzer_sys::fuzz_target;

fn check(result: Result<(), ApiError>, data: &[u8]) {
    if let Err(err) = result {
        assert_eq!(err.status(), 400, "{err:?}");
        let message = err.to_string();
        assert!(message.chars().count() < 1_000, "unbounded: {message}");
        // A key value the input carried is never repeated.
        if let Ok(body) = serde_json::from_slice::<serde_json::Value>(data)
            && let Some(key) = body.get("key").and_then(|k| k.as_str())
            && key.len() >= 8
        {
            assert!(!message.contains(key), "echoed the key: {message}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let tier = parse_json::<TierBody>(data).and_then(|body| Ok(TierSpec::try_from(body).map(drop)?));
    check(tier, data);
    let key = parse_json::<KeyBody>(data).and_then(|body| Ok(NewKey::try_from(body).map(drop)?));
    check(key, data);
});
