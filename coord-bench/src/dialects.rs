//! Item 10 (ZooKeeper only): handovers in each peer dialect, next to the peer's own handover
//! between two of its processes, measured in the same run (issue 15).
//!
//! For each ZooKeeper dialect, three pairs of members take turns in one election: two peer
//! processes (Curator's LeaderLatch or LeaderSelector, kazoo's Lock, from coord-testkit's
//! `peers`), two coord candidates in the dialect, and one coord candidate with one peer (both
//! directions). A clean handover runs from the holder's release (coord: the call to `resign`;
//! a peer: its `releasing` line) to the successor's grant (coord: `campaign` returns; a peer:
//! the recipe says it leads, before it reads its node's czxid); a crash handover from the
//! holder's death (coord: the session's client aborted; a peer: `SIGKILL`) to the successor's
//! grant, dominated by the 2 s session timeout. Times are wall-clock microseconds on one
//! machine, so that both sides' stamps compare. The herd: 20 coord candidates in the dialect,
//! wake-ups per leadership change.

use std::time::Duration;

use coord::dialect::Dialect;
use coord_testkit::peers::{curator_peer, kazoo_peer, PeerProcess};

use crate::cx::{Cx, STEP};
use crate::handover::{self, Fleet, Peer, SESSION};
use crate::stats::{Res, Row};

const PEER_INTERVAL: Duration = Duration::from_millis(20);

/// What one dialect's run needs.
struct Setup<'a> {
    cx: &'a Cx,
    dialect: Dialect,
    /// The peers' connect string (with the namespace as chroot).
    zk: String,
}

/// A Curator or kazoo process; `seen` lines of its output are consumed.
struct ZkPeer {
    proc: PeerProcess,
    seen: usize,
}

impl ZkPeer {
    /// Waits for the next `ev` line; its `t_us`.
    async fn next(&mut self, ev: &str, bound: Duration) -> Res<u64> {
        let (i, t) = peer_event(&self.proc, self.seen, ev, bound).await?;
        self.seen = i + 1;
        Ok(t)
    }
}

impl Peer for ZkPeer {
    async fn granted(&mut self, bound: Duration) -> Res<u64> {
        self.next("granted", bound).await
    }

    /// The peer releases and campaigns again by itself.
    async fn release(&mut self) -> Res<u64> {
        self.proc.send("resign");
        self.next("releasing", STEP).await
    }

    const REQUEUES_ITSELF: bool = true;

    fn kill(mut self) -> u64 {
        let t = handover::now_us();
        self.proc.kill();
        t
    }

    async fn quit(mut self) {
        self.proc.quit(Duration::from_secs(5));
    }
}

impl Fleet for Setup<'_> {
    type Peer = ZkPeer;
    const ITEM: u8 = 10;

    fn cx(&self) -> &Cx {
        self.cx
    }

    fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn peer(&self, name: &str, id: &str) -> Res<ZkPeer> {
        let path = format!("/elections/{name}");
        let (i, t) = (PEER_INTERVAL, SESSION);
        let cmd = match self.dialect {
            Dialect::CuratorLatch => curator_peer("latch", &self.zk, &path, id, "-", i, t),
            Dialect::CuratorLock => curator_peer("selector", &self.zk, &path, id, "-", i, t),
            _ => kazoo_peer("election", &self.zk, &path, id, "-", i, t),
        }?;
        Ok(ZkPeer {
            proc: PeerProcess::spawn(cmd)?,
            seen: 0,
        })
    }

    fn settle(&self) -> Duration {
        Duration::from_millis(100)
    }

    fn rounds(&self) -> (usize, usize) {
        (
            self.cx.sizes.clean_rounds.max(4),
            self.cx.sizes.crash_rounds.clamp(2, 4),
        )
    }

    fn crash_bound(&self) -> Duration {
        SESSION * 3 + Duration::from_secs(5)
    }
}

/// The first `ev` event of the peer after line `from`: its index and its `t_us`.
async fn peer_event(p: &PeerProcess, from: usize, ev: &str, bound: Duration) -> Res<(usize, u64)> {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let lines = p.lines();
        for (i, l) in lines.iter().enumerate().skip(from) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                continue;
            };
            if v["ev"] == ev {
                let t = v["t_us"].as_u64().ok_or("a peer line without t_us")?;
                return Ok((i, t));
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "the peer reported no {ev:?} within {bound:?}: {}",
                p.stderr()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Item 10: every ZooKeeper dialect (nothing on the other backends).
pub async fn dialects(cx: &Cx) -> Vec<Row> {
    if cx.name != "zk" {
        return Vec::new();
    }
    let endpoint = cx
        .url
        .trim_start_matches("zk://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let zk = format!("{endpoint}{}", cx.backend.namespace());
    let mut rows = Vec::new();
    for dialect in [Dialect::CuratorLatch, Dialect::CuratorLock, Dialect::Kazoo] {
        let s = Setup {
            cx,
            dialect,
            zk: zk.clone(),
        };
        rows.extend(handover::run(&s).await);
    }
    rows
}
