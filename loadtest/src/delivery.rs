//! Delivery accounting: how many connections each push should have reached (its target's
//! connections that were up when it was sent), against how many did.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::push::{PushRecord, Target};
use crate::scenario::Scenario;
use crate::worker::Closed;

/// The outcome over all pushes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounting {
    /// Deliveries the accepted pushes should have made.
    pub expected: u64,
    /// First deliveries received (duplicates not counted).
    pub received: u64,
    /// Σ max(0, expected − received) per push.
    pub lost: u64,
    /// Σ max(0, received − expected) per push: deliveries nobody should have had (a push
    /// the API refused but delivered, or misrouting).
    pub unexpected: u64,
    /// Pushes with at least one lost delivery, and the first few of their numbers.
    pub pushes_with_loss: u64,
    pub lossy_seqs: Vec<u64>,
}

/// The connections that were up, by user and room, for any point of the push phase.
/// Pushes start after the ramp, so "up" is: established, and not closed before the push.
pub struct Population<'a> {
    sc: &'a Scenario,
    failed_all: u64,
    failed_user: HashMap<u64, u64>,
    failed_room: HashMap<u64, u64>,
    closed_all: Vec<u64>,
    closed_user: HashMap<u64, Vec<u64>>,
    closed_room: HashMap<u64, Vec<u64>>,
}

/// Members of key `k` among 0..n under `i mod m`.
fn members(n: u64, m: u64, k: u64) -> u64 {
    n / m + u64::from(k < n % m)
}

impl<'a> Population<'a> {
    pub fn new(sc: &'a Scenario, failed: &[u64], closed: &[Closed]) -> Population<'a> {
        let mut p = Population {
            sc,
            failed_all: failed.len() as u64,
            failed_user: HashMap::new(),
            failed_room: HashMap::new(),
            closed_all: closed.iter().map(|c| c.at_ns).collect(),
            closed_user: HashMap::new(),
            closed_room: HashMap::new(),
        };
        for &i in failed {
            *p.failed_user.entry(sc.user_of(i)).or_default() += 1;
            if let Some(r) = sc.room_of(i) {
                *p.failed_room.entry(r).or_default() += 1;
            }
        }
        for c in closed {
            p.closed_user
                .entry(sc.user_of(c.conn))
                .or_default()
                .push(c.at_ns);
            if let Some(r) = sc.room_of(c.conn) {
                p.closed_room.entry(r).or_default().push(c.at_ns);
            }
        }
        p.closed_all.sort_unstable();
        p.closed_user.values_mut().for_each(|v| v.sort_unstable());
        p.closed_room.values_mut().for_each(|v| v.sort_unstable());
        p
    }

    /// Connections of `target` that were up at `at_ns`.
    pub fn reach(&self, target: Target, at_ns: u64) -> u64 {
        let before =
            |v: Option<&Vec<u64>>| v.map_or(0, |v| v.partition_point(|&t| t < at_ns) as u64);
        let n = self.sc.connections;
        let (all, failed, closed) = match target {
            Target::All => (n, self.failed_all, before(Some(&self.closed_all))),
            Target::User(u) => (
                if u < self.sc.users {
                    members(n, self.sc.users, u)
                } else {
                    0
                },
                self.failed_user.get(&u).copied().unwrap_or(0),
                before(self.closed_user.get(&u)),
            ),
            Target::Room(r) => (
                if r < self.sc.rooms {
                    members(n, self.sc.rooms, r)
                } else {
                    0
                },
                self.failed_room.get(&r).copied().unwrap_or(0),
                before(self.closed_room.get(&r)),
            ),
        };
        all.saturating_sub(failed).saturating_sub(closed)
    }
}

/// Compares what each push should have reached with `by_seq`, the first deliveries per
/// push number summed over all workers.
pub fn account(pop: &Population<'_>, records: &[PushRecord], by_seq: &[u32]) -> Accounting {
    let mut a = Accounting::default();
    let mut covered = vec![false; by_seq.len()];
    for r in records {
        let got = by_seq.get(r.seq as usize).copied().unwrap_or(0) as u64;
        if let Some(c) = covered.get_mut(r.seq as usize) {
            *c = true;
        }
        let want = if r.accepted() {
            pop.reach(r.target, r.sent_ns)
        } else {
            0
        };
        a.expected += want;
        a.received += got;
        if want > got {
            a.lost += want - got;
            a.pushes_with_loss += 1;
            if a.lossy_seqs.len() < 20 {
                a.lossy_seqs.push(r.seq);
            }
        } else {
            a.unexpected += got - want;
        }
    }
    // Deliveries of push numbers that were never sent.
    for (seq, &n) in by_seq.iter().enumerate() {
        if !covered[seq] {
            a.received += n as u64;
            a.unexpected += n as u64;
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::CloseReason;
    use crate::scenario::Settings;

    fn sc() -> Scenario {
        Scenario::resolve(Settings {
            connections: Some(10),
            users: Some(4),
            rooms: Some(3),
            jwt_secret: Some("k".into()),
            ..Settings::default()
        })
        .unwrap()
    }

    fn rec(seq: u64, target: Target, sent_ns: u64) -> PushRecord {
        PushRecord {
            seq,
            target,
            sent_ns,
            status: Some(202),
        }
    }

    #[test]
    fn members_of_a_residue_class() {
        // 0..10 mod 4: {0,4,8} {1,5,9} {2,6} {3,7}
        assert_eq!(
            (0..4).map(|k| members(10, 4, k)).collect::<Vec<_>>(),
            vec![3, 3, 2, 2]
        );
    }

    #[test]
    fn reach_excludes_failed_and_earlier_closed_connections() {
        let sc = sc();
        let closed = [Closed {
            conn: 5, // user 1, room 2
            at_ns: 100,
            reason: CloseReason::TransportClose,
        }];
        let pop = Population::new(&sc, &[4], &closed); // conn 4: user 0, room 1
        assert_eq!(pop.reach(Target::All, 50), 9);
        assert_eq!(pop.reach(Target::All, 150), 8);
        assert_eq!(pop.reach(Target::User(0), 150), 2);
        assert_eq!(pop.reach(Target::User(1), 50), 3);
        assert_eq!(pop.reach(Target::User(1), 150), 2);
        assert_eq!(pop.reach(Target::Room(1), 0), 2); // {1,4,7} less 4
        assert_eq!(pop.reach(Target::Room(2), 200), 2); // {2,5,8} less 5
        assert_eq!(pop.reach(Target::User(99), 0), 0);
    }

    #[test]
    fn loss_unexpected_and_unsent_deliveries() {
        let sc = sc();
        let pop = Population::new(&sc, &[], &[]);
        let mut refused = rec(2, Target::User(3), 0);
        refused.status = Some(503);
        let records = [rec(0, Target::All, 0), rec(1, Target::User(0), 0), refused];
        // push 0: 10 expected, 9 got; push 1: 3 expected, 3 got; push 2: refused, 1 got;
        // push 3: never sent, 2 got.
        let a = account(&pop, &records, &[9, 3, 1, 2]);
        assert_eq!(a.expected, 13);
        assert_eq!(a.received, 15);
        assert_eq!(a.lost, 1);
        assert_eq!(a.unexpected, 3);
        assert_eq!(a.pushes_with_loss, 1);
        assert_eq!(a.lossy_seqs, vec![0]);
    }

    #[test]
    fn nothing_received_is_all_lost() {
        let sc = sc();
        let pop = Population::new(&sc, &[], &[]);
        let a = account(&pop, &[rec(0, Target::Room(0), 0)], &[]);
        assert_eq!((a.expected, a.lost, a.received), (4, 4, 0));
    }
}
