//! The conformance suite: public async test functions that every backend runs unchanged.
//!
//! A backend's test file provides a [`Harness`] factory and instantiates the whole suite
//! with [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! mod mem {
//!     coord_core::conformance_tests!(
//!         factory = coord_core::conformance::mem_harness,
//!         attr = #[tokio::test(start_paused = true)]
//!     );
//! }
//! ```
//!
//! Every test is then named `<backend>::<test>` (`cargo test mem::`), and
//! `<backend>::every_conformance_test_is_listed` fails naming any test function (a top-level
//! `pub async fn` of the suite's modules) that the macro's list leaves out, so that none can
//! silently never run. The factory takes the test's name and returns `None` only when the
//! backend is unavailable and not required (it prints the loud skip line itself); with
//! `COORD_REQUIRE_BACKENDS=1` it must panic instead.
//!
//! The test functions panic on failure (they are tests). Every wait is bounded by
//! [`Harness::patience`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};

use crate::dialect::Dialect;
use crate::kernel::{Backend, Session};
use crate::mem::{MemBackend, MemSession};
use crate::Client;

pub mod barrier;
pub mod fencing;
pub mod kernel;
pub mod partitioner;
pub mod recipes;
pub mod rwsem;
pub mod tree_cache;

/// What the suite needs from a backend under test.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// A new client in this test's namespace. All clients of one harness share the namespace
    /// and see each other's keys.
    async fn client(&self) -> Arc<dyn Backend>;
    /// A new client in another fresh namespace on the same server.
    async fn other_namespace(&self) -> Arc<dyn Backend>;
    /// Makes the server end `session` now as an expiry (not a close): its owner must see
    /// `Expired` and its ephemerals must go.
    async fn expire(&self, session: &Arc<dyn Session>);
    /// Simulates a crash of the session's client (no close): the session must expire within
    /// its TTL plus the backend's detection time. Returns false if the backend cannot.
    async fn crash(&self, session: &Arc<dyn Session>) -> bool;
    /// The longest a propagated change may take to be seen (bounds every wait of the suite).
    fn patience(&self) -> Duration;
    /// A session TTL that is short but valid on this backend (for expiry tests).
    fn short_ttl(&self) -> Duration;
    /// The dialect of the elections and locks of the suite's clients (coord's own unless a
    /// [`DialectHarness`] says otherwise).
    fn dialect(&self) -> Dialect {
        Dialect::Coord
    }
}

/// A harness whose clients make their elections and locks in another dialect: the suite's
/// election and lock tests run unchanged in that dialect
/// ([`dialect_conformance_tests!`](crate::dialect_conformance_tests)).
pub struct DialectHarness {
    inner: Arc<dyn Harness>,
    dialect: Dialect,
}

impl DialectHarness {
    /// `inner` speaking `dialect`; `None` stays `None` (the backend is unavailable).
    pub fn wrap(inner: Option<Arc<dyn Harness>>, dialect: Dialect) -> Option<Arc<dyn Harness>> {
        let inner = inner?;
        Some(Arc::new(DialectHarness { inner, dialect }))
    }
}

#[async_trait]
impl Harness for DialectHarness {
    async fn client(&self) -> Arc<dyn Backend> {
        self.inner.client().await
    }
    async fn other_namespace(&self) -> Arc<dyn Backend> {
        self.inner.other_namespace().await
    }
    async fn expire(&self, session: &Arc<dyn Session>) {
        self.inner.expire(session).await
    }
    async fn crash(&self, session: &Arc<dyn Session>) -> bool {
        self.inner.crash(session).await
    }
    fn patience(&self) -> Duration {
        self.inner.patience()
    }
    fn short_ttl(&self) -> Duration {
        self.inner.short_ttl()
    }
    fn dialect(&self) -> Dialect {
        self.dialect
    }
}

/// A [`Client`] over a new harness client (in the harness's dialect).
pub async fn client(h: &dyn Harness) -> Client {
    Client::new(h.client().await).with_default_dialect(h.dialect())
}

/// A [`Client`] whose sessions use the harness's short TTL.
pub async fn short_client(h: &dyn Harness) -> Client {
    Client::with_session_options(
        h.client().await,
        crate::SessionOptions::new().ttl(h.short_ttl()),
    )
    .with_default_dialect(h.dialect())
}

/// Awaits `f` for at most the harness's patience, panicking with `what` otherwise.
pub async fn within<T>(h: &dyn Harness, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(h.patience(), f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {:?} waiting for {what}", h.patience()),
    }
}

/// The next item of a stream within the patience (panics if it ends or times out).
pub async fn next<S: Stream + Unpin>(h: &dyn Harness, what: &str, s: &mut S) -> S::Item {
    within(h, what, s.next())
        .await
        .unwrap_or_else(|| panic!("stream ended while waiting for {what}"))
}

/// Asserts that no item arrives on `s` for `quiet`.
pub async fn assert_quiet<S: Stream + Unpin>(what: &str, s: &mut S, quiet: Duration)
where
    S::Item: std::fmt::Debug,
{
    if let Ok(Some(item)) = tokio::time::timeout(quiet, s.next()).await {
        panic!("unexpected {what}: {item:?}");
    }
}

/// Polls `check` until it returns true, within the patience.
pub async fn eventually<F, Fut>(h: &dyn Harness, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + h.patience();
    let mut pause = Duration::from_millis(5);
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not true within {:?}", h.patience());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// The harness of the in-memory backend: one private store per test.
pub struct MemHarness {
    base: MemBackend,
}

impl MemHarness {
    /// A harness over a new private store.
    pub fn new() -> MemHarness {
        MemHarness {
            base: MemBackend::new(),
        }
    }
}

impl Default for MemHarness {
    fn default() -> Self {
        MemHarness::new()
    }
}

fn mem_session(s: &Arc<dyn Session>) -> &MemSession {
    s.as_any()
        .downcast_ref::<MemSession>()
        .expect("a mem session")
}

#[async_trait]
impl Harness for MemHarness {
    async fn client(&self) -> Arc<dyn Backend> {
        Arc::new(self.base.with_namespace("/test").unwrap())
    }

    async fn other_namespace(&self) -> Arc<dyn Backend> {
        Arc::new(self.base.with_namespace("/other").unwrap())
    }

    async fn expire(&self, session: &Arc<dyn Session>) {
        mem_session(session).expire_now();
    }

    async fn crash(&self, session: &Arc<dyn Session>) -> bool {
        mem_session(session).crash();
        true
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(30)
    }

    fn short_ttl(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// The factory the root tests use for `mem::…`.
pub async fn mem_harness(_test: &str) -> Option<Arc<dyn Harness>> {
    Some(Arc::new(MemHarness::new()))
}

/// Instantiates every conformance test for one backend.
///
/// `factory` is an `async fn(&str) -> Option<Arc<dyn Harness>>`; `attr` the test attribute
/// (for example `#[tokio::test(start_paused = true)]` for mem, a multi-thread runtime for
/// real servers).
#[macro_export]
macro_rules! conformance_tests {
    (factory = $factory:path, attr = #[$attr:meta]) => {
        $crate::__conformance_each!($factory, $attr,
            kernel: [
                path_rules_reject_before_io,
                create_and_get,
                create_under_missing_parent,
                create_duplicate,
                create_parents_helper,
                set_with_version,
                set_missing_key,
                cas_mismatch_writes_nothing,
                delete_with_stale_version,
                delete_non_empty,
                parent_replaced_between_creates,
                delete_races_child_create,
                delete_missing,
                children_sorted,
                exists_reports_stat,
                sync_then_read_sees_writes,
                value_too_large_writes_nothing,
                empty_value_roundtrip,
                binary_value_roundtrip,
                sequential_suffix_format,
                sequential_concurrent_creators,
                sequential_unique_after_delete,
                ephemeral_removed_on_close,
                ephemeral_removed_on_expiry_seen_by_watch,
                ephemeral_removed_after_crash,
                ephemeral_cannot_have_children,
                ephemeral_owner_in_stat,
                session_states_stream,
                session_create_after_close_fails,
                session_ttl_bounds,
                watch_create_change_delete_order,
                watch_no_gap_after_registration,
                watch_children_events,
                watch_children_parent_deleted,
                watch_independent_watchers,
                namespaces_isolated,
                root_children_lists_top_level,
                root_is_not_writable,
            ],
            recipes: [
                election_single_candidate,
                election_two_candidates_resign,
                election_five_candidates_order,
                election_fifty_candidates_herd,
                election_leader_session_expires,
                election_leader_closes,
                election_loss_seen_before_successor,
                election_hundred_handovers,
                election_cancelled_campaign_leaves_nothing,
                election_campaign_dropped_mid_create_leaves_nothing,
                election_old_leader_rejoins_as_candidate,
                election_observe_and_leader,
                election_campaign_fails_when_session_expires,
                election_participants_and_proclaim,
                registry_register_discover_deregister,
                registry_watch_sees_join_and_expiry,
                registry_cache_follows,
                registry_services_do_not_mix,
                registry_malformed_entry_typed_error,
                registry_reregisters_after_expiry,
                lock_mutual_exclusion,
                lock_try_lock_and_timeout,
                lock_fencing_tokens_increase,
                lock_lost_on_expiry,
                group_join_leave_watch,
                group_duplicate_member_rejected,
                group_rejoin_failure_is_visible,
                supervisor_keeps_leading_across_expiry,
                supervisor_one_leader_cancel_hands_over,
                supervisor_ending_error_stops_it,
                election_cache_follows_handovers,
                registry_close_does_not_reregister,
                client_shutdown_resigns_then_deregisters,
                registry_replaces_entry_of_crashed_session,
                registry_later_registration_takes_over,
                registry_fail_if_present,
                registry_cache_clones_and_stop,
                registry_drop_at_runtime_shutdown,
            ],
            fencing: [
                stat_created_stamps,
                fencing_tokens_survive_directory_recreation,
                guarded_write_rules,
                guarded_write_refused_after_loss,
                deposed_leader_cannot_write,
            ],
            rwsem: [
                rwlock_readers_share_writer_excludes,
                rwlock_waiting_writer_blocks_readers,
                rwlock_release_wakes_only_those_let_in,
                rwlock_try_timeout_and_cancel,
                rwlock_session_expiry,
                semaphore_limit_respected,
                semaphore_acquire_many_fifo,
                semaphore_release_wakes_few,
                semaphore_try_timeout_cancel_and_bad_input,
                semaphore_session_expiry,
            ],
            barrier: [
                barrier_set_wait_remove,
                barrier_setter_session_expiry,
                double_barrier_enter_leave,
                double_barrier_rounds,
                double_barrier_cancel_and_bad_counts,
                double_barrier_member_session_expiry,
                counter_basics,
                counter_exact_under_contention,
                counter_changes_stream,
            ],
            partitioner: [
                partitioner_members_agree_and_rebalance,
                partitioner_weights_from_member_data,
                partitioner_bad_input_writes_nothing,
                partitioner_cancel_and_shutdown,
            ],
            tree_cache: [
                tree_cache_mirrors_subtree,
                tree_cache_root_comes_and_goes,
                tree_cache_follows_session_expiry,
                tree_cache_bounds_are_typed,
                tree_cache_cancel_and_shutdown,
            ]
        );
    };
}

/// Instantiates the suite's election and lock tests (elections, locks, the supervisor, the
/// leader cache, the fenced writes of a leadership) for a harness in a dialect, typically
/// `DialectHarness::wrap(my_factory(test).await, dialect)`. With
/// `<module>::every_dialect_test_is_listed`, every `election_*`, `lock_*` and `supervisor_*`
/// test of the suite is in the list.
#[macro_export]
macro_rules! dialect_conformance_tests {
    (factory = $factory:path, attr = #[$attr:meta]) => {
        $crate::__conformance_subset!($factory, $attr,
            recipes: [
                election_single_candidate,
                election_two_candidates_resign,
                election_five_candidates_order,
                election_fifty_candidates_herd,
                election_leader_session_expires,
                election_leader_closes,
                election_loss_seen_before_successor,
                election_hundred_handovers,
                election_cancelled_campaign_leaves_nothing,
                election_campaign_dropped_mid_create_leaves_nothing,
                election_old_leader_rejoins_as_candidate,
                election_observe_and_leader,
                election_campaign_fails_when_session_expires,
                election_participants_and_proclaim,
                lock_mutual_exclusion,
                lock_try_lock_and_timeout,
                lock_fencing_tokens_increase,
                lock_lost_on_expiry,
                supervisor_keeps_leading_across_expiry,
                supervisor_one_leader_cancel_hands_over,
                supervisor_ending_error_stops_it,
                election_cache_follows_handovers,
            ],
            fencing: [
                fencing_tokens_survive_directory_recreation,
                guarded_write_refused_after_loss,
                deposed_leader_cannot_write,
            ]
        );

        /// Every election, lock and supervisor test of the suite runs in the dialect.
        #[test]
        fn every_dialect_test_is_listed() {
            $crate::conformance::assert_dialect_tests_listed(&[
                "election_single_candidate",
                "election_two_candidates_resign",
                "election_five_candidates_order",
                "election_fifty_candidates_herd",
                "election_leader_session_expires",
                "election_leader_closes",
                "election_loss_seen_before_successor",
                "election_hundred_handovers",
                "election_cancelled_campaign_leaves_nothing",
                "election_campaign_dropped_mid_create_leaves_nothing",
                "election_old_leader_rejoins_as_candidate",
                "election_observe_and_leader",
                "election_campaign_fails_when_session_expires",
                "election_participants_and_proclaim",
                "lock_mutual_exclusion",
                "lock_try_lock_and_timeout",
                "lock_fencing_tokens_increase",
                "lock_lost_on_expiry",
                "supervisor_keeps_leading_across_expiry",
                "supervisor_one_leader_cancel_hands_over",
                "supervisor_ending_error_stops_it",
                "election_cache_follows_handovers",
            ]);
        }
    };
}

/// Instantiates the registry and group tests of the suite only: for a backend's second
/// registry layout (its default layout runs them within [`conformance_tests!`]), for example
/// Consul's generic layout next to its catalog.
/// `<backend>::every_registry_test_is_listed` fails naming any `registry_*` or `group_*` test
/// function the list leaves out.
#[macro_export]
macro_rules! conformance_registry_tests {
    (factory = $factory:path, attr = #[$attr:meta]) => {
        $crate::__conformance_registry_each!(
            $factory,
            $attr,
            [
                registry_register_discover_deregister,
                registry_watch_sees_join_and_expiry,
                registry_cache_follows,
                registry_services_do_not_mix,
                registry_malformed_entry_typed_error,
                registry_reregisters_after_expiry,
                group_join_leave_watch,
                group_duplicate_member_rejected,
                group_rejoin_failure_is_visible,
                registry_close_does_not_reregister,
                client_shutdown_resigns_then_deregisters,
                registry_replaces_entry_of_crashed_session,
                registry_later_registration_takes_over,
                registry_fail_if_present,
                registry_cache_clones_and_stop,
                registry_drop_at_runtime_shutdown,
            ]
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_registry_each {
    ($factory:path, $attr:meta, [$($name:ident),* $(,)?]) => {
        $(
            #[$attr]
            async fn $name() {
                if let Some(h) = $factory(stringify!($name)).await {
                    $crate::conformance::recipes::$name(&*h).await;
                }
            }
        )*

        /// The list above has every registry and group test of the suite.
        #[test]
        fn every_registry_test_is_listed() {
            let listed = [$(concat!("recipes::", stringify!($name)),)*];
            let missing: Vec<String> = $crate::conformance::test_functions()
                .into_iter()
                .filter(|t| t.starts_with("recipes::registry_") || t.starts_with("recipes::group_"))
                .filter(|t| !listed.contains(&t.as_str()))
                .collect();
            assert!(missing.is_empty(), "registry tests missing from conformance_registry_tests!: {missing:?}");
        }
    };
}

/// Instantiates the listed tests only (no completeness check): for a dialect or backend that
/// runs a chosen part of the suite.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_subset {
    ($factory:path, $attr:meta, $($module:ident : [$($name:ident),* $(,)?]),* $(,)?) => {
        $($(
            #[$attr]
            async fn $name() {
                if let Some(h) = $factory(stringify!($name)).await {
                    $crate::conformance::$module::$name(&*h).await;
                }
            }
        )*)*
    };
}

/// Panics naming every `election_*`, `lock_*` or `supervisor_*` test of the recipes module
/// missing from `listed` (the list of
/// [`dialect_conformance_tests!`](crate::dialect_conformance_tests)).
pub fn assert_dialect_tests_listed(listed: &[&str]) {
    let missing: Vec<String> = test_functions()
        .into_iter()
        .filter_map(|t| t.strip_prefix("recipes::").map(str::to_owned))
        .filter(|t| {
            ["election_", "lock_", "supervisor_"]
                .iter()
                .any(|p| t.starts_with(p))
        })
        .filter(|t| !listed.contains(&t.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "election/lock tests missing from dialect_conformance_tests! (they would not run in \
         the dialects): {missing:?}"
    );
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_each {
    ($factory:path, $attr:meta, $($module:ident : [$($name:ident),* $(,)?]),* $(,)?) => {
        $($(
            #[$attr]
            async fn $name() {
                if let Some(h) = $factory(stringify!($name)).await {
                    $crate::conformance::$module::$name(&*h).await;
                }
            }
        )*)*

        /// The list above is complete: every test function of the suite's sources is in it.
        #[test]
        fn every_conformance_test_is_listed() {
            $crate::conformance::assert_every_test_listed(&[
                $($(concat!(stringify!($module), "::", stringify!($name)),)*)*
            ]);
        }
    };
}

/// The suite's source files, by module. Their test functions are every top-level
/// `pub async fn` (helpers there are private).
const SOURCES: &[(&str, &str)] = &[
    ("barrier", include_str!("barrier.rs")),
    ("fencing", include_str!("fencing.rs")),
    ("kernel", include_str!("kernel.rs")),
    ("partitioner", include_str!("partitioner.rs")),
    ("recipes", include_str!("recipes.rs")),
    ("rwsem", include_str!("rwsem.rs")),
    ("tree_cache", include_str!("tree_cache.rs")),
];

/// Every test function of the suite, as `module::name`, read from the sources.
pub fn test_functions() -> Vec<String> {
    SOURCES
        .iter()
        .flat_map(|(module, source)| {
            source.lines().filter_map(move |line| {
                let rest = line.strip_prefix("pub async fn ")?;
                let name = rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()?;
                Some(format!("{module}::{name}"))
            })
        })
        .collect()
}

/// Panics naming every test function of the suite's sources that `listed` (the list of
/// [`conformance_tests!`](crate::conformance_tests), as `module::name`) leaves out, any name
/// listed twice, and any module of the suite whose source is not scanned. A test missing from
/// the list would silently never run; [`conformance_tests!`](crate::conformance_tests) runs
/// this check as `<backend>::every_conformance_test_is_listed`.
pub fn assert_every_test_listed(listed: &[&str]) {
    let modules: Vec<&str> = include_str!("mod.rs")
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
        .collect();
    let scanned: Vec<&str> = SOURCES.iter().map(|(m, _)| *m).collect();
    assert_eq!(
        modules, scanned,
        "every module of the conformance suite must be in conformance::SOURCES"
    );
    let found = test_functions();
    let missing: Vec<&String> = found
        .iter()
        .filter(|t| !listed.contains(&t.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "conformance tests missing from the list of conformance_tests! (they would never run): \
         {missing:?}"
    );
    // The other way round keeps the scan honest: a scan that finds nothing fails here.
    let unseen: Vec<&&str> = listed
        .iter()
        .filter(|t| !found.iter().any(|f| f == *t))
        .collect();
    assert!(
        unseen.is_empty(),
        "listed conformance tests not found as `pub async fn` in the suite's sources: {unseen:?}"
    );
    let mut seen = std::collections::HashSet::new();
    let twice: Vec<&&str> = listed.iter().filter(|t| !seen.insert(**t)).collect();
    assert!(
        twice.is_empty(),
        "conformance tests listed twice: {twice:?}"
    );
}
