//! How many connections each client address has open, for `MAX_CONNECTIONS_PER_IP`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Connections open per client address, under a cap. An IPv4 address counts alone (also when
/// it arrives IPv4-mapped on a dual-stack listener); IPv6 addresses count by /64, the block a
/// single host is usually given, so that a client cannot leave the cap by changing the low
/// bits of its address.
pub(super) struct PerIp {
    cap: u32,
    /// Locked when a connection is accepted and when it closes, never per request. Holds only
    /// addresses with connections open, so it is never larger than `MAX_CONNECTIONS`.
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One open connection's place in its address's count; dropping it gives the place back.
pub(super) struct Slot {
    per_ip: Arc<PerIp>,
    address: IpAddr,
}

impl PerIp {
    pub(super) fn new(cap: u32) -> Arc<Self> {
        Arc::new(Self {
            cap,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for a connection from `peer`, or `None` when its address has `cap` open already.
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let address = group(peer);
        let mut open = self.lock();
        // The cap is at least 1, so an entry is never left at 0.
        let count = open.entry(address).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Slot {
            per_ip: Arc::clone(self),
            address,
        })
    }

    /// The count is consistent whatever panicked while holding the lock: each change is one
    /// statement.
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, u32>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Entry::Occupied(mut count) = self.per_ip.lock().entry(self.address) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }
}

/// The address a connection counts under: IPv4 as is, IPv6 by its /64.
fn group(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & (u128::MAX << 64))),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_gets_up_to_the_cap_and_a_place_back_when_one_closes() {
        let per_ip = PerIp::new(2);
        let first = per_ip.admit(ip("10.0.0.1")).unwrap();
        let _second = per_ip.admit(ip("10.0.0.1")).unwrap();
        assert!(per_ip.admit(ip("10.0.0.1")).is_none());
        let _other = per_ip.admit(ip("10.0.0.2")).unwrap();
        drop(first);
        let _again = per_ip.admit(ip("10.0.0.1")).unwrap();
        assert!(per_ip.admit(ip("10.0.0.1")).is_none());
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4_and_ipv6_counts_by_its_64() {
        let per_ip = PerIp::new(1);
        let _v4 = per_ip.admit(ip("127.0.0.1")).unwrap();
        assert!(per_ip.admit(ip("::ffff:127.0.0.1")).is_none());
        let _v6 = per_ip.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(per_ip.admit(ip("2001:db8:1:2:ffff::9")).is_none());
        assert!(per_ip.admit(ip("2001:db8:1:3::1")).is_some());
    }

    #[test]
    fn closed_addresses_leave_nothing_behind() {
        let per_ip = PerIp::new(3);
        let slots: Vec<Slot> = (0..50)
            .map(|n| per_ip.admit(IpAddr::from([10, 0, 0, n])).unwrap())
            .collect();
        assert_eq!(per_ip.lock().len(), 50);
        drop(slots);
        assert!(per_ip.lock().is_empty());
    }
}
