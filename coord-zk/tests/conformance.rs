//! The shared conformance suite against a real ZooKeeper server (from coord-testkit).

mod zk {
    coord_core::conformance_tests!(
        factory = coord_zk::testing::harness,
        attr = #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    );
}

/// The election and lock tests again in each ZooKeeper dialect (the peers' node names and
/// order), so that a dialect is not a weaker election.
mod dialects {
    use std::sync::Arc;

    use coord_core::conformance::{DialectHarness, Harness};
    use coord_core::dialect::Dialect;

    mod curator_lock {
        async fn factory(test: &str) -> Option<std::sync::Arc<dyn super::Harness>> {
            super::wrap(test, super::Dialect::CuratorLock).await
        }
        coord_core::dialect_conformance_tests!(
            factory = factory,
            attr = #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        );
    }

    mod curator_latch {
        async fn factory(test: &str) -> Option<std::sync::Arc<dyn super::Harness>> {
            super::wrap(test, super::Dialect::CuratorLatch).await
        }
        coord_core::dialect_conformance_tests!(
            factory = factory,
            attr = #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        );
    }

    mod kazoo {
        async fn factory(test: &str) -> Option<std::sync::Arc<dyn super::Harness>> {
            super::wrap(test, super::Dialect::Kazoo).await
        }
        coord_core::dialect_conformance_tests!(
            factory = factory,
            attr = #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        );
    }

    async fn wrap(test: &str, dialect: Dialect) -> Option<Arc<dyn Harness>> {
        DialectHarness::wrap(coord_zk::testing::harness(test).await, dialect)
    }
}
