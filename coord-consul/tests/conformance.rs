//! The shared conformance suite against a real Consul agent.

mod consul {
    coord_core::conformance_tests!(
        factory = coord_consul::testing::harness,
        attr = #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    );
}

/// The registry and group tests again in the generic layout (`?registry=generic`): the
/// suite above runs them in the default layout, the agent's service catalog.
mod consul_generic {
    coord_core::conformance_registry_tests!(
        factory = coord_consul::testing::generic_harness,
        attr = #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    );
}

/// The election and lock tests again in Consul's single-key dialects, all but three that a
/// single key cannot satisfy by design (see `EXCLUDED`): the rest of the suite holds, so the
/// dialects are not weaker elections otherwise.
macro_rules! single_key_dialect {
    ($module:ident, $dialect:ident) => {
        mod $module {
            async fn factory(
                test: &str,
            ) -> Option<std::sync::Arc<dyn coord_core::conformance::Harness>> {
                coord_core::conformance::DialectHarness::wrap(
                    coord_consul::testing::harness(test).await,
                    coord_core::dialect::Dialect::$dialect,
                )
            }
            coord_core::__conformance_subset!(
                factory,
                tokio::test(flavor = "multi_thread", worker_threads = 2),
                recipes: [
                    election_single_candidate,
                    election_two_candidates_resign,
                    election_leader_session_expires,
                    election_leader_closes,
                    election_loss_seen_before_successor,
                    election_hundred_handovers,
                    election_cancelled_campaign_leaves_nothing,
                    election_campaign_dropped_mid_create_leaves_nothing,
                    election_old_leader_rejoins_as_candidate,
                    election_observe_and_leader,
                    election_campaign_fails_when_session_expires,
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

            /// What one Consul key cannot do: every waiter blocks on the key (a release wakes
            /// them all: no herd-freedom), they race for it (no first-come order), and Consul
            /// keeps no list of them (`participants()` shows the holder only).
            const EXCLUDED: [&str; 3] = [
                "election_fifty_candidates_herd",
                "election_five_candidates_order",
                "election_participants_and_proclaim",
            ];

            /// Every other election, lock and supervisor test of the suite runs in the dialect.
            #[test]
            fn every_dialect_test_is_listed_or_excluded() {
                let mut listed = vec![
                    "election_single_candidate",
                    "election_two_candidates_resign",
                    "election_leader_session_expires",
                    "election_leader_closes",
                    "election_loss_seen_before_successor",
                    "election_hundred_handovers",
                    "election_cancelled_campaign_leaves_nothing",
                    "election_campaign_dropped_mid_create_leaves_nothing",
                    "election_old_leader_rejoins_as_candidate",
                    "election_observe_and_leader",
                    "election_campaign_fails_when_session_expires",
                    "lock_mutual_exclusion",
                    "lock_try_lock_and_timeout",
                    "lock_fencing_tokens_increase",
                    "lock_lost_on_expiry",
                    "supervisor_keeps_leading_across_expiry",
                    "supervisor_one_leader_cancel_hands_over",
                    "supervisor_ending_error_stops_it",
                    "election_cache_follows_handovers",
                ];
                listed.extend(EXCLUDED);
                coord_core::conformance::assert_dialect_tests_listed(&listed);
            }
        }
    };
}

single_key_dialect!(consul_lock, ConsulLock);
single_key_dialect!(consul_election, ConsulElection);
