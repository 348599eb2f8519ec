//! Digest authentication and the ACL coord puts on the nodes it creates ("creator: all,
//! world: read"): another identity, or none, can read but not change, delete or add under
//! them; the password never shows in errors or Debug output.

use coord_core::{Backend, CreateMode, Error, Path, SessionOptions};
use coord_zk::testing::{endpoints, unique_suffix};

fn p(s: &str) -> Path {
    Path::new(s).expect("path")
}

async fn connect(url: &str) -> std::sync::Arc<dyn Backend> {
    coord_zk::connect(url).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_identities_cannot_change_coords_nodes() {
    let Some(ep) = endpoints().await else { return };
    let ns = format!("/auth-{}", unique_suffix());
    let alice = connect(&format!("zk://alice:alice-secret@{ep}{ns}")).await;
    alice
        .create(&p("/cfg"), b"v1", CreateMode::Exact)
        .await
        .expect("alice creates");
    let s = alice
        .open_session(SessionOptions::new())
        .await
        .expect("session");
    s.create(&p("/eph"), b"e", CreateMode::Exact)
        .await
        .expect("alice's ephemeral");

    for (who, url) in [
        ("bob", format!("zk://bob:bob-secret@{ep}{ns}")),
        ("anonymous", format!("zk://{ep}{ns}")),
    ] {
        let other = connect(&url).await;
        // World-readable...
        assert_eq!(
            other.get(&p("/cfg")).await.expect("read").value,
            b"v1",
            "{who}"
        );
        // ...but nobody else may write, delete, or create under coord's nodes.
        let r = other.set(&p("/cfg"), b"evil", None).await;
        assert!(
            matches!(r, Err(Error::Unauthorized { .. })),
            "{who} set: {r:?}"
        );
        let r = other.delete(&p("/eph"), None).await;
        assert!(
            matches!(r, Err(Error::Unauthorized { .. })),
            "{who} delete: {r:?}"
        );
        let r = other.create(&p("/cfg/child"), b"", CreateMode::Exact).await;
        assert!(
            matches!(r, Err(Error::Unauthorized { .. })),
            "{who} create: {r:?}"
        );
    }
    // Nothing changed.
    assert_eq!(alice.get(&p("/cfg")).await.expect("read").value, b"v1");
    assert!(alice.exists(&p("/eph")).await.expect("exists").is_some());
    assert!(alice
        .children(&p("/cfg"))
        .await
        .expect("children")
        .is_empty());
    // The owner still can.
    alice
        .set(&p("/cfg"), b"v2", None)
        .await
        .expect("alice writes");
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_shows() {
    let Some(ep) = endpoints().await else { return };
    let ns = format!("/auth-{}", unique_suffix());
    let alice = connect(&format!("zk://alice:hunter2-secret@{ep}{ns}")).await;
    alice
        .create(&p("/x"), b"", CreateMode::Exact)
        .await
        .expect("create");
    let bob = connect(&format!("zk://bob:other-secret@{ep}{ns}")).await;
    let err = bob.set(&p("/x"), b"", None).await.expect_err("refused");
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains("secret"), "{text}");
    }
    let bad = coord_zk::connect(&format!("zk://alice:hunter2-secret@{ep}{ns}?nope=1"))
        .await
        .err()
        .expect("unknown option");
    assert!(!format!("{bad} {bad:?}").contains("hunter2"), "{bad:?}");
}
