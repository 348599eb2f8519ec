//! A tour of the kernel: several in-process nodes share one store and show sessions,
//! ephemeral keys, sequential keys and watches at work.
//!
//! ```text
//! cargo run --example tour                 # in memory
//! cargo run --features zk --example tour -- zk://127.0.0.1:2181/tour
//! ```

use std::time::Duration;

use coord::{ChildrenEvent, CreateMode, KeyEvent, Path};
use futures::StreamExt;

#[tokio::main]
async fn main() -> coord::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "mem://tour/demo?session_ttl=1s".to_owned());
    println!("connecting three nodes to {url}");
    let observer = coord::connect(&url).await?;
    let node_a = coord::connect(&url).await?;
    let node_b = coord::connect(&url).await?;

    let members = Path::new("/members")?;
    coord::create_parents(&**observer.backend(), &members).await?;

    // The observer watches the members folder: registered atomically with the listing.
    let (now, mut events) = observer.watch_children(&members).await?;
    println!("observer: members now {now:?}; watching for changes");
    let printer = tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ChildrenEvent::Changed(list)) => {
                    println!("observer: members changed -> {list:?}")
                }
                Ok(other) => println!("observer: {other:?}"),
                Err(e) => println!("observer: watch error {e}"),
            }
        }
    });

    // Each node opens a session and registers an ephemeral, sequential member key.
    let sa = node_a.session().await?;
    let sb = node_b.session().await?;
    let a = sa
        .create(&members.join("m-")?, b"node A", CreateMode::Sequential)
        .await?;
    println!(
        "node A (session {}): created {} (sequence {:?})",
        sa.id(),
        a.path,
        a.sequence
    );
    let b = sb
        .create(&members.join("m-")?, b"node B", CreateMode::Sequential)
        .await?;
    println!(
        "node B (session {}): created {} (sequence {:?})",
        sb.id(),
        b.path,
        b.sequence
    );
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Compare-and-set on a persistent key, watched by the observer.
    let config = Path::new("/config")?;
    let v0 = observer
        .create(&config, b"workers=2", CreateMode::Exact)
        .await?
        .stat
        .version;
    let (_, mut cfg_events) = observer.watch(&config).await?;
    node_a.set(&config, b"workers=3", Some(v0)).await?;
    if let Some(Ok(KeyEvent::Changed(n))) = cfg_events.next().await {
        println!(
            "observer: /config changed to {:?} ({})",
            String::from_utf8_lossy(&n.value),
            n.stat.version
        );
    }
    match node_b.set(&config, b"workers=4", Some(v0)).await {
        Err(e) => println!("node B: stale compare-and-set refused as expected: {e}"),
        Ok(_) => println!("node B: stale write accepted?!"),
    }

    // Node A closes its session: its ephemeral goes at once. Node B's session expires (on mem
    // we simulate a crash: no more heartbeats) and its key goes after the TTL.
    println!("node A closes its session");
    sa.close().await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Some(ms) = sb.as_any().downcast_ref::<coord::mem::MemSession>() {
        println!("node B crashes; its session expires in {:?}", sb.ttl());
        ms.crash();
        let mut states = sb.states();
        while let Some(st) = states.next().await {
            println!("node B session: {st:?}");
        }
    } else {
        sb.close().await?;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!(
        "members at the end: {:?}",
        observer.children(&members).await?
    );
    printer.abort();
    Ok(())
}
