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
