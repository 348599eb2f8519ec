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

use coord_core::adapter::Backoff;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Cached bounds per connect string.
fn cache() -> &'static Mutex<HashMap<String, (Duration, Duration)>> {
    static CACHE: OnceLock<Mutex<HashMap<String, (Duration, Duration)>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The (min, max) session timeout the servers grant. Tries every host in turn, again and
/// again with a short back-off, until one answers or `timeout` has passed (a server that
/// refuses or drops connections for a moment, just started or restarting, is not "no
/// server"); `Err` tells why the last attempt failed.
pub(crate) async fn session_bounds(
    connect_string: &str,
    timeout: Duration,
) -> Result<(Duration, Duration), String> {
    if let Some(b) = cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(connect_string)
    {
        return Ok(*b);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    // Shorter than `Backoff::reconnect()`: a server that is just starting answers in < 1 s.
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    let mut last = String::from("no host tried");
    loop {
        for host in connect_string.split(',') {
            let min = tokio::time::timeout_at(deadline, granted(host, 1));
            let max = tokio::time::timeout_at(deadline, granted(host, i32::MAX));
            match tokio::join!(min, max) {
                (Ok(Ok(min)), Ok(Ok(max))) => {
                    let b = (min, max);
                    cache()
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(connect_string.to_owned(), b);
                    return Ok(b);
                }
                (Ok(Err(e)), _) | (_, Ok(Err(e))) => last = format!("{host}: {e}"),
                (Err(_), _) | (_, Err(_)) => last = format!("{host}: no answer in time"),
            }
        }
        let pause = backoff.next_delay();
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(last);
        }
        tokio::time::sleep(pause).await;
    }
}

/// Opens a session asking for `requested_ms`, returns the granted timeout and closes it.
async fn granted(host: &str, requested_ms: i32) -> Result<Duration, String> {
    let mut s = TcpStream::connect(host)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // ConnectRequest: protocolVersion, lastZxidSeen, timeOut, sessionId, passwd, readOnly.
    let mut body = Vec::with_capacity(45);
    body.extend_from_slice(&0i32.to_be_bytes());
    body.extend_from_slice(&0i64.to_be_bytes());
    body.extend_from_slice(&requested_ms.to_be_bytes());
    body.extend_from_slice(&0i64.to_be_bytes());
    body.extend_from_slice(&16i32.to_be_bytes());
    body.extend_from_slice(&[0u8; 16]);
    body.push(0);
    let len = i32::try_from(body.len()).map_err(|e| e.to_string())?;
    let sent = async {
        s.write_all(&len.to_be_bytes()).await?;
        s.write_all(&body).await
    };
    sent.await
        .map_err(|e| format!("send ConnectRequest: {e}"))?;
    let n = s
        .read_i32()
        .await
        .map_err(|e| format!("no ConnectResponse (not serving yet?): {e}"))?;
    let n = usize::try_from(n)
        .ok()
        .filter(|n| (8..=4096).contains(n))
        .ok_or_else(|| format!("unexpected ConnectResponse length {n}"))?;
    let mut resp = vec![0u8; n];
    s.read_exact(&mut resp)
        .await
        .map_err(|e| format!("read ConnectResponse: {e}"))?;
    let granted = resp
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_be_bytes)
        .ok_or("short ConnectResponse")?;
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
    u64::try_from(granted)
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("session refused (timeout {granted})"))
}
