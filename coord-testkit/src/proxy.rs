//! A TCP proxy on 127.0.0.1 that can cut every connection through it and refuse new ones: it
//! breaks one client's connections (and the watch streams on them) while the server and every
//! other client go on.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A loopback TCP proxy to one target. Threads, not tasks: usable from any test runtime.
/// Dropping it stops it and closes every connection through it.
#[derive(Debug)]
pub struct Proxy {
    addr: String,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct State {
    enabled: AtomicBool,
    stopping: AtomicBool,
    /// Both ends of every connection so far, to cut them.
    conns: Mutex<Vec<TcpStream>>,
}

impl State {
    fn cut_all(&self) {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|p| p.into_inner()));
        for c in conns {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `target` (`host:port`).
    pub fn start(target: &str) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let state = Arc::new(State {
            enabled: AtomicBool::new(true),
            ..State::default()
        });
        let (st, target) = (state.clone(), target.to_owned());
        let accept = std::thread::Builder::new()
            .name("coord-testkit-proxy".into())
            .spawn(move || {
                for inbound in listener.incoming() {
                    if st.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(inbound) = inbound else { continue };
                    if !st.enabled.load(Ordering::SeqCst) {
                        continue; // dropped at once: refused
                    }
                    let Ok(outbound) = TcpStream::connect(&target) else {
                        continue;
                    };
                    let clones = (
                        inbound.try_clone(),
                        outbound.try_clone(),
                        inbound.try_clone(),
                        outbound.try_clone(),
                    );
                    let (Ok(i2), Ok(o2), Ok(i3), Ok(o3)) = clones else {
                        continue;
                    };
                    st.conns
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend([i3, o3]);
                    std::thread::spawn(move || pipe(inbound, o2));
                    std::thread::spawn(move || pipe(outbound, i2));
                }
            })?;
        Ok(Proxy {
            addr,
            state,
            accept: Some(accept),
        })
    }

    /// The proxy's `127.0.0.1:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Cuts every connection through the proxy and refuses new ones until [`Proxy::enable`].
    pub fn disable(&self) {
        self.state.enabled.store(false, Ordering::SeqCst);
        self.state.cut_all();
    }

    /// Accepts connections again.
    pub fn enable(&self) {
        self.state.enabled.store(true, Ordering::SeqCst);
    }
}

/// Copies one direction until either side ends, then ends both.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        self.state.cut_all();
        // Wake the accept loop so that it sees `stopping`.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn forwards_cuts_refuses_and_recovers() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for s in echo.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let mut w = s;
                    let _ = io::copy(&mut r, &mut w);
                });
            }
        });
        let proxy = Proxy::start(&target).unwrap();
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        proxy.disable();
        // The cut connection ends (EOF or error), and a new one gets nothing through.
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        let mut refused = TcpStream::connect(proxy.addr()).unwrap();
        let _ = refused.write_all(b"x");
        let mut one = [0u8; 1];
        assert!(matches!(refused.read(&mut one), Ok(0) | Err(_)));
        proxy.enable();
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.write_all(b"pong").unwrap();
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
    }
}
