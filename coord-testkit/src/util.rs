//! Small helpers: temp dirs, free ports, log tails, binary lookup.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Error;

/// Every port this process has handed out to a server. Never shrinks: a stopped server keeps its
/// ports for a restart, and two servers started at the same time never get the same port.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Picks `n` distinct free TCP ports on 127.0.0.1 that this process has not handed out before.
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>, Error> {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    // Keep the listeners open until all `n` are picked, so the OS cannot return one twice.
    let mut listeners = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    let mut attempts = 0;
    while ports.len() < n {
        attempts += 1;
        if attempts > 200 + 10 * n {
            return Err(Error::new(format!(
                "could not find {n} free ports on 127.0.0.1"
            )));
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| Error::new(format!("cannot bind 127.0.0.1:0 to pick a port: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::new(format!("local_addr of a bound socket: {e}")))?
            .port();
        if handed.insert(port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    Ok(ports)
}

static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates a new, unique directory under the system temp dir (`TMPDIR`), named
/// `coord-testkit-<label>-<pid>-<n>-<nanos>`.
pub(crate) fn make_temp_dir(label: &str) -> Result<PathBuf, Error> {
    let base = std::env::temp_dir();
    for _ in 0..100 {
        let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!(
            "coord-testkit-{label}-{}-{n}-{nanos:08x}",
            std::process::id()
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(Error::new(format!(
                    "cannot create a temp dir under {}: {e}",
                    base.display()
                )))
            }
        }
    }
    Err(Error::new(format!(
        "cannot create a unique temp dir under {}",
        base.display()
    )))
}

/// The last `n` lines of a (log) file, at most 64 KiB of it; a note if it cannot be read.
pub(crate) fn tail_lines(path: &Path, n: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let read = || -> io::Result<String> {
        let mut f = fs::File::open(path)?;
        let len = f.metadata()?.len();
        if len > MAX {
            f.seek(SeekFrom::Start(len - MAX))?;
        }
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(n);
        Ok(lines[start..].join("\n"))
    };
    read().unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// Looks `name` up in `PATH`.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// Whether `p` is an executable regular file (following symlinks).
pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A non-empty environment variable.
pub(crate) fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Finds a server binary: the env override `env_var` (used as is, no fallback), else
/// `<tools>/bin/<name>`, else `<tools>/<sub>`, else `PATH`.
pub(crate) fn find_binary(name: &str, env_var: &str, tools_sub: &str) -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(Error::not_installed(format!(
                "{name}: {env_var}={} is not an executable file",
                p.display()
            )))
        };
    }
    let tools = crate::tools_dir();
    let candidates = [tools.join("bin").join(name), tools.join(tools_sub)];
    if let Some(p) = candidates.iter().find(|p| is_executable(p)) {
        return Ok(p.clone());
    }
    if let Some(p) = which(name) {
        return Ok(p);
    }
    Err(Error::not_installed(format!(
        "{name} binary not found (looked at {}, {}, and PATH; set {env_var} to override); \
         run scripts/install-backends.sh to install it",
        candidates[0].display(),
        candidates[1].display()
    )))
}

/// Start-up bound for servers: `COORD_TESTKIT_START_TIMEOUT_SECS` or 30 s.
pub(crate) fn start_timeout() -> Duration {
    env_nonempty("COORD_TESTKIT_START_TIMEOUT_SECS")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(30))
}

/// Whether `COORD_TESTKIT_KEEP` asks to keep data dirs (for debugging).
pub(crate) fn keep_dirs() -> bool {
    env_flag("COORD_TESTKIT_KEEP")
}

/// A boolean environment flag: set and not one of "", "0", "false", "no", "off".
pub(crate) fn env_flag(name: &str) -> bool {
    match std::env::var(name) {
        Ok(v) => !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "off"
        ),
        Err(_) => false,
    }
}
