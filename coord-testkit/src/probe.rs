//! Readiness checks over plain `std` TCP: ZooKeeper's `srvr` four-letter word (or a real
//! ConnectRequest handshake), etcd's `/health`, Consul's `/v1/status/leader`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::Kind;

/// `"http://host:port/x"` or `"host:port"` → `"host:port"`.
pub(crate) fn host_port(endpoint: &str) -> &str {
    let s = endpoint.trim();
    let s = s.split_once("://").map(|(_, rest)| rest).unwrap_or(s);
    s.split('/').next().unwrap_or(s)
}

fn remaining(deadline: Instant) -> Result<Duration, String> {
    let now = Instant::now();
    if now >= deadline {
        Err("timed out".to_string())
    } else {
        Ok((deadline - now).max(Duration::from_millis(1)))
    }
}

/// Connects to `addr` (all its resolved addresses in turn) within the deadline.
fn connect(addr: &str, deadline: Instant) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .collect();
    let mut last = format!("{addr} resolves to no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, remaining(deadline)?) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connect to {a}: {e}"),
        }
    }
    Err(last)
}

/// Sends `request` and reads until the peer closes or `max` bytes arrived, within the deadline.
fn exchange(addr: &str, request: &[u8], deadline: Instant, max: usize) -> Result<Vec<u8>, String> {
    let mut stream = connect(addr, deadline)?;
    let _ = stream.set_nodelay(true);
    stream
        .set_write_timeout(Some(remaining(deadline)?))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request)
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        stream
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() >= max {
                    return Ok(out);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no answer from {addr} in time"))
            }
            Err(e) => {
                // A reset after a complete answer still counts as the answer.
                if out.is_empty() {
                    return Err(format!("read from {addr}: {e}"));
                }
                return Ok(out);
            }
        }
    }
}

/// A plain HTTP/1.0 GET; returns the status code and the body.
pub(crate) fn http_get(addr: &str, path: &str, deadline: Instant) -> Result<(u16, String), String> {
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: coord-testkit\r\nAccept: */*\r\n\r\n"
    );
    let raw = exchange(addr, request.as_bytes(), deadline, 4 << 20)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP answer from {addr}: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("malformed HTTP status line from {addr}: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// ZooKeeper's `srvr` four-letter word.
fn zk_srvr(addr: &str, deadline: Instant) -> Result<String, String> {
    let raw = exchange(addr, b"srvr", deadline, 64 * 1024)?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// A real ZooKeeper ConnectRequest handshake (for servers that do not whitelist `srvr`); the
/// session it opens is closed again right away.
fn zk_handshake(addr: &str, deadline: Instant) -> Result<(), String> {
    let mut stream = connect(addr, deadline)?;
    stream
        .set_write_timeout(Some(remaining(deadline)?))
        .map_err(|e| e.to_string())?;
    // ConnectRequest: protocolVersion i32, lastZxidSeen i64, timeOut i32, sessionId i64,
    // passwd (i32 length + 16 bytes), readOnly bool.
    let mut body = Vec::new();
    body.extend_from_slice(&0i32.to_be_bytes());
    body.extend_from_slice(&0i64.to_be_bytes());
    body.extend_from_slice(&4000i32.to_be_bytes());
    body.extend_from_slice(&0i64.to_be_bytes());
    body.extend_from_slice(&16i32.to_be_bytes());
    body.extend_from_slice(&[0u8; 16]);
    body.push(0);
    let mut packet = (body.len() as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    stream
        .write_all(&packet)
        .map_err(|e| format!("write to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(remaining(deadline)?))
        .map_err(|e| e.to_string())?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).map_err(|e| {
        format!("ZooKeeper at {addr} closed the handshake (not serving requests?): {e}")
    })?;
    let len = i32::from_be_bytes(len);
    if !(20..=1024).contains(&len) {
        return Err(format!(
            "unexpected ConnectResponse length {len} from {addr}"
        ));
    }
    let mut resp = vec![0u8; len as usize];
    stream
        .read_exact(&mut resp)
        .map_err(|e| format!("read ConnectResponse from {addr}: {e}"))?;
    let timeout = i32::from_be_bytes(resp[4..8].try_into().expect("4 bytes"));
    let session = i64::from_be_bytes(resp[8..16].try_into().expect("8 bytes"));
    // Close the session: RequestHeader { xid: 1, type: closeSession (-11) }.
    let mut close = 8i32.to_be_bytes().to_vec();
    close.extend_from_slice(&1i32.to_be_bytes());
    close.extend_from_slice(&(-11i32).to_be_bytes());
    let _ = stream.write_all(&close);
    if timeout <= 0 || session == 0 {
        return Err(format!(
            "ZooKeeper at {addr} refused the session (timeout {timeout}, session {session:#x})"
        ));
    }
    Ok(())
}

/// Checks that one `endpoint` of a `kind` server answers as ready, within `timeout`.
pub(crate) fn probe(kind: Kind, endpoint: &str, timeout: Duration) -> Result<(), String> {
    let addr = host_port(endpoint);
    let deadline = Instant::now() + timeout;
    match kind {
        Kind::ZooKeeper => {
            let answer = zk_srvr(addr, deadline)?;
            if answer.contains("Mode: ") {
                return Ok(());
            }
            if answer.contains("not currently serving") {
                return Err(format!("ZooKeeper at {addr} is not serving requests yet"));
            }
            // `srvr` not whitelisted (or an empty answer): do a real handshake.
            zk_handshake(addr, deadline)
        }
        Kind::Etcd => {
            let (status, body) = http_get(addr, "/health", deadline)?;
            let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            if compact.contains("\"health\":\"true\"") {
                Ok(())
            } else {
                Err(format!(
                    "etcd at {addr}: GET /health -> {status} {}",
                    body.trim()
                ))
            }
        }
        Kind::Consul => {
            let (status, body) = http_get(addr, "/v1/status/leader", deadline)?;
            let leader = body.trim().trim_matches('"');
            if status != 200 || leader.is_empty() {
                return Err(format!(
                    "Consul at {addr}: GET /v1/status/leader -> {status} {} (no leader yet)",
                    body.trim()
                ));
            }
            Ok(())
        }
    }
}

/// Consul servers only: `node` is a voter in the Raft configuration (as the leader has it).
///
/// A server down long enough for autopilot to clean it up as dead (`cleanup_dead_servers`,
/// on by default) comes back as a non-voter and is promoted only after
/// `server_stabilization_time` (10 s): until then the datacenter tolerates no further
/// failure. Seen in `consul_servers_member_kills`: member 1 down for 11 s, "ready" 0.4 s after
/// its restart, member 2 killed next, and no leader for the 30 s the test waited.
pub(crate) fn consul_voter(addr: &str, node: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let (status, body) = http_get(addr, "/v1/operator/raft/configuration", deadline)?;
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let me = format!("\"Node\":\"{node}\"");
    let voter = compact
        .split('}')
        .any(|server| server.contains(&me) && server.contains("\"Voter\":true"));
    if status == 200 && voter {
        Ok(())
    } else {
        Err(format!(
            "Consul at {addr}: server {node} is not a Raft voter yet ({status} {})",
            body.trim()
        ))
    }
}

/// Consul only: the agent's own node is registered in the catalog with a passing
/// `serfHealth` check (sessions bound to `serfHealth` can be created only then).
pub(crate) fn consul_node_healthy(addr: &str, node: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let (status, body) = http_get(addr, &format!("/v1/health/node/{node}"), deadline)?;
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    if status == 200
        && compact.contains("\"CheckID\":\"serfHealth\"")
        && compact.contains("\"Status\":\"passing\"")
    {
        Ok(())
    } else {
        Err(format!(
            "Consul at {addr}: node {node} has no passing serfHealth check yet ({status} {})",
            body.trim()
        ))
    }
}

/// Checks that `endpoints` (comma-separated) of a `kind` deployment answer as ready: `Ok` as
/// soon as one of them does.
pub(crate) fn probe_any(kind: Kind, endpoints: &str, timeout: Duration) -> Result<(), Error> {
    let mut why = Vec::new();
    for ep in endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        match probe(kind, ep, timeout) {
            Ok(()) => return Ok(()),
            Err(e) => why.push(e),
        }
    }
    if why.is_empty() {
        why.push(format!("no endpoint in {endpoints:?}"));
    }
    Err(Error::new(format!(
        "{kind} at {endpoints} is not ready: {}",
        why.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_strips_scheme_and_path() {
        assert_eq!(host_port("http://127.0.0.1:2379"), "127.0.0.1:2379");
        assert_eq!(host_port(" 127.0.0.1:2181/chroot "), "127.0.0.1:2181");
        assert_eq!(host_port("127.0.0.1:8500"), "127.0.0.1:8500");
    }

    /// The handshake fallback (for servers whose `srvr` is not whitelisted) against a real
    /// ZooKeeper: ZooKeeper 3.8 always allows `srvr`, so call it directly.
    #[test]
    fn zk_handshake_opens_a_session() {
        let server = match crate::Server::zookeeper() {
            Ok(s) => s,
            Err(e) if e.is_not_installed() && !crate::require_backends() => {
                eprintln!("SKIPPED: ZooKeeper not available: {e}");
                return;
            }
            Err(e) => panic!("ZooKeeper did not start: {e}"),
        };
        let t0 = Instant::now();
        zk_handshake(&server.endpoint(), t0 + Duration::from_secs(5)).expect("handshake");
        eprintln!("handshake took {:?}", t0.elapsed());
        let err = zk_handshake("127.0.0.1:1", Instant::now() + Duration::from_secs(1))
            .expect_err("nothing listens on port 1");
        assert!(err.contains("127.0.0.1:1"), "{err}");
    }
}
