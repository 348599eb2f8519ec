//! The events a `contender` prints, and a checker over a recorded history.
//!
//! A history is the list of [`Record`]s of every contender process, plus the fault windows the
//! test injected and the fenced resource's log. The checker looks at each role (an election or
//! a lock) separately and finds:
//!
//! - **duplicate tokens**: two grants of one role with the same fencing token;
//! - **token inversions**: a grant whose token is smaller than an earlier grant's, unless the
//!   holder was stopped or the server faulted between the two (then the print was late, not the
//!   grant);
//! - **overlaps**: two processes believing they hold the role at the same time where the one
//!   with the smaller token was *not* in a fault window (paused, killed, server fault) between
//!   its grant and the newer grant — a live, connected holder must never overlap its
//!   successor (a holder cut off by a fault may: it is what fencing is for, and a resumed
//!   process may even release before it notices the loss; so may a holder that had reported
//!   its hold `Suspended` under `TolerateSuspend`: the library told it the role may be lost,
//!   and those overlaps are counted apart);
//! - **stale accepted writes**: writes the fenced resource accepted from a token after it had
//!   accepted a larger one (must be 0: this checks the resource too).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::fence::FenceWrite;

/// What a contender reports. Serialized as `{"ev":"leading", ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// The process is up.
    Started {
        /// Its pid.
        pid: u32,
    },
    /// Campaigning in the election / waiting for the lock.
    Campaigning {
        /// `election` or `lock`.
        role: String,
    },
    /// The role was granted with this token.
    Granted {
        /// `election` or `lock`.
        role: String,
        /// The fencing token.
        token: u64,
    },
    /// About to give the role up on purpose (printed before the release starts).
    Releasing {
        /// `election` or `lock`.
        role: String,
        /// The fencing token.
        token: u64,
    },
    /// The role was lost (session expired or suspended, node deleted).
    Lost {
        /// `election` or `lock`.
        role: String,
        /// The fencing token.
        token: u64,
    },
    /// A held role's state changed (`Suspended`, `Holding` again; `Lost` comes as [`Event::Lost`]):
    /// what the holder itself reports under `TolerateSuspend`.
    HoldState {
        /// `election` or `lock`.
        role: String,
        /// The fencing token.
        token: u64,
        /// `Holding` or `Suspended`.
        state: String,
    },
    /// A write to the fenced resource and its answer.
    Write {
        /// `election` or `lock`.
        role: String,
        /// The token sent.
        token: u64,
        /// Whether the resource accepted it.
        ok: bool,
        /// Whether it was sent after the role was reported lost (a deliberate zombie write).
        zombie: bool,
    },
    /// Registered in the service registry.
    Registered {
        /// The service.
        service: String,
    },
    /// A recoverable error (the contender carries on).
    Error {
        /// What was being done.
        what: String,
        /// The error's Display.
        msg: String,
    },
    /// The client's current session changed id or state (diagnostics).
    Session {
        /// The session's id.
        session: String,
        /// Its state (`Connected`, `Suspended`, `Expired`, `Closed`).
        state: String,
    },
    /// The process is exiting normally.
    Exiting,
    /// Who leads, as the process's own library sees it (a mixed-fleet peer's `getLeader()` /
    /// `contenders()`, answering `observe`).
    Observed {
        /// The leader's id (empty: nobody).
        leader: String,
        /// Every candidate's id, in the library's order.
        participants: Vec<String>,
    },
}

/// One line of a contender's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When ([`crate::now_us`]).
    pub t_us: u64,
    /// The contender's id.
    pub id: String,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// A time window in which a fault was active.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultWindow {
    /// The process affected (`None`: the server, i.e. everyone).
    pub id: Option<String>,
    /// What (`sigstop`, `sigkill`, `server_pause`, `server_restart`, …).
    pub kind: String,
    /// Start ([`crate::now_us`]).
    pub from_us: u64,
    /// End (`u64::MAX` for a kill: the process never comes back).
    pub to_us: u64,
}

/// One holding of a role by one process, from the grant to the release, loss or end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Interval {
    /// The role (`election` or `lock`).
    pub role: String,
    /// The holder.
    pub id: String,
    /// The fencing token.
    pub token: u64,
    /// Granted at (when the holder printed it).
    pub from_us: u64,
    /// The holder's record of the same loop before the grant (or its start): the grant was
    /// decided after it (the earliest moment a stop can have come between the decision and
    /// the print).
    pub asked_us: u64,
    /// Released, lost or (if it never said) the end of the history.
    pub to_us: u64,
    /// How it ended: `released`, `lost`, `open`.
    pub end: &'static str,
}

/// What the checker found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Holdings per role, in grant order.
    pub intervals: Vec<Interval>,
    /// Grants per role.
    pub grants: BTreeMap<String, usize>,
    /// Duplicate tokens (must be empty).
    pub duplicate_tokens: Vec<String>,
    /// Token inversions not explained by a fault (must be empty).
    pub inversions: Vec<String>,
    /// Overlaps of a live holder with its successor (must be empty).
    pub overlaps: Vec<String>,
    /// Overlaps explained by a fault of the older holder (allowed: fencing handles them).
    pub fenced_overlaps: usize,
    /// Of those, the ones explained only by a server fault (a pause or restart), which must
    /// end within the fault's grace: a resumed server may end a session at once, and its holder
    /// learns on its next round trip.
    pub server_fault_overlaps: usize,
    /// The longest of the server-fault overlaps, in microseconds.
    pub max_server_fault_overlap_us: u64,
    /// Overlaps whose older holder had reported its hold `Suspended` (and not `Holding` again)
    /// before the newer grant: under `TolerateSuspend` the library told it the role may be
    /// lost, and it learns `Lost` once it hears of its session's end (fencing protects the
    /// resource meanwhile). Not counted in `fenced_overlaps`.
    pub suspended_overlaps: usize,
    /// The longest of those, in microseconds.
    pub max_suspended_overlap_us: u64,
    /// Writes accepted after a larger token was accepted (must be 0).
    pub stale_writes_accepted: usize,
    /// Writes the resource rejected (stale tokens caught by fencing).
    pub stale_writes_rejected: usize,
    /// Writes accepted in total.
    pub writes_accepted: usize,
}

impl Report {
    /// Whether every invariant holds.
    pub fn ok(&self) -> bool {
        self.duplicate_tokens.is_empty()
            && self.inversions.is_empty()
            && self.overlaps.is_empty()
            && self.stale_writes_accepted == 0
    }
}

fn faulted(faults: &[FaultWindow], id: &str, from: u64, to: u64) -> bool {
    faults
        .iter()
        .any(|f| f.id.as_deref().map_or(true, |x| x == id) && f.from_us <= to && f.to_us >= from)
}

/// The role an event is about, if any.
fn role_of(e: &Event) -> Option<&str> {
    match e {
        Event::Campaigning { role }
        | Event::Granted { role, .. }
        | Event::Releasing { role, .. }
        | Event::Lost { role, .. }
        | Event::HoldState { role, .. }
        | Event::Write { role, .. } => Some(role),
        _ => None,
    }
}

/// The contender's loop a role's records come from: the read-write lock's two roles share one.
fn role_loop(role: &str) -> &str {
    role.strip_suffix("-read")
        .or_else(|| role.strip_suffix("-write"))
        .unwrap_or(role)
}

/// Builds the holdings from the records (each process's records in its own order). A grant's
/// `asked_us` is the process's previous record *of the same loop* (or its start): its other
/// loops print meanwhile, and right after a resume they print first (churn on Consul: c4's
/// read lock decided before a 2.5 s stop was printed 8.7 ms into the resume, after records of
/// its other roles, and the stop looked as if it came before the ask).
pub fn intervals(records: &[Record], end_us: u64) -> Vec<Interval> {
    let mut open: BTreeMap<(String, String), (u64, u64, u64)> = BTreeMap::new();
    let mut last: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut started: BTreeMap<&str, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for r in records {
        let asked = match (&r.event, role_of(&r.event).map(role_loop)) {
            (_, Some(l)) => {
                let before = last.insert((&r.id, l), r.t_us);
                before
                    .into_iter()
                    .chain(started.get(r.id.as_str()).copied())
                    .max()
                    .unwrap_or(r.t_us)
            }
            (Event::Started { .. }, None) => {
                started.insert(&r.id, r.t_us);
                r.t_us
            }
            // Diagnostics (sessions, errors, registrations) are no loop's step.
            (_, None) => r.t_us,
        };
        match &r.event {
            Event::Granted { role, token } => {
                open.insert((r.id.clone(), role.clone()), (*token, r.t_us, asked));
            }
            Event::Releasing { role, token } | Event::Lost { role, token } => {
                let key = (r.id.clone(), role.clone());
                if let Some((t, from, asked)) = open.get(&key).copied() {
                    if t == *token {
                        open.remove(&key);
                        out.push(Interval {
                            role: role.clone(),
                            id: r.id.clone(),
                            token: t,
                            from_us: from,
                            asked_us: asked,
                            to_us: r.t_us,
                            end: if matches!(r.event, Event::Lost { .. }) {
                                "lost"
                            } else {
                                "released"
                            },
                        });
                    }
                }
            }
            _ => {}
        }
    }
    for ((id, role), (token, from, asked)) in open {
        out.push(Interval {
            role,
            id,
            token,
            from_us: from,
            asked_us: asked,
            to_us: end_us,
            end: "open",
        });
    }
    out.sort_by_key(|i| (i.role.clone(), i.from_us, i.token));
    out
}

/// Checks a history: the contenders' records, the injected faults, the resource logs (one per
/// role name, may be empty), and the end of the observation.
pub fn check(
    records: &[Record],
    faults: &[FaultWindow],
    fence_logs: &BTreeMap<String, Vec<FenceWrite>>,
    end_us: u64,
) -> Report {
    let mut rep = Report {
        intervals: intervals(records, end_us),
        ..Report::default()
    };
    let roles: BTreeSet<String> = rep.intervals.iter().map(|i| i.role.clone()).collect();
    // Shared roles may overlap by design: `check_rwlock` and `check_semaphore` check them.
    for role in roles
        .into_iter()
        .filter(|r| !SHARED_ROLES.contains(&r.as_str()))
    {
        let ivs: Vec<&Interval> = rep.intervals.iter().filter(|i| i.role == role).collect();
        rep.grants.insert(role.clone(), ivs.len());
        let mut seen: BTreeMap<u64, &str> = BTreeMap::new();
        for i in &ivs {
            if let Some(other) = seen.insert(i.token, &i.id) {
                rep.duplicate_tokens.push(format!(
                    "{role}: token {} granted to {other} and {}",
                    i.token, i.id
                ));
            }
        }
        for (a_idx, a) in ivs.iter().enumerate() {
            for b in &ivs[a_idx + 1..] {
                // `a` printed its grant no later than `b`.
                if b.token < a.token {
                    // `b` was granted first (smaller token) but printed later: fine only if `b`
                    // was stopped (or the server faulted) between the two prints.
                    if !faulted(faults, &b.id, a.from_us, b.from_us) {
                        rep.inversions.push(format!(
                            "{role}: {} got token {} at {} after {} got {} at {}",
                            b.id, b.token, b.from_us, a.id, a.token, a.from_us
                        ));
                    }
                }
                if a.id == b.id {
                    continue;
                }
                let (old, new) = if a.token < b.token { (a, b) } else { (b, a) };
                let overlap_from = old.from_us.max(new.from_us);
                let overlap_to = old.to_us.min(new.to_us);
                if overlap_from < overlap_to {
                    // The older holder believed it held the role while the newer one did. That
                    // is only allowed if the older one was cut off: its process stopped or
                    // killed, or the server faulted, between its grant and the newer grant.
                    let own_fault = cut_off(faults, old, new.from_us, overlap_to);
                    // A server fault excuses the overlap only up to the end of its grace.
                    let server_grace_end = faults
                        .iter()
                        .filter(|f| {
                            f.id.is_none() && f.from_us <= new.from_us && f.to_us >= old.from_us
                        })
                        .map(|f| f.to_us)
                        .max();
                    if own_fault {
                        rep.fenced_overlaps += 1;
                    } else if server_grace_end.is_some_and(|end| overlap_to <= end) {
                        rep.fenced_overlaps += 1;
                        rep.server_fault_overlaps += 1;
                        rep.max_server_fault_overlap_us = rep
                            .max_server_fault_overlap_us
                            .max(overlap_to - overlap_from);
                    } else if suspended_at(records, old, new.from_us) {
                        rep.suspended_overlaps += 1;
                        rep.max_suspended_overlap_us =
                            rep.max_suspended_overlap_us.max(overlap_to - overlap_from);
                    } else {
                        rep.overlaps.push(format!(
                            "{role}: {} (token {}, {}..{} {}) overlaps {} (token {}, {}..{} {}) \
                             by {} us; {}",
                            old.id,
                            old.token,
                            old.from_us,
                            old.to_us,
                            old.end,
                            new.id,
                            new.token,
                            new.from_us,
                            new.to_us,
                            new.end,
                            overlap_to - overlap_from,
                            reports_before(records, old, new.from_us)
                        ));
                    }
                }
            }
        }
    }
    for log in fence_logs.values() {
        let mut max: Option<u64> = None;
        for w in log {
            if w.accepted {
                rep.writes_accepted += 1;
                if max.is_some_and(|m| w.token < m) {
                    rep.stale_writes_accepted += 1;
                }
                max = Some(max.map_or(w.token, |m| m.max(w.token)));
            } else {
                rep.stale_writes_rejected += 1;
            }
        }
    }
    rep
}

/// Whether `old`'s holder had reported its hold `Suspended`, and not `Holding` again, at `at`.
fn suspended_at(records: &[Record], old: &Interval, at: u64) -> bool {
    records
        .iter()
        .rev()
        .filter(|r| r.id == old.id && r.t_us >= old.from_us && r.t_us <= at)
        .find_map(|r| match &r.event {
            Event::HoldState { role, token, state } if *role == old.role && *token == old.token => {
                Some(state.as_str())
            }
            _ => None,
        })
        == Some("Suspended")
}

/// What `old`'s process last reported of its session and its hold before `at` (diagnostics of
/// an overlap: was it suspended, disconnected?).
fn reports_before(records: &[Record], old: &Interval, at: u64) -> String {
    let last = |pick: &dyn Fn(&Event) -> Option<String>| {
        records
            .iter()
            .rev()
            .filter(|r| r.id == old.id && r.t_us >= old.from_us && r.t_us <= at)
            .find_map(|r| pick(&r.event).map(|what| format!("{what} at {}", r.t_us)))
            .unwrap_or_else(|| "none".into())
    };
    let session = last(&|e| match e {
        Event::Session { state, .. } => Some(format!("session {state}")),
        _ => None,
    });
    let hold = last(&|e| match e {
        Event::HoldState { role, token, state } if *role == old.role && *token == old.token => {
            Some(format!("hold {state}"))
        }
        _ => None,
    });
    format!(
        "{}'s last reports after its grant, before the newer one: {session}; {hold}",
        old.id
    )
}

/// The read-write lock's roles: readers share, a writer is alone.
pub const RWLOCK_READ: &str = "rwlock-read";
/// See [`RWLOCK_READ`]; writers are also checked as an exclusive role by [`check`].
pub const RWLOCK_WRITE: &str = "rwlock-write";
/// A semaphore lease (one lease per holding).
pub const SEMAPHORE: &str = "semaphore";
/// Roles that [`check`] does not treat as exclusive.
pub const SHARED_ROLES: &[&str] = &[RWLOCK_READ, SEMAPHORE];

/// How long after its resume a stopped holder may still believe it holds: it learns of the
/// loss on its first round trip (ms on a quiet machine; bounded for a loaded one).
pub const RESUME_GRACE_US: u64 = 2_000_000;

/// Whether `old`'s process was cut off (stopped or killed) before a newer holding granted at
/// `new_from`, so that `old` may overlap it until `overlap_to`: the cut came after `old`'s
/// grant was printed, or after it asked and before that print — a grant decided just before a
/// SIGSTOP is printed only after the resume (churn on Consul: a writer's grant printed 4 ms
/// before its `Lost`, its session having expired while it was stopped), so that overlap is
/// excused only within [`RESUME_GRACE_US`] of the resume.
fn cut_off(faults: &[FaultWindow], old: &Interval, new_from: u64, overlap_to: u64) -> bool {
    faults.iter().any(|f| {
        f.id.as_deref() == Some(old.id.as_str())
            && f.from_us <= new_from
            && (f.to_us >= old.from_us || stopped_after_asking(f, old, overlap_to))
    })
}

/// Whether `f` (a fault of `i`'s process) came after `i` asked, and what `i` believed ended by
/// `until`, within [`RESUME_GRACE_US`] of the resume: a grant decided before a stop and
/// printed after it.
fn stopped_after_asking(f: &FaultWindow, i: &Interval, until: u64) -> bool {
    f.from_us >= i.asked_us && until <= f.to_us.saturating_add(RESUME_GRACE_US)
}

/// Whether `old`'s holding may still overlap a holding granted at `new_from` until
/// `overlap_to`: `old` was cut off ([`cut_off`]), or the server faulted between its grant and
/// `new_from` and the overlap ends within the fault's grace (as in [`check`]).
fn excused(faults: &[FaultWindow], old: &Interval, new_from: u64, overlap_to: u64) -> bool {
    cut_off(faults, old, new_from, overlap_to)
        || faults.iter().any(|f| {
            f.id.is_none()
                && f.from_us <= new_from
                && f.to_us >= old.from_us
                && overlap_to <= f.to_us
        })
}

/// Read-write lock violations: a writer's holding that overlaps any other holding (reader or
/// writer of another process) of a live holder. The older holding (smaller token) is the one
/// a fault may excuse.
pub fn check_rwlock(intervals: &[Interval], faults: &[FaultWindow]) -> Vec<String> {
    let rw: Vec<&Interval> = intervals
        .iter()
        .filter(|i| i.role == RWLOCK_READ || i.role == RWLOCK_WRITE)
        .collect();
    let mut out = Vec::new();
    for w in rw.iter().filter(|i| i.role == RWLOCK_WRITE) {
        for o in &rw {
            if o.id == w.id || (o.role == RWLOCK_WRITE && o.token >= w.token) {
                // Writer pairs are counted once (and checked by `check` too).
                continue;
            }
            let (old, new) = if o.token < w.token {
                (*o, *w)
            } else {
                (*w, *o)
            };
            let from = old.from_us.max(new.from_us);
            let to = old.to_us.min(new.to_us);
            if from < to && !excused(faults, old, new.from_us, to) {
                out.push(format!(
                    "{} {} (token {}, {}..{} {}) overlaps {} {} (token {}, {}..{} {}) by {} us",
                    old.role,
                    old.id,
                    old.token,
                    old.from_us,
                    old.to_us,
                    old.end,
                    new.role,
                    new.id,
                    new.token,
                    new.from_us,
                    new.to_us,
                    new.end,
                    to - from
                ));
            }
        }
    }
    out
}

/// Whether `i`'s grant was decided before its process was stopped and printed only after the
/// resume, and the holding ended within [`RESUME_GRACE_US`] of the resume: the lease may have
/// ended with the session while the process was stopped, and the process believed it held only
/// until its first round trip told it otherwise — or until it released after its few ticks,
/// which can come first. Like the older holder's excuse in [`cut_off`], it does not count
/// against the leases granted while it was stopped. Churn found both: on Consul a lease
/// printed 0.5 ms into the resume of a 2.5 s stop (then `Lost`), on ZooKeeper one printed
/// 0.2 ms into the resume (its end not in the dump).
fn stale_grant(faults: &[FaultWindow], i: &Interval) -> bool {
    faults.iter().any(|f| {
        f.id.as_deref() == Some(i.id.as_str())
            && f.from_us <= i.from_us
            && stopped_after_asking(f, i, i.to_us)
    })
}

/// Semaphore violations: a moment (a grant) at which more than `limit` live holders believed
/// they held a lease. A holding that started earlier counts unless a fault excuses it.
pub fn check_semaphore(
    intervals: &[Interval],
    faults: &[FaultWindow],
    limit: usize,
) -> Vec<String> {
    let leases: Vec<&Interval> = intervals.iter().filter(|i| i.role == SEMAPHORE).collect();
    let mut out = Vec::new();
    for new in &leases {
        let t = new.from_us;
        let live: Vec<&&Interval> = leases
            .iter()
            .filter(|o| o.from_us <= t && t < o.to_us || o.id == new.id && o.token == new.token)
            .filter(|o| {
                if o.id == new.id && o.token == new.token {
                    !stale_grant(faults, new)
                } else {
                    !excused(faults, o, t, o.to_us.min(new.to_us))
                }
            })
            .collect();
        if live.len() > limit {
            let who: Vec<String> = live
                .iter()
                .map(|o| format!("{}:{}", o.id, o.token))
                .collect();
            out.push(format!(
                "{} live lease holders of {limit} at {t}: {}",
                live.len(),
                who.join(", ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(t: u64, id: &str, event: Event) -> Record {
        Record {
            t_us: t,
            id: id.into(),
            event,
        }
    }
    fn granted(t: u64) -> Event {
        Event::Granted {
            role: "election".into(),
            token: t,
        }
    }
    fn lost(t: u64) -> Event {
        Event::Lost {
            role: "election".into(),
            token: t,
        }
    }

    /// CI (churn on Consul): a read lock decided before a 2.5 s stop, printed 8.7 ms into the
    /// resume after records of the process's other roles, lost 4.6 ms later, overlapping a
    /// writer granted during the stop. Its ask is the previous record of its own loop (the
    /// rwlock's), before the stop: excused. A reader that asked after the resume is not.
    #[test]
    fn a_grant_asked_before_a_stop_is_timed_by_its_own_loop() {
        let ev = |role: &str, granted: bool, token| match granted {
            true => Event::Granted {
                role: role.into(),
                token,
            },
            false => Event::Releasing {
                role: role.into(),
                token,
            },
        };
        let lost = |role: &str, token| Event::Lost {
            role: role.into(),
            token,
        };
        let stop = FaultWindow {
            id: Some("c4".into()),
            kind: "sigstop".into(),
            from_us: 100,
            to_us: 2_600,
        };
        let history = |rwlock_before: u64| {
            vec![
                rec(rwlock_before, "c4", ev("rwlock-write", false, 1)),
                rec(
                    50,
                    "c4",
                    Event::Campaigning {
                        role: "lock".into(),
                    },
                ),
                rec(1_000, "c7", ev("rwlock-write", true, 5)),
                rec(
                    2_605,
                    "c4",
                    Event::Campaigning {
                        role: "election".into(),
                    },
                ),
                rec(2_609, "c4", ev("rwlock-read", true, 3)),
                rec(2_614, "c4", lost("rwlock-read", 3)),
                rec(3_000, "c7", ev("rwlock-write", false, 5)),
            ]
        };
        let ivs = intervals(&history(40), 5_000);
        let read = ivs.iter().find(|i| i.role == RWLOCK_READ).unwrap();
        assert_eq!(read.asked_us, 40);
        assert!(check_rwlock(&ivs, std::slice::from_ref(&stop)).is_empty());
        // The rwlock loop's previous record after the resume: the ask came after the stop.
        let ivs = intervals(&history(2_601), 5_000);
        assert_eq!(check_rwlock(&ivs, &[stop]).len(), 1);
    }

    #[test]
    fn clean_handover_passes() {
        let r = vec![
            rec(10, "a", granted(1)),
            rec(
                20,
                "a",
                Event::Releasing {
                    role: "election".into(),
                    token: 1,
                },
            ),
            rec(25, "b", granted(2)),
        ];
        let rep = check(&r, &[], &BTreeMap::new(), 100);
        assert!(rep.ok(), "{rep:?}");
        assert_eq!(rep.grants["election"], 2);
    }

    #[test]
    fn overlap_without_fault_is_found_and_with_fault_is_fenced() {
        let r = vec![
            rec(10, "a", granted(1)),
            rec(25, "b", granted(2)),
            rec(40, "a", lost(1)),
        ];
        let rep = check(&r, &[], &BTreeMap::new(), 100);
        assert_eq!(rep.overlaps.len(), 1, "{rep:?}");
        let stop = FaultWindow {
            id: Some("a".into()),
            kind: "sigstop".into(),
            from_us: 15,
            to_us: 35,
        };
        let rep = check(&r, &[stop], &BTreeMap::new(), 100);
        assert!(rep.ok(), "{rep:?}");
        assert_eq!(rep.fenced_overlaps, 1);
    }

    /// An older holder that reported its hold `Suspended` before the newer grant overlaps
    /// it within the policy (counted apart); one that reported `Holding` again does not.
    #[test]
    fn a_suspended_holder_overlaps_within_its_policy_and_a_holding_one_does_not() {
        let hold = |state: &str| Event::HoldState {
            role: "election".into(),
            token: 1,
            state: state.into(),
        };
        let suspended = vec![
            rec(10, "a", granted(1)),
            rec(20, "a", hold("Suspended")),
            rec(25, "b", granted(2)),
            rec(40, "a", lost(1)),
        ];
        let rep = check(&suspended, &[], &BTreeMap::new(), 100);
        assert!(rep.ok(), "{rep:?}");
        assert_eq!(
            (rep.suspended_overlaps, rep.max_suspended_overlap_us),
            (1, 15)
        );
        assert_eq!(rep.fenced_overlaps, 0);
        let holding_again = vec![
            rec(10, "a", granted(1)),
            rec(20, "a", hold("Suspended")),
            rec(22, "a", hold("Holding")),
            rec(25, "b", granted(2)),
            rec(40, "a", lost(1)),
        ];
        let rep = check(&holding_again, &[], &BTreeMap::new(), 100);
        assert_eq!(rep.overlaps.len(), 1, "{rep:?}");
        assert!(rep.overlaps[0].contains("hold Holding at 22"), "{rep:?}");
    }

    #[test]
    fn server_fault_excuses_an_overlap_only_within_its_grace() {
        let r = vec![
            rec(10, "a", granted(1)),
            rec(25, "b", granted(2)),
            rec(40, "a", lost(1)),
        ];
        let pause = |to_us| FaultWindow {
            id: None,
            kind: "server_pause".into(),
            from_us: 15,
            to_us,
        };
        let rep = check(&r, &[pause(45)], &BTreeMap::new(), 100);
        assert!(rep.ok(), "{rep:?}");
        assert_eq!(rep.server_fault_overlaps, 1);
        assert_eq!(rep.max_server_fault_overlap_us, 15);
        // The old holder still believed after the grace ended: a violation.
        let rep = check(&r, &[pause(35)], &BTreeMap::new(), 100);
        assert_eq!(rep.overlaps.len(), 1, "{rep:?}");
    }

    fn iv(role: &str, id: &str, token: u64, from_us: u64, to_us: u64) -> Interval {
        Interval {
            role: role.into(),
            id: id.into(),
            token,
            from_us,
            asked_us: from_us,
            to_us,
            end: "released",
        }
    }

    #[test]
    fn rwlock_readers_share_and_a_writer_is_alone() {
        let ok = [
            iv(RWLOCK_READ, "a", 1, 10, 50),
            iv(RWLOCK_READ, "b", 2, 20, 60),
            iv(RWLOCK_WRITE, "c", 3, 61, 70),
        ];
        assert!(check_rwlock(&ok, &[]).is_empty());
        let r = vec![rec(
            10,
            "a",
            Event::Granted {
                role: RWLOCK_READ.into(),
                token: 1,
            },
        )];
        assert!(
            check(&r, &[], &BTreeMap::new(), 100).ok(),
            "readers are not exclusive"
        );
        let bad = [
            iv(RWLOCK_READ, "a", 1, 10, 50),
            iv(RWLOCK_WRITE, "c", 3, 40, 70),
        ];
        assert_eq!(check_rwlock(&bad, &[]).len(), 1);
        let stop = FaultWindow {
            id: Some("a".into()),
            kind: "sigstop".into(),
            from_us: 15,
            to_us: 35,
        };
        assert!(check_rwlock(&bad, &[stop]).is_empty());
    }

    /// A writer stopped after it asked and before it printed its grant (the grant was decided
    /// before the stop): its overlap with readers granted while it was stopped is excused only
    /// while it ends within the grace after the resume; one that asked after the resume is not.
    #[test]
    fn a_grant_printed_after_a_stop_is_excused_within_the_grace() {
        let g = RESUME_GRACE_US;
        let stop = FaultWindow {
            id: Some("w".into()),
            kind: "sigstop".into(),
            from_us: 20,
            to_us: 100,
        };
        let writer = |asked_us, to_us| Interval {
            asked_us,
            ..iv(RWLOCK_WRITE, "w", 1, 110, to_us)
        };
        let reader = iv(RWLOCK_READ, "r", 2, 50, 10 * g);
        let faults = [stop];
        let ok = [writer(10, 114), reader.clone()];
        assert!(check_rwlock(&ok, &faults).is_empty());
        let late = [writer(10, 100 + g + 1), reader.clone()];
        assert_eq!(check_rwlock(&late, &faults).len(), 1);
        let asked_after = [writer(105, 114), reader];
        assert_eq!(check_rwlock(&asked_after, &faults).len(), 1);
    }

    #[test]
    fn semaphore_overbooking_is_found() {
        let ok = [
            iv(SEMAPHORE, "a", 1, 10, 50),
            iv(SEMAPHORE, "b", 2, 20, 60),
            iv(SEMAPHORE, "c", 3, 50, 70),
        ];
        assert!(check_semaphore(&ok, &[], 2).is_empty());
        assert_eq!(check_semaphore(&ok, &[], 1).len(), 2);
    }

    /// A lease decided before a stop and printed after the resume, ended (lost or released)
    /// within the grace, does not count against the leases granted while it was stopped; one
    /// held beyond the grace, or asked for after the stop, does.
    #[test]
    fn a_lease_printed_after_a_stop_is_stale_within_the_grace() {
        let stop = FaultWindow {
            id: Some("s".into()),
            kind: "sigstop".into(),
            from_us: 20,
            to_us: 100,
        };
        let stale = |asked_us, to_us, end| Interval {
            asked_us,
            end,
            ..iv(SEMAPHORE, "s", 1, 99, to_us)
        };
        let others = [
            iv(SEMAPHORE, "a", 2, 40, 10 * RESUME_GRACE_US),
            iv(SEMAPHORE, "b", 3, 50, 10 * RESUME_GRACE_US),
        ];
        let faults = [stop];
        let with = |i: Interval| [i, others[0].clone(), others[1].clone()];
        let count = |i: Interval| check_semaphore(&with(i), &faults, 2).len();
        assert_eq!(count(stale(10, 120, "lost")), 0);
        assert_eq!(count(stale(10, 120, "released")), 0);
        assert_eq!(count(stale(10, 101 + RESUME_GRACE_US, "released")), 1);
        assert_eq!(count(stale(30, 120, "lost")), 1);
    }

    #[test]
    fn duplicate_and_inverted_tokens_are_found() {
        let r = vec![
            rec(10, "a", granted(5)),
            rec(20, "a", lost(5)),
            rec(30, "b", granted(5)),
        ];
        assert_eq!(
            check(&r, &[], &BTreeMap::new(), 100).duplicate_tokens.len(),
            1
        );
        let r = vec![
            rec(10, "a", granted(5)),
            rec(20, "a", lost(5)),
            rec(30, "b", granted(4)),
        ];
        assert_eq!(check(&r, &[], &BTreeMap::new(), 100).inversions.len(), 1);
    }
}
