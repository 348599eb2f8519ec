//! The shared conformance suite against a real Consul agent.

mod consul {
    coord_core::conformance_tests!(
        factory = coord_consul::testing::harness,
        attr = #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    );
}
