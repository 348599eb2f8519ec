//! The shared conformance suite against a real etcd (`cargo test -p coord-etcd --test conformance`).

mod etcd {
    coord_core::conformance_tests!(
        factory = coord_etcd::testing::harness,
        attr = #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    );
}

/// The registry and group tests again in the native layout (`?registry=native`): the suite
/// above runs them in the default layout, coord's generic one.
mod etcd_native {
    coord_core::conformance_registry_tests!(
        factory = coord_etcd::testing::native_harness,
        attr = #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    );
}
