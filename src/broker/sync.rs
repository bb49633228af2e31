//! The atomics the broker uses, from `std` normally and from `loom` under `cfg(loom)`,
//! so the compare-and-swap of [`super::rate::WindowCounter`] can be model-checked.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
