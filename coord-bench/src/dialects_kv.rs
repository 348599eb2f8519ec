//! Item 14 on etcd and Consul: handovers in the etcd `concurrency` dialect next to `etcdctl lock`
//! processes, and in the Consul `api.Lock` dialect next to `consul lock` processes, measured in
//! the same run (issue 15).
//!
//! Three pairs of members take turns in one lock: two peer processes, two coord candidates in
//! the dialect, and one coord candidate with one peer (both directions). A clean handover runs
//! from the holder's release (coord: the call to `resign`; a peer: its `SIGTERM`, on which it
//! releases and exits — a new peer process then queues again) to the successor's grant (coord:
//! `campaign` returns; a peer: its "held" line is read); a crash handover from the holder's
//! death (coord: its session's keep-alive stopped; a peer: `SIGKILL`) to the successor's
//! grant. coord's sessions have a 2 s TTL; `etcdctl lock --ttl=2` too, while `consul lock`'s
//! sessions have Consul's defaults (15 s TTL, which Consul enforces up to twice over, and a
//! 15 s lock-delay after the invalidation), so its crash rows are few and long. The herd: 20
//! coord candidates in the dialect, wake-ups per leadership change (1 on etcd; every waiter on
//! Consul's single key).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coord::dialect::Dialect;

use crate::cx::{within, Cx};
use crate::handover::{self, now_us, Fleet, Peer};
use crate::stats::{Res, Row};

struct Setup<'a> {
    cx: &'a Cx,
    dialect: Dialect,
    /// The agent's or member's `host:port`.
    endpoint: String,
    /// The raw prefix of this run's names (the namespace, without the leading `/`).
    ns: String,
}

/// A peer process in its own process group (killed with it when dropped); `held` is stamped
/// when its "I hold it" line is read.
struct KvPeer {
    child: Child,
    held: Arc<Mutex<Option<u64>>>,
}

impl KvPeer {
    fn spawn(s: &Setup<'_>, name: &str) -> Res<KvPeer> {
        use std::os::unix::process::CommandExt;
        let tools = coord_testkit::tools_dir().join("bin");
        // coord's `election(name)` is the path `/elections/<name>`.
        let raw = format!("{}/elections/{name}", s.ns);
        let setpriv = std::path::Path::new("/usr/bin/setpriv");
        let mut cmd = if setpriv.exists() {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--"]);
            c
        } else {
            Command::new("env")
        };
        let marker: Box<dyn Fn(&str) -> bool + Send> = if s.dialect == Dialect::EtcdConcurrency {
            cmd.arg(tools.join("etcdctl"))
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", s.endpoint))
                .args(["lock", "--ttl=2", &raw]);
            let prefix = format!("{raw}/");
            Box::new(move |l: &str| l.starts_with(&prefix))
        } else {
            cmd.arg(tools.join("consul"))
                .arg("lock")
                .arg(format!("-http-addr={}", s.endpoint))
                .arg(&raw)
                .arg("echo HELD; exec sleep 600");
            Box::new(|l: &str| l == "HELD")
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = cmd.spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let held = Arc::new(Mutex::new(None));
        let h = held.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if marker(&line) {
                    let mut g = h.lock().unwrap_or_else(|p| p.into_inner());
                    g.get_or_insert(now_us());
                }
            }
        });
        Ok(KvPeer { child, held })
    }

    fn held(&self) -> Option<u64> {
        *self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .stderr(Stdio::null())
            .status();
    }

    /// SIGTERM: the peer releases and exits (waited for, bounded).
    async fn terminate(&mut self) {
        self.signal("TERM");
        for _ in 0..500 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill();
    }

    fn kill(&mut self) {
        self.signal("KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for KvPeer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Peer for KvPeer {
    async fn granted(&mut self, bound: Duration) -> Res<u64> {
        within(bound, "the peer holds the lock", async {
            loop {
                if let Some(t) = self.held() {
                    return t;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
    }

    /// SIGTERM: the peer releases and exits; it queues again as a new process.
    async fn release(&mut self) -> Res<u64> {
        let t = now_us();
        self.terminate().await;
        Ok(t)
    }

    const REQUEUES_ITSELF: bool = false;

    fn kill(mut self) -> u64 {
        let t = now_us();
        KvPeer::kill(&mut self);
        t
    }

    async fn quit(mut self) {
        self.terminate().await;
    }
}

impl Fleet for Setup<'_> {
    type Peer = KvPeer;
    const ITEM: u8 = 14;

    fn cx(&self) -> &Cx {
        self.cx
    }

    fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn peer(&self, name: &str, _id: &str) -> Res<KvPeer> {
        KvPeer::spawn(self, name)
    }

    /// A new candidate is queued (its key read or its blocking query parked) after this.
    fn settle(&self) -> Duration {
        Duration::from_millis(200)
    }

    fn rounds(&self) -> (usize, usize) {
        let clean = self.cx.sizes.clean_rounds.clamp(4, 10);
        // `consul lock` crashes take 30-45 s each: one per direction there.
        let crashes = if self.dialect.herd_free() {
            self.cx.sizes.crash_rounds.clamp(2, 4)
        } else {
            1
        };
        (clean, crashes)
    }

    /// `consul lock`'s sessions: 15 s TTL (up to 30 s to expire) and a 15 s lock-delay.
    fn crash_bound(&self) -> Duration {
        Duration::from_secs(90)
    }
}

/// Item 14 on etcd (the concurrency dialect next to `etcdctl lock`) and Consul (the `api.Lock`
/// dialect next to `consul lock`); nothing elsewhere.
pub async fn dialects(cx: &Cx) -> Vec<Row> {
    let (dialect, scheme) = match cx.name {
        "etcd" => (Dialect::EtcdConcurrency, "etcd://"),
        "consul" => (Dialect::ConsulLock, "consul://"),
        _ => return Vec::new(),
    };
    let endpoint = cx
        .url
        .trim_start_matches(scheme)
        .split(['/', '?'])
        .next()
        .unwrap_or_default()
        .split(',')
        .next()
        .unwrap_or_default()
        .to_owned();
    let s = Setup {
        cx,
        dialect,
        endpoint,
        ns: cx.backend.namespace().trim_matches('/').to_owned(),
    };
    handover::run(&s).await
}
