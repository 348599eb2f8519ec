//! Item 11: the shared counter's adds per second, alone and under contention.

use std::time::Instant;

use coord::Client;

use crate::cx::{within, Cx, STEP};
use crate::stats::{Res, Row, Verdict};

/// Clients adding at once in the contended phase.
const CLIENTS: usize = 8;

/// `clients` clients (each its own connection), each doing `adds` sequential `add(1)` on one
/// counter after one untimed add; the adds per second over the timed part, and the final value
/// checked exact.
async fn phase(cx: &Cx, name: &str, clients: usize, adds: usize) -> Res<f64> {
    let mut counters = Vec::new();
    for _ in 0..clients {
        let backend = coord::connect_backend(&cx.url).await?;
        let counter = Client::new(backend).counter(name)?;
        // Warm-up, not timed: the connection, and the counter's node and parents.
        counter.add(1).await?;
        counters.push(counter);
    }
    let start = Instant::now();
    let tasks: Vec<_> = counters
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                for _ in 0..adds {
                    c.add(1).await?;
                }
                Ok::<(), coord::Error>(())
            })
        })
        .collect();
    for t in tasks {
        within(STEP * 5, "adds", t).await???;
    }
    let secs = start.elapsed().as_secs_f64();
    let total = Client::new(cx.backend.clone()).counter(name)?.get().await?;
    if total != (clients * (adds + 1)) as i64 {
        return Err(format!("counter at {total} after {} adds", clients * (adds + 1)).into());
    }
    Ok((clients * adds) as f64 / secs.max(1e-9))
}

/// Item 11: adds per second of [`coord::counter::Counter::add`] with 8 clients on one counter,
/// against one client alone (the uncontended rate: one read and one compare-and-set each).
pub async fn adds_per_second(cx: &Cx) -> Res<Vec<Row>> {
    let adds = cx.sizes.counter_adds;
    let alone = phase(cx, "alone", 1, adds).await?;
    let contended = phase(cx, "contended", CLIENTS, adds).await?;
    Ok(vec![Row::new(
        11,
        format!(
            "counter add(1): {CLIENTS} clients × {adds} adds on one counter, adds/s (exact total checked)"
        ),
        format!("{contended:.0} adds/s"),
        format!("{alone:.0} adds/s (1 client × {adds})"),
        format!("{:.2}", contended / alone.max(1e-9)),
        "(contended ÷ alone)",
        Verdict::Info,
    )])
}
