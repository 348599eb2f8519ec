//! What joining a foreign election needs under ZooKeeper ACLs (issue 15, documented in
//! `coord_core::dialect`): coord with credentials creates missing parents "creator all + world
//! read", so another identity cannot join an election whose directory coord made; a directory
//! made with an open ACL (Curator's and kazoo's default) lets every identity join, and coord's
//! own candidate nodes stay readable by the others (to read the leader, to watch a
//! predecessor). The other identity here is a second coord client in the same dialect: the
//! ACLs are ZooKeeper's, whoever the client is (the peers' own code runs in
//! coord-reliability's mixed-fleet tests).

use coord_core::dialect::Dialect;
use coord_core::{Client, CreateMode, Error, Path};
use coord_zk::testing::{endpoints, unique_suffix};

async fn client(url: &str) -> Client {
    Client::new(coord_zk::connect(url).await.expect("connect"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_foreign_election_under_acls() {
    let Some(ep) = endpoints().await else { return };
    let ns = format!("/dialect-acl-{}", unique_suffix());
    // The anonymous client connects first: the namespace itself is made with an open ACL.
    let anon = client(&format!("zk://{ep}{ns}")).await;
    let alice = client(&format!("zk://alice:alice-secret@{ep}{ns}")).await;
    let d = Dialect::CuratorLatch;

    // A directory coord created with credentials keeps other identities out.
    let closed = alice.election_with("/closed", d).unwrap();
    let la = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        closed.campaign(b"alice"),
    )
    .await
    .expect("campaign in time")
    .expect("alice leads");
    let r = anon
        .election_with("/closed", d)
        .unwrap()
        .campaign(b"anon")
        .await;
    assert!(matches!(r, Err(Error::Unauthorized { .. })), "{r:?}");
    // Reading who leads still works (world read).
    let seen = anon
        .election_with("/closed", d)
        .unwrap()
        .leader()
        .await
        .unwrap();
    assert_eq!(seen.map(|l| l.value), Some(b"alice".to_vec()));
    la.resign().await.unwrap();

    // A directory made with an open ACL (as the peer makes it): both identities join, in order,
    // and each sees the other's candidate.
    anon.create(&Path::new("/open").unwrap(), b"", CreateMode::Exact)
        .await
        .unwrap();
    let la = alice
        .election_with("/open", d)
        .unwrap()
        .campaign(b"alice")
        .await
        .expect("alice joins the open directory");
    let eb = anon.election_with("/open", d).unwrap();
    let fb = tokio::spawn(async move { eb.campaign(b"anon").await });
    let open = anon.election_with("/open", d).unwrap();
    for _ in 0..200 {
        if open.participants().await.unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let values: Vec<Vec<u8>> = open
        .participants()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.value)
        .collect();
    assert_eq!(values, [b"alice".to_vec(), b"anon".to_vec()]);
    la.resign().await.unwrap();
    let lb = tokio::time::timeout(std::time::Duration::from_secs(30), fb)
        .await
        .expect("anon elected in time")
        .unwrap()
        .expect("anon leads after alice");
    assert!(lb.fencing_token() > 0);
    lb.resign().await.unwrap();
}
