//! The shared conformance suite against a real ZooKeeper server (from coord-testkit).

mod zk {
    coord_core::conformance_tests!(
        factory = coord_zk::testing::harness,
        attr = #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    );
}
