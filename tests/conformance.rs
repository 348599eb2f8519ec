//! The shared conformance suite, instantiated for every backend compiled in.
//! Test names carry the backend: `cargo test mem::` runs one backend.

/// The in-memory backend, under tokio's paused clock (TTLs elapse instantly).
mod mem {
    coord_core::conformance_tests!(
        factory = coord_core::conformance::mem_harness,
        attr = #[tokio::test(start_paused = true)]
    );
}
