//! Work spread over the machine's cores: checking and decoding records at start-up, sealing and
//! signing them in an import.

/// Fewer items than this are mapped on the calling thread: threads are not worth starting.
const PARALLEL_FROM: usize = 256;

/// `f` of every item of `items`, in order, the items split among the machine's cores, while
/// `meanwhile` runs on the calling thread. A panic in `f` or `meanwhile` resumes on the calling
/// thread once every thread has stopped.
pub fn map_on_cores<T: Sync, U: Send, M>(
    items: &[T],
    f: impl Fn(&T) -> U + Sync,
    meanwhile: impl FnOnce() -> M,
) -> (Vec<U>, M) {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if items.len() < PARALLEL_FROM || threads == 1 {
        let mapped = items.iter().map(&f).collect();
        return (mapped, meanwhile());
    }
    let f = &f;
    std::thread::scope(|scope| {
        let parts: Vec<_> = items
            .chunks(items.len().div_ceil(threads))
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<U>>()))
            .collect();
        let during = meanwhile();
        let mut mapped = Vec::with_capacity(items.len());
        for part in parts {
            match part.join() {
                Ok(part) => mapped.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        (mapped, during)
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_order_of_the_items_at_any_size() {
        for len in [0, 1, 255, 256, 257, 10_001] {
            let items: Vec<usize> = (0..len).collect();
            let (mapped, during) = map_on_cores(&items, |i| i * 2, || "done");
            assert_eq!(mapped, (0..len).map(|i| i * 2).collect::<Vec<_>>());
            assert_eq!(during, "done");
        }
    }

    #[test]
    fn a_panic_in_a_thread_reaches_the_caller() {
        let items: Vec<usize> = (0..1_000).collect();
        let caught = std::panic::catch_unwind(|| {
            map_on_cores(&items, |&i| assert_ne!(i, 700, "item 700"), || ())
        });
        assert!(caught.is_err());
    }
}
