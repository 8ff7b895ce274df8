//! Caps on open connections, in all and from one address, so that a flood
//! of connections costs the node neither its file descriptors (see
//! `fd_budget`) nor every other client its service. A connection over a cap
//! is closed as soon as it is accepted: the client sees it closed and may
//! retry, and the kernel's queue of waiting connections keeps draining.
//!
//! A few places are kept back for the other nodes: past a cap a connection
//! is admitted on probation into that reserve, and kept only if its TLS
//! client certificate is a trusted node's, so a flood of clients cannot
//! cut a node off from Raft.

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
    /// Of `total`, those in the nodes' reserve.
    on_probation: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Counts open connections against the caps.
pub struct ConnGate {
    max: usize,
    max_per_ip: usize,
    reserve: usize,
    counts: Arc<Mutex<Counts>>,
}

/// An admitted connection's place; dropping it frees the place.
pub struct Slot {
    ip: IpAddr,
    /// Set for a place in the nodes' reserve: the cap the connection is past.
    pub probation: Option<Refusal>,
    counts: Arc<Mutex<Counts>>,
}

impl ConnGate {
    /// Caps of `places` connections in all, `max_per_ip` from one address
    /// but never more than a quarter of the ordinary places (else a few
    /// addresses could take them all); a quarter of the places (at most 64)
    /// are the nodes' reserve.
    pub fn new(places: usize, max_per_ip: usize) -> ConnGate {
        let reserve = (places / 4).min(64);
        let max = places - reserve;
        let per_ip = max_per_ip.min((max / 4).max(1));
        if per_ip < max_per_ip {
            tracing::warn!(
                max_connections_per_ip = max_per_ip,
                in_force = per_ip,
                "max_connections_per_ip is over a quarter of the connection places (max_connections, or what the open-file limit leaves): a quarter applies"
            );
        }
        ConnGate {
            max,
            max_per_ip: per_ip,
            reserve,
            counts: Arc::default(),
        }
    }

    /// A place for a connection from `ip`: an ordinary one, one on
    /// probation in the reserve, or none when the reserve is full too.
    pub fn admit(&self, ip: IpAddr) -> Result<Slot, Refusal> {
        let ip = source(ip);
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let probation = if c.total - c.on_probation >= self.max {
            Some(Refusal::Full)
        } else if c.by_ip.get(&ip).is_some_and(|&n| n >= self.max_per_ip) {
            Some(Refusal::PerAddress)
        } else {
            None
        };
        if let Some(why) = probation {
            if c.on_probation >= self.reserve {
                return Err(why);
            }
            c.on_probation += 1;
        }
        *c.by_ip.entry(ip).or_default() += 1;
        c.total += 1;
        metrics::gauge!("comity_connections_open").set(c.total as f64);
        Ok(Slot {
            ip,
            probation,
            counts: self.counts.clone(),
        })
    }
}

/// The source a connection's address counts for: an IPv6 address's /64,
/// since one host commonly holds a whole /64 of them.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total -= 1;
        if self.probation.is_some() {
            c.on_probation -= 1;
        }
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

    fn gate(max: usize, max_per_ip: usize) -> ConnGate {
        ConnGate {
            max,
            max_per_ip,
            reserve: 0,
            counts: Arc::default(),
        }
    }

    #[test]
    fn caps_hold_in_all_and_per_address_and_places_come_back() {
        let gate = gate(3, 2);
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
    fn past_a_cap_connections_go_on_probation_into_the_reserve() {
        let gate = ConnGate {
            reserve: 2,
            ..gate(6, 4)
        };
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let from_a: Vec<Slot> = (0..4).map(|_| gate.admit(a).unwrap()).collect();
        assert!(from_a.iter().all(|s| s.probation.is_none()));
        let a5 = gate.admit(a).unwrap();
        assert_eq!(a5.probation, Some(Refusal::PerAddress));
        let from_b: Vec<Slot> = (0..2).map(|_| gate.admit(b).unwrap()).collect();
        assert!(from_b.iter().all(|s| s.probation.is_none()));
        let b3 = gate.admit(b).unwrap();
        assert_eq!(b3.probation, Some(Refusal::Full));
        assert_eq!(gate.admit(b).err(), Some(Refusal::Full), "reserve full");
        drop(a5);
        assert_eq!(gate.admit(b).unwrap().probation, Some(Refusal::Full));
    }

    #[test]
    fn one_address_never_gets_over_a_quarter_of_the_places() {
        let per_ip = |places, cfg| ConnGate::new(places, cfg).max_per_ip;
        assert_eq!(per_ip(100_000, 1024), 1024);
        assert_eq!(per_ip(512, 1024), (512 - 64) / 4);
        assert_eq!(per_ip(8, 4), 1);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let gate = gate(10, 2);
        let _a = gate.admit("2001:db8::1".parse().unwrap()).unwrap();
        let _b = gate.admit("2001:db8::ffff:2".parse().unwrap()).unwrap();
        let c = gate.admit("2001:db8::3".parse().unwrap());
        assert_eq!(c.err(), Some(Refusal::PerAddress));
        assert!(gate.admit("2001:db8:0:1::1".parse().unwrap()).is_ok());
        let mapped = gate.admit("::ffff:10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(mapped.ip, "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn an_address_with_nothing_open_is_forgotten() {
        let gate = gate(10, 10);
        let ip: IpAddr = "::1".parse().unwrap();
        drop(gate.admit(ip).unwrap());
        assert!(gate.counts.lock().unwrap().by_ip.is_empty());
    }
}
