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

/// The election and lock tests again in etcd's `concurrency` dialect (keys
/// `<prefix>/<lease hex>`, CreateRevision order), so that the dialect is not a weaker election.
mod etcd_concurrency {
    async fn factory(test: &str) -> Option<std::sync::Arc<dyn coord_core::conformance::Harness>> {
        coord_core::conformance::DialectHarness::wrap(
            coord_etcd::testing::harness(test).await,
            coord_core::dialect::Dialect::EtcdConcurrency,
        )
    }
    coord_core::dialect_conformance_tests!(
        factory = factory,
        attr = #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    );
}
