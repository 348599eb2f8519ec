//! What users reach through `coord::` alone, without depending on coord-core or an adapter.

use std::sync::Arc;

use coord::mem::MemSession;
use coord::recipes::{HoldState, SuspendPolicy};
use coord::{Client, CreateMode, Path, Session, SessionOptions};

/// Each enabled adapter is a module of the facade, with its backend-specific session methods.
#[test]
fn adapter_modules_under_their_features() {
    #[cfg(feature = "zk")]
    {
        let _: fn(&coord::zk::ZkSession) -> bool = coord::zk::ZkSession::crash;
        let _ = std::any::type_name::<coord::zk::ZkBackend>();
    }
    #[cfg(feature = "etcd")]
    {
        let _: fn(&coord::etcd::EtcdSession) -> i64 = coord::etcd::EtcdSession::lease_id;
        let _ = std::any::type_name::<coord::etcd::EtcdBackend>();
    }
    #[cfg(feature = "consul")]
    {
        let _: fn(&coord::consul::ConsulSession) = coord::consul::ConsulSession::crash;
        let _ = std::any::type_name::<coord::consul::ConsulBackend>();
    }
}

/// The recipes, the kernel types and the mem backend's session, by their facade names.
#[tokio::test(start_paused = true)]
async fn recipes_and_kernel_through_the_facade() {
    let client: Client = coord::connect("mem://facade/app").await.unwrap();
    let session: Arc<dyn Session> = client.open_session(SessionOptions::new()).await.unwrap();
    let path = Path::new("/k").unwrap();
    session
        .create(&path, b"v", CreateMode::Exact)
        .await
        .unwrap();
    assert!(session.as_any().downcast_ref::<MemSession>().is_some());
    let election: coord::election::Election = client
        .election("e")
        .unwrap()
        .with_suspend_policy(SuspendPolicy::TolerateSuspend);
    let leadership = election.campaign(b"me").await.unwrap();
    assert_eq!(leadership.state(), HoldState::Holding);
    leadership.resign().await.unwrap();
    let membership = client.group("g").unwrap().join("m", b"").await.unwrap();
    assert_eq!(membership.state(), coord::group::MembershipState::Joined);
    // Valid segments, too long a path: the facade's `path` module has the limits.
    let long = "/a".repeat(coord::path::MAX_PATH_LEN / 2 + 1);
    assert!(matches!(
        Path::new(long),
        Err(coord::Error::InvalidPath { .. })
    ));
}
