//! Who gets a control-socket connection slot, and whose idle connection
//! makes room: the pure policy, no IO (the server asks it on every accept).
//!
//! Rules, in order:
//! - a non-admin uid holds at most [`Admission::per_uid`] slots; its next
//!   connection replaces its own oldest idle one, or is refused;
//! - the last [`Admission::reserved`] slots are for admins only, so a flood
//!   from group members never locks root or the admin group out;
//! - when no slot is free, the oldest idle connection of the uid holding the
//!   most slots is evicted, but only if that uid holds more than the
//!   newcomer's uid (or is the newcomer's uid): nobody is pushed out to make
//!   a heavier user heavier. Connections in the middle of a request are never
//!   evicted (their own deadline ends them).

use std::collections::BTreeMap;
use std::time::Instant;

/// One admitted connection.
#[derive(Debug, Clone)]
struct Conn {
    uid: u32,
    admin: bool,
    /// Since when it waits for its next request; `None` while one is served.
    idle_since: Option<Instant>,
}

/// What [`Admission::admit`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Served as connection `id`; `evict` (if any) lost its slot to it.
    Yes {
        id: u64,
        evict: Option<u64>,
    },
    No(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many clients at once ({max} connections, none idle); try again")]
    Full { max: usize },
    #[error("uid {uid} already has {held} connections open, all busy; try again")]
    UidFull { uid: u32, held: usize },
}

/// The slot table.
#[derive(Debug)]
pub struct Admission {
    pub max: usize,
    pub reserved: usize,
    pub per_uid: usize,
    conns: BTreeMap<u64, Conn>,
    next_id: u64,
}

impl Admission {
    /// `max` slots, the last `reserved` of them for admins, at most
    /// `per_uid` per non-admin uid.
    pub fn new(max: usize, reserved: usize, per_uid: usize) -> Self {
        Self { max, reserved: reserved.min(max), per_uid: per_uid.max(1), conns: BTreeMap::new(), next_id: 0 }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    fn held(&self, uid: u32) -> usize {
        self.conns.values().filter(|c| c.uid == uid).count()
    }

    /// The oldest idle connection among those `pick` accepts.
    fn oldest_idle(&self, pick: impl Fn(&Conn) -> bool) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(_, c)| pick(c))
            .filter_map(|(id, c)| Some((c.idle_since?, *id)))
            .min()
            .map(|(_, id)| id)
    }

    /// A new connection of `uid` (`admin`: root, the daemon's user or the
    /// admin group). Admitted connections start busy (reading).
    pub fn admit(&mut self, uid: u32, admin: bool) -> Admit {
        let held = self.held(uid);
        if !admin && held >= self.per_uid {
            return match self.oldest_idle(|c| c.uid == uid) {
                Some(victim) => self.replace(victim, uid, admin),
                None => Admit::No(Refusal::UidFull { uid, held }),
            };
        }
        let non_admins = self.conns.values().filter(|c| !c.admin).count();
        let room = self.conns.len() < self.max && (admin || non_admins < self.max - self.reserved);
        if room {
            return Admit::Yes { id: self.insert(uid, admin), evict: None };
        }
        // Full: the heaviest uid with an idle connection gives one up. A
        // non-admin may only take a non-admin's slot (the reserve stays).
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for c in self.conns.values() {
            *counts.entry(c.uid).or_default() += 1;
        }
        let candidate = |c: &Conn| admin || !c.admin;
        let heaviest = counts
            .iter()
            .filter(|(u, n)| **u == uid || **n > held)
            .filter(|(u, _)| self.conns.values().any(|c| c.uid == **u && c.idle_since.is_some() && candidate(c)))
            .max_by_key(|(u, n)| (**n, **u == uid))
            .map(|(u, _)| *u);
        match heaviest.and_then(|u| self.oldest_idle(|c| c.uid == u && candidate(c))) {
            Some(victim) => self.replace(victim, uid, admin),
            None => Admit::No(Refusal::Full { max: self.max }),
        }
    }

    fn replace(&mut self, victim: u64, uid: u32, admin: bool) -> Admit {
        self.conns.remove(&victim);
        Admit::Yes { id: self.insert(uid, admin), evict: Some(victim) }
    }

    fn insert(&mut self, uid: u32, admin: bool) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.conns.insert(id, Conn { uid, admin, idle_since: None });
        id
    }

    /// `id` waits for its next request from `now` on.
    pub fn set_idle(&mut self, id: u64, now: Instant) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.idle_since = Some(now);
        }
    }

    /// `id` started a request; `false` when it was evicted meanwhile (it
    /// must close without serving).
    pub fn set_busy(&mut self, id: u64) -> bool {
        self.conns.get_mut(&id).map(|c| c.idle_since = None).is_some()
    }

    /// `id` closed; its slot is free.
    pub fn release(&mut self, id: u64) {
        self.conns.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn t(s: u64) -> Instant {
        // One base for the whole test binary: only differences matter.
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now) + Duration::from_secs(s)
    }

    fn yes(a: Admit) -> (u64, Option<u64>) {
        match a {
            Admit::Yes { id, evict } => (id, evict),
            Admit::No(r) => panic!("refused: {r}"),
        }
    }

    /// `n` idle connections of `uid`, idle since t(1), t(2), ...
    fn fill(a: &mut Admission, uid: u32, admin: bool, n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| {
                let (id, _) = yes(a.admit(uid, admin));
                a.set_idle(id, t(i as u64 + 1));
                id
            })
            .collect()
    }

    #[test]
    fn a_uid_over_its_share_replaces_its_own_oldest_idle_connection() {
        let mut a = Admission::new(128, 8, 4);
        let ids = fill(&mut a, 1000, false, 4);
        assert_eq!(yes(a.admit(1000, false)).1, Some(ids[0]));
        // Its others keep their slots; the table never grows past the share.
        assert_eq!(a.held(1000), 4);
        assert!(!a.set_busy(ids[0]), "the evicted connection must learn it was evicted");
        assert!(a.set_busy(ids[1]));
    }

    #[test]
    fn a_uid_whose_connections_are_all_busy_is_refused_not_served() {
        let mut a = Admission::new(128, 8, 2);
        yes(a.admit(1000, false));
        yes(a.admit(1000, false));
        assert_eq!(a.admit(1000, false), Admit::No(Refusal::UidFull { uid: 1000, held: 2 }));
        // Another uid is unaffected.
        yes(a.admit(1001, false));
    }

    #[test]
    fn the_reserve_is_for_admins_only() {
        let mut a = Admission::new(10, 3, 100);
        fill(&mut a, 1000, false, 7);
        // Non-admins are at their 7 slots: a new non-admin uid may not take
        // the reserve; it evicts the heaviest non-admin instead.
        let (_, evicted) = yes(a.admit(1001, false));
        assert!(evicted.is_some());
        assert_eq!(a.len(), 7);
        // Admins get the three reserved slots without evicting anyone.
        for _ in 0..3 {
            assert_eq!(yes(a.admit(0, true)).1, None);
        }
        assert_eq!(a.len(), 10);
    }

    #[test]
    fn when_full_the_oldest_idle_connection_of_the_heaviest_uid_goes_first() {
        let mut a = Admission::new(10, 0, 100);
        let light = fill(&mut a, 1001, false, 3);
        let heavy = fill(&mut a, 1000, false, 7);
        // 1001's connections are older, but 1000 holds more slots.
        let (_, evicted) = yes(a.admit(1002, false));
        assert_eq!(evicted, Some(heavy[0]));
        assert!(light.iter().all(|id| a.conns.contains_key(id)));
    }

    #[test]
    fn nobody_is_evicted_to_make_a_heavier_uid_heavier() {
        let mut a = Admission::new(4, 0, 100);
        fill(&mut a, 1000, false, 2);
        fill(&mut a, 1001, false, 2);
        // 1000 holds 2; the heaviest other uid holds 2 too: no eviction from
        // 1001, but 1000 may replace one of its own.
        let (_, evicted) = yes(a.admit(1000, false));
        let victim = evicted.expect("an eviction");
        assert_eq!(a.held(1000), 2);
        assert_eq!(a.held(1001), 2);
        assert!(!a.conns.contains_key(&victim));
    }

    #[test]
    fn busy_connections_are_never_evicted() {
        let mut a = Admission::new(2, 0, 100);
        yes(a.admit(1000, false));
        yes(a.admit(1000, false));
        assert_eq!(a.admit(1001, false), Admit::No(Refusal::Full { max: 2 }));
    }

    #[test]
    fn a_non_admin_never_takes_an_admins_slot_but_an_admin_may_take_anyones() {
        let mut a = Admission::new(4, 0, 100);
        let admins = fill(&mut a, 0, true, 3);
        let member = fill(&mut a, 1000, false, 1);
        // The admins hold the most, but a non-admin can only take the member's slot.
        assert_eq!(yes(a.admit(1001, false)).1, Some(member[0]));
        // With no idle non-admin left, a non-admin is refused ...
        assert_eq!(a.admit(1002, false), Admit::No(Refusal::Full { max: 4 }));
        // ... and an admin takes the oldest idle admin connection.
        assert_eq!(yes(a.admit(1003, true)).1, Some(admins[0]));
    }

    #[test]
    fn released_slots_are_free_again() {
        let mut a = Admission::new(1, 0, 1);
        let (id, _) = yes(a.admit(1000, false));
        assert!(matches!(a.admit(1001, false), Admit::No(_)));
        a.release(id);
        assert!(a.is_empty());
        yes(a.admit(1001, false));
    }
}
