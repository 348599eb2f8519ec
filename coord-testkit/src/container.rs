//! The container provider: with `COORD_TESTKIT=containers`, every [`Server`](crate::Server)
//! runs in a container instead of a process, with the same ports, configuration and data dir.
//!
//! Each server is one `docker run` of the image named by `COORD_ZK_IMAGE`, `COORD_ETCD_IMAGE` or
//! `COORD_CONSUL_IMAGE` (defaults: the official images of the versions the suite is proven
//! against), with **host networking** (the server listens on the same free `127.0.0.1` ports
//! as a process would; no container address is ever contacted), the server's temp dir
//! bind-mounted at the same path (configuration, data; it survives a restart), the entrypoint
//! overridden to the server itself (`etcd`, `consul`, ZooKeeper's `zkServer.sh
//! start-foreground <zoo.cfg>`, which execs `java`), so the server is the container's first
//! process (each installs a `SIGTERM` handler, so a graceful stop reaches it, and its pid
//! is the server's as with a process). The container's output is
//! followed (`docker logs -f`) into the server's log file, so error messages carry its tail as
//! with processes.
//!
//! Faults map to the container: pause/resume are `docker pause`/`unpause` (the cgroup freezer),
//! a graceful stop is `SIGTERM` through `docker kill -s TERM`, a crash is `docker kill`;
//! a restart runs a fresh container on the same ports and data dir. Dropping the server removes
//! its container (`docker rm -f`), also while a panic unwinds.
//!
//! No leaked containers: every container carries the label `coord-testkit.owner=<pid of the test
//! process>`. A lifeline process (a `/bin/sh` whose stdin is a pipe only the test process holds)
//! removes all containers of its owner when the test process exits however it exits, `SIGKILL`
//! included; and the first container a test process starts sweeps the containers of owners that
//! are gone (should a lifeline itself have been killed).
//!
//! The daemon is the one `DOCKER_HOST` names (the `docker` CLI's own rules). The kit talks to it
//! through the `docker` CLI (Debian `docker.io`): the `testcontainers` crate (0.23, on bollard
//! 0.18) pins Docker API 1.47 without negotiating, and Debian's Docker 20.10 (API 1.41) refuses
//! it ("client version 1.47 is too new"); the CLI negotiates, needs no async runtime in the
//! kit's synchronous API, and adds no dependency.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::supervisor::{Launch, Supervised};
use crate::util;
use crate::Kind;

/// The label that names the test process owning a container.
const OWNER_LABEL: &str = "coord-testkit.owner";
/// The label that names the server's temp dir, which the lifeline removes with the container.
const DIR_LABEL: &str = "coord-testkit.dir";

/// Whether servers run in containers: `COORD_TESTKIT=containers` (`processes`, empty or unset:
/// processes, the default).
pub(crate) fn enabled() -> bool {
    util::env_nonempty("COORD_TESTKIT").is_some_and(|v| v.trim() == "containers")
}

/// Whether a server runs in a container: [`enabled`], except for a member placed in a network
/// namespace of [`crate::netns::Net`], which runs as a process whatever the provider, said
/// once per test process in a loud line. Docker cannot start a container in a namespace made
/// by `ip netns` (`--network` has no such mode), and the partition tests cut the links of
/// exactly those namespaces.
pub(crate) fn contained(in_netns: bool) -> bool {
    if !enabled() {
        return false;
    }
    if in_netns {
        static SAID: OnceLock<()> = OnceLock::new();
        SAID.get_or_init(|| {
            // Not through the test harness's capture: this must be seen.
            let _ = writeln!(
                std::io::stderr().lock(),
                "PROCESSES, NOT CONTAINERS: COORD_TESTKIT=containers, but the cluster members \
                 in network namespaces (coord_testkit::netns) run as processes: docker cannot \
                 put a container into a namespace made by `ip netns`, whose links these tests cut"
            );
        });
        return false;
    }
    true
}

/// Checks `COORD_TESTKIT` names a provider the kit knows.
pub(crate) fn check_provider() -> Result<(), Error> {
    match util::env_nonempty("COORD_TESTKIT").as_deref().map(str::trim) {
        None | Some("processes" | "containers") => Ok(()),
        Some(other) => Err(Error::new(format!(
            "COORD_TESTKIT={other:?} is not a provider: use `processes` (the default) or `containers`"
        ))),
    }
}

/// The image for `kind`: `COORD_ZK_IMAGE`, `COORD_ETCD_IMAGE`, `COORD_CONSUL_IMAGE`, else the
/// official image of the version the suite is proven against.
pub(crate) fn image(kind: Kind) -> String {
    let (var, default) = match kind {
        Kind::ZooKeeper => ("COORD_ZK_IMAGE", "zookeeper:3.9.3"),
        Kind::Etcd => ("COORD_ETCD_IMAGE", "quay.io/coreos/etcd:v3.5.16"),
        Kind::Consul => ("COORD_CONSUL_IMAGE", "hashicorp/consul:1.8.7"),
    };
    util::env_nonempty(var)
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| default.to_string())
}

/// A `docker` command with stdin closed and output captured.
fn docker() -> Command {
    let mut cmd = Command::new("docker");
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs `docker args...` bounded by `timeout`; the output, or why it failed.
fn run(args: &[&str], timeout: Duration) -> Result<Output, String> {
    let mut child = docker()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `docker` (Debian package docker.io): {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`docker {}` did not finish within {timeout:?}",
                    args.join(" ")
                ));
            }
            Err(e) => return Err(format!("waiting for `docker {}`: {e}", args.join(" "))),
        }
    }
    child
        .wait_with_output()
        .map_err(|e| format!("reading the output of `docker {}`: {e}", args.join(" ")))
}

/// Runs `docker args...`; its trimmed stdout on success, else its stderr.
fn run_ok(args: &[&str], timeout: Duration) -> Result<String, String> {
    let out = run(args, timeout)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`docker {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The bound for quick docker commands (inspect, pause, kill): generous, the machine is loaded.
const QUICK: Duration = Duration::from_secs(30);

/// Whether the daemon answers; once per test process. A failure is a "not installed" error,
/// so tests skip loudly (or fail with `COORD_REQUIRE_BACKENDS=1`).
fn daemon() -> Result<(), Error> {
    static DAEMON: OnceLock<Result<(), String>> = OnceLock::new();
    DAEMON
        .get_or_init(|| {
            run_ok(&["version", "--format", "{{.Server.Version}}"], QUICK)
                .map(|_| ())
                .map_err(|e| {
                    format!(
                        "COORD_TESTKIT=containers but the docker daemon does not answer \
                         (DOCKER_HOST={}): {e}",
                        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unset".into())
                    )
                })
        })
        .clone()
        .map_err(Error::not_installed)?;
    lifeline()
}

/// The lifeline: started once per test process, held for its whole life (a static is never
/// dropped), so its stdin closes exactly when the test process exits.
fn lifeline() -> Result<(), Error> {
    static LIFELINE: OnceLock<Result<Mutex<ChildStdin>, String>> = OnceLock::new();
    LIFELINE
        .get_or_init(|| {
            sweep_orphans();
            let owner = std::process::id().to_string();
            // Removes the owner's containers, then their temp dirs (as a supervisor would).
            let script = r#"
while read -r _; do :; done
dirs=$(docker ps -a --filter "label=$1=$2" --format '{{.Label "coord-testkit.dir"}}')
ids=$(docker ps -aq --filter "label=$1=$2")
[ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1
if [ "$3" != keep ]; then
  for d in $dirs; do case "$d" in */coord-testkit-*) rm -rf "$d" ;; esac; done
fi
exit 0
"#;
            let mut child = Command::new("/bin/sh");
            child
                .args(["-c", script, "coord-testkit-lifeline", OWNER_LABEL, &owner])
                .arg(if util::keep_dirs() { "keep" } else { "remove" })
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // Its own process group: a Ctrl-C reaches the test process only.
            std::os::unix::process::CommandExt::process_group(&mut child, 0);
            let mut child = child
                .spawn()
                .map_err(|e| format!("cannot start the containers' lifeline (/bin/sh): {e}"))?;
            let stdin = child
                .stdin
                .take()
                .ok_or_else(|| "the lifeline has no stdin".to_string())?;
            // Reaped by nobody while we live; it exits after us (then init reaps it).
            std::mem::forget(child);
            Ok(Mutex::new(stdin))
        })
        .as_ref()
        .map(|_| ())
        .map_err(|e| Error::new(e.clone()))
}

/// Removes the containers whose owning test process is gone (its lifeline was killed too).
fn sweep_orphans() {
    let format = format!("{{{{.ID}}}} {{{{.Label \"{OWNER_LABEL}\"}}}}");
    let filter = format!("label={OWNER_LABEL}");
    let Ok(list) = run_ok(
        &["ps", "-a", "--filter", &filter, "--format", &format],
        QUICK,
    ) else {
        return;
    };
    let orphans: Vec<&str> = list
        .lines()
        .filter_map(|line| {
            let (id, owner) = line.split_once(' ')?;
            let pid: i32 = owner.trim().parse().ok()?;
            // SAFETY: kill(2) with signal 0 only checks that the process exists.
            let alive = pid > 0 && unsafe { libc::kill(pid, 0) } == 0;
            (!alive).then_some(id)
        })
        .collect();
    if !orphans.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(orphans);
        let _ = run(&args, QUICK);
    }
}

/// What runs in the container for a server whose process launch is `launch`: entrypoint,
/// arguments and environment.
fn command(kind: Kind, launch: &Launch) -> (String, Vec<OsString>, Vec<(String, String)>) {
    let args: Vec<OsString> = launch.argv.iter().skip(1).cloned().collect();
    match kind {
        Kind::Etcd => ("etcd".into(), args, Vec::new()),
        Kind::Consul => ("consul".into(), args, Vec::new()),
        Kind::ZooKeeper => {
            // The process launch is `java <jvm options> -cp <classpath> <main> <zoo.cfg>`: the
            // image has its own classpath (zkServer.sh); the JVM options carry over.
            let mut jvm = Vec::new();
            let mut it = args.iter();
            for a in it.by_ref() {
                if a == "-cp" {
                    break;
                }
                jvm.push(a.to_string_lossy().into_owned());
            }
            let cfg = args.last().cloned().unwrap_or_default();
            (
                "zkServer.sh".into(),
                vec!["start-foreground".into(), cfg],
                vec![
                    ("SERVER_JVMFLAGS".into(), jvm.join(" ")),
                    // The official image's zkServer.sh would log to files under /logs.
                    ("ZOO_LOG4J_PROP".into(), "INFO,CONSOLE".into()),
                ],
            )
        }
    }
}

/// A server running in a container.
#[derive(Debug)]
pub(crate) struct Contained {
    id: String,
    /// The host pid of the container's first process: the server.
    pid: u32,
    /// `docker logs -f`, appending to the server's log file.
    follower: Option<Child>,
    exit: Option<String>,
    paused: bool,
}

impl Contained {
    /// Runs the server of `kind` described by `launch` in a new container; `dir` (the server's
    /// temp dir) is mounted at the same path, the output goes to `log`.
    pub(crate) fn spawn(
        kind: Kind,
        dir: &Path,
        log: &Path,
        launch: &Launch,
    ) -> Result<Contained, Error> {
        daemon()?;
        let image = image(kind);
        let (entrypoint, args, env) = command(kind, launch);
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("coord-testkit-{}", std::process::id()));
        let mount = format!("{0}:{0}", dir.display());
        let owner = format!("{OWNER_LABEL}={}", std::process::id());
        let dir_label = format!("{DIR_LABEL}={}", dir.display());
        let mut cmd: Vec<OsString> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            name.into(),
            "--label".into(),
            owner.into(),
            "--label".into(),
            dir_label.into(),
            "--network".into(),
            "host".into(),
            "-v".into(),
            mount.into(),
            "-w".into(),
            dir.into(),
            "--entrypoint".into(),
            entrypoint.into(),
        ];
        for (k, v) in env {
            cmd.push("-e".into());
            cmd.push(format!("{k}={v}").into());
        }
        cmd.push(image.clone().into());
        cmd.extend(args);
        let args: Vec<String> = cmd
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        // Generous: the daemon may pull the image (with a registry) or copy it (vfs).
        let id = run_ok(&refs, util::start_timeout() * 4).map_err(|e| {
            Error::not_installed(format!(
                "{e}\n  (image {image}: set {} to another image, or build the local ones with \
                 scripts/build-test-images.sh)",
                match kind {
                    Kind::ZooKeeper => "COORD_ZK_IMAGE",
                    Kind::Etcd => "COORD_ETCD_IMAGE",
                    Kind::Consul => "COORD_CONSUL_IMAGE",
                }
            ))
        })?;
        let mut me = Contained {
            id,
            pid: 0,
            follower: None,
            exit: None,
            paused: false,
        };
        me.pid = run_ok(&["inspect", "-f", "{{.State.Pid}}", &me.id], QUICK)
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        me.follower = follow_logs(&me.id, log);
        Ok(me)
    }

    /// The host pid of the server (the container's first process).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// How the container ended, once it has.
    pub(crate) fn try_exit(&mut self) -> Option<String> {
        if self.exit.is_none() {
            let state = run_ok(
                &[
                    "inspect",
                    "-f",
                    "{{.State.Status}} {{.State.ExitCode}}",
                    &self.id,
                ],
                QUICK,
            );
            match state {
                Ok(s) if s.starts_with("exited") || s.starts_with("dead") => {
                    let code = s.split_whitespace().nth(1).unwrap_or("?").to_string();
                    self.exit = Some(format!("container exited with status {code}"));
                    self.finish_logs();
                }
                Ok(_) => {}
                Err(e) if e.contains("No such") => {
                    self.exit = Some("container is gone".into());
                }
                // The daemon did not answer: assume it still runs; the caller's bounds apply.
                Err(_) => {}
            }
        }
        self.exit.clone()
    }

    /// Lets the log follower write the last lines (it ends with the container), bounded.
    fn finish_logs(&mut self) {
        if let Some(mut f) = self.follower.take() {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = f.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = f.kill();
            let _ = f.wait();
        }
    }

    /// The container counterpart of a signal: `SIGSTOP` pauses, `SIGCONT` unpauses, anything
    /// else is sent to the server (`docker kill -s`). Whether it was delivered.
    pub(crate) fn signal(&mut self, sig: libc::c_int) -> bool {
        if self.try_exit().is_some() {
            return false;
        }
        let result = match sig {
            libc::SIGSTOP => {
                let r = run_ok(&["pause", &self.id], QUICK);
                self.paused |= r.is_ok();
                r
            }
            libc::SIGCONT => {
                if !self.paused {
                    return true;
                }
                let r = run_ok(&["unpause", &self.id], QUICK);
                self.paused &= r.is_err();
                r
            }
            sig => run_ok(&["kill", "-s", &sig.to_string(), &self.id], QUICK),
        };
        result.is_ok()
    }

    /// Waits until the container has ended, up to `timeout`.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `docker kill` (`SIGKILL`, a crash), then waits (bounded) until the container has ended.
    pub(crate) fn kill_now(&mut self) {
        if self.try_exit().is_some() {
            return;
        }
        let _ = run_ok(&["kill", &self.id], QUICK);
        self.wait_exit(Duration::from_secs(10));
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        let _ = run(&["rm", "-f", &self.id], QUICK);
        self.finish_logs();
    }
}

/// `docker logs -f <id>` with both streams appended to `log`; `None` if it cannot start (the
/// log then stays empty, nothing else depends on it).
fn follow_logs(id: &str, log: &Path) -> Option<Child> {
    let open = || OpenOptions::new().create(true).append(true).open(log).ok();
    let (out, err) = (open()?, open()?);
    docker()
        .args(["logs", "-f", id])
        .stdout(out)
        .stderr(err)
        .spawn()
        .ok()
}

/// A running server: a supervised process (the default provider) or a container.
#[derive(Debug)]
pub(crate) enum Running {
    /// A process under the `/bin/sh` supervisor.
    Process(Supervised),
    /// A container (`COORD_TESTKIT=containers`).
    Container(Contained),
}

impl Running {
    /// Starts the server of `kind` with the provider `COORD_TESTKIT` selects (a process in a
    /// network namespace: see [`contained`]).
    pub(crate) fn spawn(
        kind: Kind,
        dir: &Path,
        log: &Path,
        launch: &Launch,
        in_netns: bool,
    ) -> Result<Running, Error> {
        check_provider()?;
        if contained(in_netns) {
            Contained::spawn(kind, dir, log, launch).map(Running::Container)
        } else {
            Supervised::spawn(dir, log, launch).map(Running::Process)
        }
    }

    /// The server's pid (in a container: its host pid).
    pub(crate) fn pid(&self) -> u32 {
        match self {
            Running::Process(p) => p.pid(),
            Running::Container(c) => c.pid(),
        }
    }

    /// How the server ended, once it has.
    pub(crate) fn try_exit(&mut self) -> Option<String> {
        match self {
            Running::Process(p) => p.try_exit().map(|s| s.to_string()),
            Running::Container(c) => c.try_exit(),
        }
    }

    /// Whether the server is still running (possibly paused).
    pub(crate) fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Sends `sig` (see [`Contained::signal`] for containers); whether it was delivered.
    pub(crate) fn signal(&mut self, sig: libc::c_int) -> bool {
        match self {
            Running::Process(p) => p.signal(sig),
            Running::Container(c) => c.signal(sig),
        }
    }

    /// Waits (bounded) until a `SIGSTOP`ped server is stopped; `docker pause` returns when
    /// the container is frozen.
    pub(crate) fn wait_stopped(&self, timeout: Duration) -> bool {
        match self {
            Running::Process(p) => p.wait_stopped(timeout),
            Running::Container(_) => true,
        }
    }

    /// Freezes the server (`SIGSTOP`, `docker pause`) and waits (bounded by 5 s) until every
    /// thread is stopped, so a request sent afterwards is not answered.
    pub(crate) fn pause(&mut self) {
        if self.signal(libc::SIGSTOP) {
            self.wait_stopped(Duration::from_secs(5));
        }
    }

    /// Waits up to `timeout` for the server to exit.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<String> {
        match self {
            Running::Process(p) => p.wait_exit(timeout).map(|s| s.to_string()),
            Running::Container(c) => c.wait_exit(timeout),
        }
    }

    /// Kills the server (`SIGKILL`) and waits (bounded) until it is gone.
    pub(crate) fn kill_now(&mut self) {
        match self {
            Running::Process(p) => p.kill_now(),
            Running::Container(c) => c.kill_now(),
        }
    }
}
