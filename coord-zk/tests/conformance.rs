//! The shared conformance suite against a real ZooKeeper server (from coord-testkit).

mod zk {
    coord_core::conformance_tests!(
        factory = coord_zk::testing::harness,
        attr = #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    );
}

/// The registry and group tests again in the native layout (`?registry=native`): the suite
/// above runs them in the default layout, coord's generic one.
mod zk_native {
    coord_core::conformance_registry_tests!(
        factory = coord_zk::testing::native_harness,
        attr = #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    );
}
