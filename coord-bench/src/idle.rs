//! Item 7, the idle cost of a waiting candidate (issue 17): a child process with one session
//! and one election campaign queued behind a leader, nothing happening. Over a window its
//! wake-ups (voluntary + involuntary context switches of all its threads, from
//! `/proc/<pid>/task/*/status`) and its CPU time (`/proc/<pid>/stat`) are read.

use std::process::Stdio;
use std::time::{Duration, Instant};

use coord::{Backend, Client, Path};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::cx::{within, Cx};
use crate::stats::{Res, Row, Verdict};

/// The election's name.
const ELECTION: &str = "idle-candidate";
/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ: 100 on Linux).
const TICKS: f64 = 100.0;

fn dir() -> Res<Path> {
    Ok(Path::new("/elections")?.join(ELECTION)?)
}

async fn candidates(b: &dyn Backend) -> usize {
    b.children(&dir().unwrap_or_else(|_| Path::root()))
        .await
        .map_or(0, |l| l.len())
}

/// The child: campaigns (behind a leader it starts itself when `own_leader`: mem's store is
/// in-process), prints `QUEUED` once its candidate waits behind the leader, then waits.
pub async fn child(url: &str, own_leader: bool) -> Res<()> {
    let backend = coord::connect_backend(url).await?;
    let _leader = if own_leader {
        let leader = Client::new(backend.clone());
        Some(leader.election(ELECTION)?.campaign(b"leader").await?)
    } else {
        None
    };
    let me = Client::new(backend.clone());
    let election = me.election(ELECTION)?;
    let campaign = tokio::spawn(async move { election.campaign(b"candidate").await });
    within(Duration::from_secs(60), "the candidate queued", async {
        while candidates(&*backend).await < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    println!("QUEUED");
    // Waits until the parent ends this process (or, should it be elected, keeps leading).
    let _ = campaign.await;
    std::future::pending::<()>().await;
    Ok(())
}

/// Context switches of every thread of `pid`, and its CPU ticks (user + system).
fn sample(pid: u32) -> Res<(u64, u64)> {
    let mut switches = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(t?.path().join("status")).unwrap_or_default();
        switches += status
            .lines()
            .filter(|l| {
                l.starts_with("voluntary_ctxt_switches")
                    || l.starts_with("nonvoluntary_ctxt_switches")
            })
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces) start at the state (3rd).
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state.
    Ok((switches, tick(11) + tick(12)))
}

/// Measures the waiting candidate for `secs` seconds.
pub async fn idle_candidate(cx: &Cx, secs: u64) -> Res<Vec<Row>> {
    // The leader lives in this process, except on mem (the child's store is its own).
    let own_leader = cx.name == "mem";
    let url = format!("{}-idle", cx.url);
    let leader = if own_leader {
        None
    } else {
        let b = coord::connect_backend(&url).await?;
        let c = Client::new(b);
        let l = within(
            Duration::from_secs(60),
            "leader",
            c.election(ELECTION)?.campaign(b"leader"),
        )
        .await??;
        Some((c, l))
    };
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "--child-candidate",
            &url,
            if own_leader { "own-leader" } else { "" },
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("the candidate exited at once")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    within(Duration::from_secs(90), "the candidate to queue", async {
        loop {
            match lines.next_line().await {
                Ok(Some(l)) if l.trim() == "QUEUED" => return Ok(()),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Err("the candidate exited before it queued"),
            }
        }
    })
    .await??;
    // Let the start-up's work end (connection set-up, first keep-alives).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (s0, c0) = sample(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (s1, c1) = sample(pid)?;
    let dt = t0.elapsed().as_secs_f64();
    let _ = child.kill().await;
    if let Some((c, l)) = leader {
        let _ = l.resign().await;
        let _ = c.close().await;
    }
    let wakeups = s1.saturating_sub(s0) as f64 / dt;
    let cpu = c1.saturating_sub(c0) as f64 / TICKS / dt * 100.0;
    let what = format!("idle waiting candidate process (one session, one campaign; {secs} s)");
    Ok(vec![
        Row::new(
            7,
            format!("{what}: wake-ups/s (context switches)"),
            format!("{wakeups:.1}/s"),
            "",
            "",
            "≤ 15/s",
            Verdict::check(wakeups <= 15.0),
        ),
        Row::new(
            7,
            format!("{what}: CPU"),
            format!("{cpu:.2}% of a core (10 ms ticks)"),
            "",
            "",
            "≤ 0.3%",
            Verdict::check(cpu <= 0.3),
        ),
    ])
}
