//! The peers of the mixed-fleet tests: processes that run another library's election or lock
//! recipe (Curator in Java, kazoo in Python) against the test's ZooKeeper, so that coord is
//! tested against the peer's own code, not a reimplementation of it.
//!
//! The fixtures live in this crate's `peers/` directory and speak the line protocol of
//! coord-reliability's `contender` (one JSON event per line on stdout: `started`,
//! `campaigning`, `granted`, `releasing`, `lost`, `write`, `observed`, `error`, `exiting`;
//! commands on stdin: `resign`, `observe`, `quit`). They exit at the end of their stdin, so a
//! peer never outlives the test process that holds the pipe (also after a panic or a
//! `SIGKILL` of the test); [`PeerProcess`] also kills its process when dropped.
//!
//! - [`curator_peer`]: `CuratorPeer.java`, compiled once per test process with `javac` into
//!   a temp dir, run with `java` and Curator 5.4 from Debian's `/usr/share/java`
//!   (`libcurator-recipes-java`; `COORD_CURATOR_CLASSPATH` overrides the classpath).
//! - [`kazoo_peer`]: `kazoo_peer.py`, run with Debian's `/usr/bin/python3` (which has
//!   `python3-kazoo`; `COORD_PYTHON` overrides it).
//!
//! A missing runtime is [`Error::is_not_installed`]; [`peer_or_skip`] turns that into the loud
//! SKIPPED line, or a panic with `COORD_REQUIRE_BACKENDS=1`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{util, Error};

/// The jars of Debian's `/usr/share/java` that Curator's recipes need at run time.
const CURATOR_JARS: &[&str] = &[
    "curator-client",
    "curator-framework",
    "curator-recipes",
    "zookeeper",
    "zookeeper-jute",
    "slf4j-api",
    "slf4j-nop",
    "guava",
    "netty-handler",
    "netty-common",
    "netty-transport",
    "netty-buffer",
    "netty-resolver",
    "netty-codec",
    "netty-transport-native-epoll",
    "netty-transport-native-unix-common",
    "commons-lang3",
    "metrics-core",
];

/// A fixture's source in this crate's `peers/` directory.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(name)
}

/// Curator's classpath: `COORD_CURATOR_CLASSPATH`, else the jars of `/usr/share/java`.
pub fn curator_classpath() -> Result<String, Error> {
    if let Some(cp) = util::env_nonempty("COORD_CURATOR_CLASSPATH") {
        return Ok(cp);
    }
    let dir = Path::new("/usr/share/java");
    let mut parts = Vec::new();
    for jar in CURATOR_JARS {
        let p = dir.join(format!("{jar}.jar"));
        if !p.is_file() {
            return Err(Error::not_installed(format!(
                "{} not found (Debian packages libcurator-recipes-java, \
                 libcurator-framework-java; run scripts/install-backends.sh, or set \
                 COORD_CURATOR_CLASSPATH)",
                p.display()
            )));
        }
        parts.push(p.display().to_string());
    }
    Ok(parts.join(":"))
}

fn javac() -> Result<PathBuf, Error> {
    let java = crate::server::find_java()?;
    let beside = java.with_file_name("javac");
    if util::is_executable(&beside) {
        return Ok(beside);
    }
    util::which("javac").ok_or_else(|| {
        Error::not_installed(
            "javac not found (Debian package default-jdk-headless; run \
             scripts/install-backends.sh)",
        )
    })
}

/// Compiles `CuratorPeer.java` (once per process) and returns the directory of its classes.
fn compiled_curator_peer() -> Result<PathBuf, Error> {
    static DIR: OnceLock<Result<PathBuf, Error>> = OnceLock::new();
    DIR.get_or_init(|| {
        let cp = curator_classpath()?;
        let javac = javac()?;
        let out = util::make_temp_dir("curator-peer")?;
        let res = Command::new(&javac)
            .arg("-d")
            .arg(&out)
            .arg("-cp")
            .arg(&cp)
            .arg(fixture("CuratorPeer.java"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::new(format!("cannot run {}: {e}", javac.display())))?;
        if !res.status.success() {
            return Err(Error::new(format!(
                "javac CuratorPeer.java failed: {}",
                String::from_utf8_lossy(&res.stderr)
            )));
        }
        Ok(out)
    })
    .clone()
}

/// The command that runs a Curator peer: `mode` is `latch`, `selector` or `mutex`; the
/// ZooKeeper connect string `zk` (with the chroot, if any), the recipe's `path`, the
/// candidate's `id`, the fenced resource's address (`-`: none), the write interval and the
/// session timeout.
pub fn curator_peer(
    mode: &str,
    zk: &str,
    path: &str,
    id: &str,
    fence: &str,
    interval: Duration,
    session: Duration,
) -> Result<Command, Error> {
    let classes = compiled_curator_peer()?;
    let java = crate::server::find_java()?;
    let mut cmd = Command::new(java);
    cmd.arg("-Xmx96m")
        .arg("-XX:TieredStopAtLevel=1")
        .arg("-cp")
        .arg(format!("{}:{}", classes.display(), curator_classpath()?))
        .arg("CuratorPeer")
        .arg(mode)
        .arg(zk)
        .arg(path)
        .arg(id)
        .arg(fence)
        .arg(interval.as_millis().to_string())
        .arg(session.as_millis().to_string());
    Ok(cmd)
}

/// The Python with kazoo: `COORD_PYTHON`, else Debian's `/usr/bin/python3` (the one
/// `python3-kazoo` installs into; a `python3` earlier on `PATH` may not have it).
pub fn kazoo_python() -> Result<PathBuf, Error> {
    static PY: OnceLock<Result<PathBuf, Error>> = OnceLock::new();
    PY.get_or_init(|| {
        let py = PathBuf::from(
            util::env_nonempty("COORD_PYTHON").unwrap_or_else(|| "/usr/bin/python3".into()),
        );
        let ok = Command::new(&py)
            .args(["-c", "import kazoo.recipe.lock"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Ok(py)
        } else {
            Err(Error::not_installed(format!(
                "{} cannot import kazoo (Debian package python3-kazoo; run \
                 scripts/install-backends.sh, or set COORD_PYTHON)",
                py.display()
            )))
        }
    })
    .clone()
}

/// The command that runs a kazoo peer: `mode` is `election` or `lock`; the other arguments
/// as for [`curator_peer`].
pub fn kazoo_peer(
    mode: &str,
    zk: &str,
    path: &str,
    id: &str,
    fence: &str,
    interval: Duration,
    session: Duration,
) -> Result<Command, Error> {
    let mut cmd = Command::new(kazoo_python()?);
    cmd.arg(fixture("kazoo_peer.py"))
        .arg(mode)
        .arg(zk)
        .arg(path)
        .arg(id)
        .arg(fence)
        .arg(interval.as_millis().to_string())
        .arg(session.as_millis().to_string());
    Ok(cmd)
}

/// `Some(cmd)`, or `None` after the loud SKIPPED line naming `test` when the peer's runtime
/// is not installed; panics when peers are required (`COORD_REQUIRE_BACKENDS=1`) or on any
/// other error.
pub fn peer_or_skip(test: &str, peer: Result<Command, Error>) -> Option<Command> {
    match peer {
        Ok(cmd) => Some(cmd),
        Err(e) if e.is_not_installed() && !crate::require_backends() => {
            eprintln!("SKIPPED: {test}: the peer's runtime is not available: {e}");
            None
        }
        Err(e) => panic!("{test}: the peer cannot run (COORD_REQUIRE_BACKENDS=1 or a fault): {e}"),
    }
}

/// A peer (or any line-protocol process): stdin for commands, stdout lines collected, stderr
/// kept for the error messages. Dropping it kills the process.
pub struct PeerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl PeerProcess {
    /// Starts `cmd` with piped stdin, stdout and stderr.
    pub fn spawn(mut cmd: Command) -> Result<PeerProcess, Error> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::new(format!("cannot spawn {cmd:?}: {e}")))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    let mut s = stderr.lock().unwrap_or_else(|p| p.into_inner());
                    // Keep the tail only.
                    if s.len() > 64 * 1024 {
                        s.clear();
                    }
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(PeerProcess {
            child,
            stdin,
            lines,
            stderr,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command line (ignored if the process is gone).
    pub fn send(&mut self, line: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{line}").and_then(|_| s.flush());
        }
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What the process wrote to stderr (its tail).
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits (bounded, polling) for the first stdout line after the first `skip` lines that
    /// satisfies `pred`; its index and the line, or an error with the stderr tail.
    pub fn wait_line(
        &mut self,
        skip: usize,
        limit: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<(usize, String), Error> {
        let start = Instant::now();
        loop {
            let lines = self.lines();
            if let Some((i, l)) = lines.iter().enumerate().skip(skip).find(|(_, l)| pred(l)) {
                return Ok((i, l.clone()));
            }
            if start.elapsed() > limit || self.child.try_wait().ok().flatten().is_some() {
                return Err(Error::new(format!(
                    "the peer's expected line did not come within {limit:?} (or it exited); \
                     its stderr: {}",
                    self.stderr()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Closes stdin (the peer quits) and waits at most `limit`, then kills it.
    pub fn quit(&mut self, limit: Duration) {
        self.stdin = None;
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// `SIGKILL`, then reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
