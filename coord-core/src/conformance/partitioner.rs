//! The partitioner over a group's members — on every backend.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;

use super::{client, eventually, next, within, Harness};
use crate::partitioner::{weight_data, Assignment, Partitioner, MAX_PARTITIONS};
use crate::registry::CacheState;
use crate::{Client, Error, Path};

const PARTITIONS: u32 = 64;

/// Waits until `p` sees exactly the members `ids`; its assignment then.
async fn sees(h: &dyn Harness, p: &Partitioner, ids: &[&str]) -> Arc<Assignment> {
    let want: Vec<&str> = ids.to_vec();
    within(h, &format!("the partitioner to see {want:?}"), async {
        loop {
            let a = p.assignment();
            let now: Vec<&str> = a.members().iter().map(|(id, _)| id.as_str()).collect();
            if now == want {
                return a;
            }
            assert!(
                p.changed().await,
                "the partitioner stopped: {:?}",
                p.state()
            );
        }
    })
    .await
}

/// Three members that joined with the partitioner each compute the same assignment; their
/// `my_partitions` cover every partition exactly once; `owner` agrees with it. A leave (the
/// member's client closes, as a dying process's session ends) moves only the leaver's
/// partitions, a join only the joiner's, and `changes()` reports each new assignment.
pub async fn partitioner_members_agree_and_rebalance(h: &dyn Harness) {
    let clients: Vec<Client> = futures::future::join_all((0..3).map(|_| client(h))).await;
    let mut parts = Vec::new();
    let mut members = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (m, p) = c
            .group("pool")
            .unwrap()
            .join_partitioned(&format!("m{i}"), &weight_data(1), PARTITIONS)
            .await
            .unwrap();
        members.push(m);
        parts.push(p);
    }
    let mut assignments = Vec::new();
    for p in &parts {
        assignments.push(sees(h, p, &["m0", "m1", "m2"]).await);
    }
    assert!(assignments.windows(2).all(|w| w[0] == w[1]));
    let mut all = BTreeSet::new();
    for p in &parts {
        for x in p.my_partitions() {
            assert!(all.insert(x), "partition {x} assigned twice");
        }
    }
    assert_eq!(all, (0..PARTITIONS).collect::<BTreeSet<u32>>());
    for key in ["order-1", "order-2", "customer-9"] {
        let owner = parts[0].owner(key.as_bytes()).unwrap();
        let mine = parts
            .iter()
            .position(|p| p.my_partitions().contains(&p.partition_of(key.as_bytes())))
            .unwrap();
        assert_eq!(owner, format!("m{mine}"));
    }

    // An observer (no "me") follows the changes.
    let observer = client(h).await;
    let watcher = observer
        .group("pool")
        .unwrap()
        .partitioner(PARTITIONS)
        .await
        .unwrap();
    assert!(watcher.my_partitions().is_empty());
    let before = sees(h, &watcher, &["m0", "m1", "m2"]).await;
    let mut changes = Box::pin(watcher.changes());

    // m2 dies: only its partitions move.
    clients[2].close().await.unwrap();
    let after = loop {
        let a = next(h, "the assignment after m2 left", &mut changes).await;
        if a.members().len() == 2 {
            break a;
        }
    };
    let moved = after.moved_from(&before);
    assert_eq!(moved, before.partitions_of("m2"));
    let survivors = sees(h, &parts[0], &["m0", "m1"]).await;
    assert_eq!(*survivors, *after);

    // m3 joins: only partitions it takes move.
    let late = client(h).await;
    let (_m3, p3) = late
        .group("pool")
        .unwrap()
        .join_partitioned("m3", b"", PARTITIONS)
        .await
        .unwrap();
    let joined = loop {
        let a = next(h, "the assignment after m3 joined", &mut changes).await;
        if a.members().len() == 3 {
            break a;
        }
    };
    let moved = joined.moved_from(&after);
    assert!(!moved.is_empty());
    assert_eq!(moved, joined.partitions_of("m3"));
    assert_eq!(*sees(h, &p3, &["m0", "m1", "m3"]).await, *joined);
    assert_eq!(p3.my_partitions(), moved);
    drop(members);
}

/// Weights come from the members' data: a member of weight 3 gets about three times the
/// share of a member of weight 1, a member of weight 0 gets none, and every observer agrees.
pub async fn partitioner_weights_from_member_data(h: &dyn Harness) {
    let c = client(h).await;
    let g = c.group("weighted").unwrap();
    let _a = g.join("heavy", &weight_data(3)).await.unwrap();
    let _b = g
        .join("light", br#"{"weight":1,"zone":"b"}"#)
        .await
        .unwrap();
    let _c = g.join("idle", &weight_data(0)).await.unwrap();
    let p = g.partitioner(1024).await.unwrap();
    let a = sees(h, &p, &["heavy", "idle", "light"]).await;
    assert_eq!(
        a.members(),
        &[("heavy".into(), 3), ("idle".into(), 0), ("light".into(), 1)]
    );
    let heavy = a.partitions_of("heavy").len();
    let light = a.partitions_of("light").len();
    assert!(a.partitions_of("idle").is_empty());
    assert_eq!(heavy + light, 1024);
    assert!(heavy > 2 * light, "heavy {heavy}, light {light}");
    let other = client(h).await;
    let q = other
        .group("weighted")
        .unwrap()
        .partitioner(1024)
        .await
        .unwrap();
    assert_eq!(*sees(h, &q, &["heavy", "idle", "light"]).await, *a);
}

/// Hostile input: a partition count of 0 or above the maximum, or a bad member id, is a typed
/// error and writes nothing (not even the group's directory).
pub async fn partitioner_bad_input_writes_nothing(h: &dyn Harness) {
    let c = client(h).await;
    let g = c.group("hostile-pool").unwrap();
    for count in [0, MAX_PARTITIONS + 1, u32::MAX] {
        let r = g.partitioner(count).await;
        assert!(
            matches!(r, Err(Error::InvalidArgument(_))),
            "{count}: {r:?}"
        );
        let r = g.join_partitioned("m", b"", count).await;
        assert!(
            matches!(r, Err(Error::InvalidArgument(_))),
            "{count}: {r:?}"
        );
    }
    for id in ["a/b", "", "..", "bad\u{0}id"] {
        let r = g.join_partitioned(id, b"", 8).await;
        assert!(matches!(r, Err(Error::InvalidPath { .. })), "{id:?}: {r:?}");
    }
    assert!(c.exists(g.path()).await.unwrap().is_none());
    assert!(c
        .exists(&Path::new("/groups").unwrap())
        .await
        .unwrap()
        .is_none());
}

/// Dropping a pending `partitioner()` leaves no task behind and no member: the group is as
/// before. `Client::shutdown` stops a partitioner visibly (`Stopped(Closed)`), and its
/// `changes()` stream ends.
pub async fn partitioner_cancel_and_shutdown(h: &dyn Harness) {
    let c = client(h).await;
    let g = c.group("stoppable").unwrap();
    // The member joins through another client: the shutdown below does not remove it.
    let member = client(h).await;
    let _m = member
        .group("stoppable")
        .unwrap()
        .join("only", b"")
        .await
        .unwrap();
    // Cancelled at its first await, and again at a later one.
    for polls in [1usize, 3] {
        let mut fut = Box::pin(g.partitioner(8));
        for _ in 0..polls {
            if futures::poll!(fut.as_mut()).is_ready() {
                break; // a fast backend finished: dropping the result is the cancel then
            }
        }
        drop(fut);
    }
    assert_eq!(g.members().await.unwrap().len(), 1);
    let p = g.partitioner(8).await.unwrap().for_member("only").unwrap();
    assert_eq!(p.my_partitions(), (0..8).collect::<Vec<u32>>());
    let mut changes = Box::pin(p.changes());
    c.shutdown().await.unwrap();
    eventually(h, "the partitioner stops", || async {
        p.state() == CacheState::Stopped(Error::Closed)
    })
    .await;
    assert!(!p.changed().await);
    assert_eq!(
        within(h, "the end of changes()", changes.next()).await,
        None
    );
    // The last assignment stays readable.
    assert_eq!(p.owner(b"k").as_deref(), Some("only"));
}
