//! Learns the server's session-timeout bounds (`minSessionTimeout`, `maxSessionTimeout`) by
//! asking for an impossibly short and an impossibly long session over the raw protocol and
//! reading what the server grants; each probe session is closed right away.
//!
//! The Java-style client cannot do this safely: it derives its own connect deadline from the
//! requested timeout (a 1 ms request would give it 8 ms to connect). The results are cached
//! per host list for the life of the process.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Cached bounds per connect string.
fn cache() -> &'static Mutex<HashMap<String, (Duration, Duration)>> {
    static CACHE: OnceLock<Mutex<HashMap<String, (Duration, Duration)>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The (min, max) session timeout the servers grant, or `None` if no server answered.
pub(crate) async fn session_bounds(
    connect_string: &str,
    timeout: Duration,
) -> Option<(Duration, Duration)> {
    if let Some(b) = cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(connect_string)
    {
        return Some(*b);
    }
    for host in connect_string.split(',') {
        let min = tokio::time::timeout(timeout, granted(host, 1));
        let max = tokio::time::timeout(timeout, granted(host, i32::MAX));
        if let (Ok(Some(min)), Ok(Some(max))) = tokio::join!(min, max) {
            let b = (min, max);
            cache()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(connect_string.to_owned(), b);
            return Some(b);
        }
    }
    None
}

/// Opens a session asking for `requested_ms`, returns the granted timeout and closes it.
async fn granted(host: &str, requested_ms: i32) -> Option<Duration> {
    let mut s = TcpStream::connect(host).await.ok()?;
    // ConnectRequest: protocolVersion, lastZxidSeen, timeOut, sessionId, passwd, readOnly.
    let mut body = Vec::with_capacity(45);
    body.extend_from_slice(&0i32.to_be_bytes());
    body.extend_from_slice(&0i64.to_be_bytes());
    body.extend_from_slice(&requested_ms.to_be_bytes());
    body.extend_from_slice(&0i64.to_be_bytes());
    body.extend_from_slice(&16i32.to_be_bytes());
    body.extend_from_slice(&[0u8; 16]);
    body.push(0);
    let len = i32::try_from(body.len()).ok()?;
    s.write_all(&len.to_be_bytes()).await.ok()?;
    s.write_all(&body).await.ok()?;
    let n = usize::try_from(s.read_i32().await.ok()?).ok()?;
    if !(8..=4096).contains(&n) {
        return None;
    }
    let mut resp = vec![0u8; n];
    s.read_exact(&mut resp).await.ok()?;
    let granted = i32::from_be_bytes(resp.get(4..8)?.try_into().ok()?);
    // closeSession: RequestHeader { xid: 1, type: -11 }.
    let mut close = Vec::with_capacity(12);
    close.extend_from_slice(&8i32.to_be_bytes());
    close.extend_from_slice(&1i32.to_be_bytes());
    close.extend_from_slice(&(-11i32).to_be_bytes());
    if s.write_all(&close).await.is_ok() {
        // Wait for the reply (or EOF) so the session is gone before we report.
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(1), s.read(&mut sink)).await;
    }
    let ms = u64::try_from(granted).ok().filter(|ms| *ms > 0)?;
    Some(Duration::from_millis(ms))
}
