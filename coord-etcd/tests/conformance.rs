//! The shared conformance suite against a real etcd (`cargo test -p coord-etcd --test conformance`).

mod etcd {
    coord_core::conformance_tests!(
        factory = coord_etcd::testing::harness,
        attr = #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    );
}
