//! A server the test configures itself ([`CustomServer`]): settings the kit's own servers do not
//! have (TLS, ACLs), run by the same provider as every kit server, so it is a container with
//! `COORD_TESTKIT=containers`.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use crate::container::Running;
use crate::error::Error;
use crate::supervisor::Launch;
use crate::Kind;

/// How long [`Drop`] waits after `SIGTERM` before `SIGKILL`.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// An etcd or Consul server started with the test's own arguments, in the test's own dir.
///
/// As a process (the default provider) it is `binary args...` under the kit's supervisor, with
/// `dir` as its working dir; with `COORD_TESTKIT=containers` it is a container of the kind's
/// image (`COORD_ETCD_IMAGE`, `COORD_CONSUL_IMAGE`) running `etcd args...` or `consul args...`,
/// with host networking and `dir` mounted at the same path as its working dir, so files the
/// test wrote there (configuration, certificates) are where the arguments say. Either way it
/// is stopped on drop and when the test process exits however it exits. The server's output
/// goes to `log`. No readiness wait: the test knows what "ready" means for its configuration.
#[derive(Debug)]
pub struct CustomServer {
    kind: Kind,
    proc: Option<Running>,
}

impl CustomServer {
    /// Starts `kind`'s server with `args`. `binary` is the server binary a process runs (its
    /// image's own is used in a container). ZooKeeper is not supported: its settings live in
    /// the `zoo.cfg` that [`crate::Server::zookeeper`] writes.
    pub fn start(
        kind: Kind,
        binary: &Path,
        args: &[OsString],
        dir: &Path,
        log: &Path,
    ) -> Result<CustomServer, Error> {
        let env_remove_prefixes = match kind {
            Kind::Etcd => vec!["ETCD_", "ETCDCTL_"],
            Kind::Consul => vec!["CONSUL_"],
            Kind::ZooKeeper => {
                return Err(Error::new(
                    "CustomServer runs etcd or Consul; configure ZooKeeper through Server",
                ))
            }
        };
        let mut argv = vec![OsString::from(binary)];
        argv.extend(args.iter().cloned());
        let launch = Launch {
            argv,
            env: Vec::new(),
            env_remove_prefixes,
        };
        let proc = Running::spawn(kind, dir, log, &launch, false)?;
        Ok(CustomServer {
            kind,
            proc: Some(proc),
        })
    }

    /// A Consul dev agent (`consul agent -dev`, a single server) on 127.0.0.1 with the test's
    /// configuration file `config` (ports, TLS, ACLs), its output in `dir/agent.log`.
    pub fn consul_dev(binary: &Path, dir: &Path, config: &Path) -> Result<CustomServer, Error> {
        let mut args: Vec<OsString> = ["agent", "-dev", "-client", "127.0.0.1"]
            .into_iter()
            .chain(["-bind", "127.0.0.1", "-config-file"])
            .map(OsString::from)
            .collect();
        args.push(config.into());
        CustomServer::start(Kind::Consul, binary, &args, dir, &dir.join("agent.log"))
    }

    /// What this server is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The server's pid (in a container: its host pid); `None` once it was stopped.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Running::pid)
    }

    /// Whether the server is still running (possibly paused).
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Running::is_running)
    }

    /// Freezes the server (`SIGSTOP`; `docker pause` for a container) until
    /// [`resume`](CustomServer::resume): its sockets stay open, nothing answers.
    pub fn pause(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.pause();
        }
    }

    /// Lets a paused server run again.
    pub fn resume(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.signal(libc::SIGCONT);
        }
    }

    /// Stops the server: `SIGTERM` (resumed if paused), up to 10 s, then `SIGKILL`. Returns
    /// once it is gone; a no-op once stopped.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(libc::SIGTERM);
            p.signal(libc::SIGCONT);
            if p.wait_exit(STOP_GRACE).is_none() {
                p.kill_now();
            }
        }
    }
}

impl Drop for CustomServer {
    fn drop(&mut self) {
        self.stop();
    }
}
