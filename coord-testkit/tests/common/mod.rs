//! Helpers shared by the test kit's own tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use coord_testkit::{require_backends, Error};

/// Runs a start function; a missing binary skips the test (loudly) unless backends are
/// required, any other failure fails it.
pub fn start<T>(what: &str, f: impl FnOnce() -> Result<T, Error>) -> Option<T> {
    let t0 = Instant::now();
    match f() {
        Ok(v) => {
            eprintln!("{what} started in {:?}", t0.elapsed());
            Some(v)
        }
        Err(e) if e.is_not_installed() && !require_backends() => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {what} not available: {e} (COORD_REQUIRE_BACKENDS=1 makes this a failure)"
            );
            None
        }
        Err(e) => panic!("{what} did not start: {e}"),
    }
}

/// The processes whose command line contains `needle`, as "pid cmdline" lines (`pgrep -af`;
/// a scan of /proc when pgrep is missing).
pub fn processes_matching(needle: &str) -> Vec<String> {
    match Command::new("pgrep")
        .arg("-af")
        .arg("--")
        .arg(needle)
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
        Err(_) => {
            let mut found = Vec::new();
            let me = std::process::id().to_string();
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == me || !name.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
                    let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
                    if cmd.contains(needle) {
                        found.push(format!("{name} {cmd}"));
                    }
                }
            }
            found
        }
    }
}

/// Waits (bounded) until no process's command line contains `needle`; returns the leftovers.
pub fn wait_no_processes(needle: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = processes_matching(needle);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The command line of `pid` (NUL-separated args joined with spaces).
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .map(|i| !stat[i + 1..].trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// A raw HTTP/1.0 request; returns (status, body).
pub fn http(
    endpoint: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let addr = endpoint.parse().expect("host:port");
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {endpoint}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// ZooKeeper's `srvr` answer (empty on any error).
pub fn zk_srvr(endpoint: &str, timeout: Duration) -> String {
    let run = || -> std::io::Result<String> {
        let addr = endpoint.parse().expect("host:port");
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"srvr")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    run().unwrap_or_default()
}

/// Whether a data dir is gone or empty.
pub fn dir_gone(p: &Path) -> bool {
    !p.exists()
}
