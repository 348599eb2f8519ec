//! Runs a server process under a small `/bin/sh` supervisor so that it can never outlive the
//! test process.
//!
//! ```text
//! test process ──(lifeline pipe: write end)──┐
//!    │ spawns                                 │
//!    ▼                                        ▼ (read end, stdin of the supervisor)
//! sh supervisor ──forks──► server (setpriv --pdeathsig KILL, output → log file)
//!    │
//!    └──forks──► watcher: reads the lifeline until EOF
//! ```
//!
//! The test process holds the only write end of the lifeline pipe (close-on-exec, so no other
//! child inherits it). When the test process exits for any reason, including `SIGKILL`, the
//! kernel closes that end, the watcher reads EOF, marks the data dir, sends the server `SIGTERM`
//! (and `SIGCONT`, in case it was paused), waits up to 5 s, then `SIGKILL`s it. The supervisor
//! reaps the server, sees the mark and removes the data dir. If the supervisor itself is killed,
//! the server gets `SIGKILL` from the kernel (`setpriv --pdeathsig`).
//!
//! The supervisor prints the server's pid on its stdout, so the test process signals the real
//! server (`stop`, `kill`, `pause`, `resume`), never the wrapper. When the server exits for any
//! other reason (stopped or killed by the test), the supervisor kills the watcher and exits with
//! the server's status: the supervisor's exit is how the test process learns the server is
//! gone (and reaped, so its pid is free).

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::Error;

/// The supervisor script. Arguments: `$1` data dir, `$2` log file, then the server's argv.
const SUPERVISOR: &str = r#"
dir=$1; log=$2; shift 2
exec 3<&0 0</dev/null
"$@" 3<&- >>"$log" 2>&1 &
pid=$!
echo "$pid"
exec 1>/dev/null
(
  while read -r _ <&3; do :; done
  : >"$dir/.coord-testkit-lifeline-lost"
  kill -TERM "$pid" 2>/dev/null
  kill -CONT "$pid" 2>/dev/null
  i=0
  while [ "$i" -lt 50 ] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; i=$((i+1)); done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  exit 0
) &
watcher=$!
exec 3<&-
wait "$pid"
rc=$?
if [ -e "$dir/.coord-testkit-lifeline-lost" ]; then
  wait "$watcher"
  rm -rf "$dir"
else
  kill "$watcher" 2>/dev/null
fi
exit "$rc"
"#;

const LIFELINE_MARK: &str = ".coord-testkit-lifeline-lost";

/// A server process running under the supervisor.
#[derive(Debug)]
pub(crate) struct Supervised {
    wrapper: Child,
    pid: u32,
    /// The write end of the lifeline; dropping it makes the watcher stop the server.
    lifeline: Option<ChildStdin>,
    exit: Option<ExitStatus>,
}

/// What to run: program and arguments, extra environment, and environment prefixes to clear.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) argv: Vec<OsString>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) env_remove_prefixes: Vec<&'static str>,
}

impl Supervised {
    /// Starts `launch` under the supervisor; output goes to `log`, `dir` is removed by the
    /// supervisor if the test process goes away.
    pub(crate) fn spawn(dir: &Path, log: &Path, launch: &Launch) -> Result<Supervised, Error> {
        let _ = std::fs::remove_file(dir.join(LIFELINE_MARK));
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::new(format!("cannot open log file {}: {e}", log.display())))?;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(SUPERVISOR)
            .arg("coord-testkit-supervisor")
            .arg(dir)
            .arg(log);
        let setpriv = Path::new("/usr/bin/setpriv");
        if crate::util::is_executable(setpriv) {
            cmd.arg(setpriv).arg("--pdeathsig").arg("KILL").arg("--");
        }
        cmd.args(&launch.argv)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            // Own process group: a Ctrl-C in the terminal reaches the test process only; the
            // servers are then stopped through the lifeline.
            .process_group(0);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if launch.env_remove_prefixes.iter().any(|p| k.starts_with(p)) {
                cmd.env_remove(&key);
            }
        }
        for (k, v) in &launch.env {
            cmd.env(k, v);
        }
        let program = launch
            .argv
            .first()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut wrapper = cmd
            .spawn()
            .map_err(|e| Error::new(format!("cannot spawn /bin/sh to supervise {program}: {e}")))?;
        let lifeline = wrapper.stdin.take();
        let stdout = wrapper.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let pid = match read.ok().and_then(|_| line.trim().parse::<u32>().ok()) {
            Some(pid) if pid > 0 => pid,
            _ => {
                let _ = wrapper.kill();
                let _ = wrapper.wait();
                return Err(Error::with_log(
                    format!("the supervisor of {program} did not report a pid (got {line:?})"),
                    log,
                ));
            }
        };
        Ok(Supervised {
            wrapper,
            pid,
            lifeline,
            exit: None,
        })
    }

    /// The server's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The server's exit status once it has exited (and the supervisor with it).
    pub(crate) fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.wrapper.try_wait() {
                self.exit = Some(status);
                // The server is gone: close the lifeline so the watcher (already killed) has
                // nothing left to read from.
                self.lifeline = None;
            }
        }
        self.exit
    }

    /// Whether the server is still running (possibly paused).
    pub(crate) fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Sends `sig` to the server, if it is still our running child's child.
    pub(crate) fn signal(&mut self, sig: libc::c_int) -> bool {
        if !self.is_running() || !self.pid_is_ours() {
            return false;
        }
        // SAFETY: kill(2) with a pid we checked belongs to our server; no memory is involved.
        unsafe { libc::kill(self.pid as libc::pid_t, sig) == 0 }
    }

    /// Waits (bounded) until every thread of the server is stopped after `SIGSTOP`: the
    /// signal is asynchronous, and a busy thread may otherwise still answer a request.
    pub(crate) fn wait_stopped(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.all_threads_stopped() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn all_threads_stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            // No /proc (or the process is gone): nothing to wait for.
            return true;
        };
        tasks.flatten().all(|task| {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                return true; // the thread exited meanwhile
            };
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].trim_start().chars().next());
            matches!(state, Some('T' | 't' | 'Z' | 'X') | None)
        })
    }

    /// Whether `pid` is still the server started by our supervisor (guards against pid reuse
    /// between the server's exit and the supervisor's).
    fn pid_is_ours(&self) -> bool {
        let stat = match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(s) => s,
            // No /proc: trust the supervisor still running.
            Err(_) => return std::fs::metadata("/proc/self").is_err(),
        };
        // Field 4 (ppid) follows the ")" that ends the command name.
        let after = match stat.rfind(')') {
            Some(i) => &stat[i + 1..],
            None => return false,
        };
        let mut fields = after.split_whitespace();
        let _state = fields.next();
        fields.next().and_then(|p| p.parse::<u32>().ok()) == Some(self.wrapper.id())
    }

    /// Waits up to `timeout` for the server (and its supervisor) to exit.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Graceful stop: `SIGTERM` (plus `SIGCONT` in case it is paused), wait up to `grace`,
    /// then `SIGKILL`. Always returns with the server gone, or after a last bounded wait.
    pub(crate) fn terminate(&mut self, grace: Duration) {
        if !self.is_running() {
            return;
        }
        self.signal(libc::SIGTERM);
        self.signal(libc::SIGCONT);
        if self.wait_exit(grace).is_some() {
            return;
        }
        self.kill_now();
    }

    /// `SIGKILL`, then wait (bounded) until the supervisor has reaped it.
    pub(crate) fn kill_now(&mut self) {
        if !self.is_running() {
            return;
        }
        self.signal(libc::SIGKILL);
        if self.wait_exit(Duration::from_secs(10)).is_some() {
            return;
        }
        // Should not happen: the supervisor did not exit after its server was killed. Kill the
        // whole process group (supervisor, watcher, server) and reap the supervisor.
        // SAFETY: kill(2) on the process group we created for this supervisor.
        unsafe {
            libc::kill(-(self.wrapper.id() as libc::pid_t), libc::SIGKILL);
        }
        if let Ok(status) = self.wrapper.wait() {
            self.exit = Some(status);
        }
        self.lifeline = None;
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(10));
    }
}
