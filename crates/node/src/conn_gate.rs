//! Caps on open connections, in all and from one address, so that a flood
//! of connections costs the node neither its file descriptors (see
//! `fd_budget`) nor every other client its service. A connection over a cap
//! is closed as soon as it is accepted: the client sees it closed and may
//! retry, and the kernel's queue of waiting connections keeps draining.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a connection was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The node has as many connections open as it allows.
    Full,
    /// That address has as many open as one address may.
    PerAddress,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::PerAddress => "per_address",
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Counts open connections against the caps.
pub struct ConnGate {
    max: usize,
    max_per_ip: usize,
    counts: Arc<Mutex<Counts>>,
}

/// An admitted connection's place; dropping it frees the place.
pub struct Slot {
    ip: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl ConnGate {
    pub fn new(max: usize, max_per_ip: usize) -> ConnGate {
        ConnGate {
            max,
            max_per_ip,
            counts: Arc::default(),
        }
    }

    /// A place for a connection from `ip`, unless a cap is reached.
    pub fn admit(&self, ip: IpAddr) -> Result<Slot, Refusal> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= self.max {
            return Err(Refusal::Full);
        }
        let from_ip = c.by_ip.entry(ip).or_default();
        if *from_ip >= self.max_per_ip {
            return Err(Refusal::PerAddress);
        }
        *from_ip += 1;
        c.total += 1;
        metrics::gauge!("comity_connections_open").set(c.total as f64);
        Ok(Slot {
            ip,
            counts: self.counts.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total -= 1;
        if let Some(n) = c.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.by_ip.remove(&self.ip);
            }
        }
        metrics::gauge!("comity_connections_open").set(c.total as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_in_all_and_per_address_and_places_come_back() {
        let gate = ConnGate::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = gate.admit(a).unwrap();
        let _a2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(Refusal::PerAddress));
        let b1 = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).err(), Some(Refusal::Full));
        drop(a1);
        let _a3 = gate.admit(a).unwrap();
        drop(b1);
        let _b2 = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).err(), Some(Refusal::Full));
        let c = gate.counts.lock().unwrap();
        assert_eq!((c.total, c.by_ip[&a], c.by_ip[&b]), (3, 2, 1));
    }

    #[test]
    fn an_address_with_nothing_open_is_forgotten() {
        let gate = ConnGate::new(10, 10);
        let ip: IpAddr = "::1".parse().unwrap();
        drop(gate.admit(ip).unwrap());
        assert!(gate.counts.lock().unwrap().by_ip.is_empty());
    }
}
