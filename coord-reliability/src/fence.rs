//! A fenced resource: accepts a write only if its token is at least the largest seen so far.
//!
//! Protocol (one request per line, one answer per line):
//!
//! ```text
//! W <writer> <token>\n   ->   OK <max>\n | REJECT <max>\n | ERR <why>\n
//! ```
//!
//! Every attempt is logged (writer, token, accepted, time) for the checker.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One write attempt as the resource saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceWrite {
    /// Order of arrival (0, 1, 2, …).
    pub seq: u64,
    /// Who wrote (the contender's id).
    pub writer: String,
    /// The fencing token sent.
    pub token: u64,
    /// Whether the write was accepted.
    pub accepted: bool,
    /// When it arrived ([`crate::now_us`]).
    pub t_us: u64,
}

#[derive(Default)]
struct State {
    max: Option<u64>,
    log: Vec<FenceWrite>,
}

/// A running fenced resource. Dropping it stops accepting connections.
pub struct FencedResource {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FencedResource {
    /// Starts the resource on `127.0.0.1:0` (a thread per connection).
    pub fn start() -> std::io::Result<FencedResource> {
        FencedResource::start_on(TcpListener::bind("127.0.0.1:0")?)
    }

    /// Starts the resource on a listener the caller bound (e.g. inside a network namespace
    /// that partitioned processes still reach).
    pub fn start_on(listener: TcpListener) -> std::io::Result<FencedResource> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let st = st.clone();
                        std::thread::spawn(move || serve(conn, st));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(FencedResource { addr, state, stop })
    }

    /// The address to connect to (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every write attempt so far, in arrival order.
    pub fn log(&self) -> Vec<FenceWrite> {
        self.lock().log.clone()
    }

    /// The largest token accepted so far.
    pub fn max_token(&self) -> Option<u64> {
        self.lock().max
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one write (also used by the protocol handler): accepted iff `token` is at least
    /// the largest token seen.
    pub fn write(&self, writer: &str, token: u64) -> bool {
        apply(&self.state, writer, token)
    }
}

impl Drop for FencedResource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn apply(state: &Mutex<State>, writer: &str, token: u64) -> bool {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let accepted = s.max.map_or(true, |m| token >= m);
    if accepted {
        s.max = Some(token);
    }
    let seq = s.log.len() as u64;
    s.log.push(FenceWrite {
        seq,
        writer: writer.to_owned(),
        token,
        accepted,
        t_us: crate::now_us(),
    });
    accepted
}

fn serve(conn: TcpStream, state: Arc<Mutex<State>>) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let reader = BufReader::new(conn);
    for line in reader.lines() {
        let Ok(line) = line else { return };
        let mut parts = line.split_whitespace();
        let answer = match (
            parts.next(),
            parts.next(),
            parts.next().map(str::parse::<u64>),
        ) {
            (Some("W"), Some(writer), Some(Ok(token))) => {
                let ok = apply(&state, writer, token);
                let max = state.lock().unwrap_or_else(|p| p.into_inner()).max;
                let max = max.map(|m| m.to_string()).unwrap_or_default();
                if ok {
                    format!("OK {max}\n")
                } else {
                    format!("REJECT {max}\n")
                }
            }
            _ => "ERR expected `W <writer> <token>`\n".to_owned(),
        };
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_smaller_tokens_over_tcp() {
        let f = FencedResource::start().expect("start");
        let mut c = TcpStream::connect(f.addr()).expect("connect");
        let mut r = BufReader::new(c.try_clone().expect("clone"));
        let mut ask = |w: &str, t: u64| {
            c.write_all(format!("W {w} {t}\n").as_bytes())
                .expect("write");
            let mut l = String::new();
            r.read_line(&mut l).expect("read");
            l
        };
        assert!(ask("a", 5).starts_with("OK"));
        assert!(ask("a", 5).starts_with("OK"));
        assert!(ask("b", 7).starts_with("OK"));
        assert!(ask("a", 5).starts_with("REJECT 7"));
        assert!(ask("x", 0).starts_with("REJECT"));
        let log = f.log();
        assert_eq!(log.len(), 5);
        assert_eq!(log.iter().filter(|w| w.accepted).count(), 3);
    }
}
