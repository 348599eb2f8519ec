//! The shared conformance suite, instantiated for every backend compiled in.
//! Test names carry the backend: `cargo test mem::` runs one backend.

/// The in-memory backend, under tokio's paused clock (TTLs elapse instantly).
mod mem {
    coord_core::conformance_tests!(
        factory = coord_core::conformance::mem_harness,
        attr = #[tokio::test(start_paused = true)]
    );
}

/// The peer dialects are refused on mem with a typed error before any I/O.
#[tokio::test]
async fn peer_dialects_unsupported_on_mem() {
    use coord_core::dialect::Dialect;
    let client = coord_core::Client::new(std::sync::Arc::new(coord_core::mem::MemBackend::new()));
    for d in Dialect::ALL.into_iter().filter(|d| *d != Dialect::Coord) {
        let e = client.election_with("x", d).unwrap();
        let r = e.campaign(b"v").await;
        assert!(
            matches!(r, Err(coord_core::Error::Unsupported(_))),
            "{d}: {r:?}"
        );
        assert!(matches!(
            e.leader().await,
            Err(coord_core::Error::Unsupported(_))
        ));
        let l = client.lock_with("x", d).unwrap();
        assert!(matches!(
            l.try_lock().await,
            Err(coord_core::Error::Unsupported(_))
        ));
        // Nothing was written.
        assert!(client
            .children(&coord_core::Path::root())
            .await
            .unwrap()
            .is_empty());
    }
}
