//! The `zk://` URL: hosts, namespace (chroot), credentials and options.

use std::time::Duration;

use coord_core::registry::RegistryLayout;
use coord_core::url::Secret;
use coord_core::{ConnectUrl, Result};

/// ZooKeeper's default client port.
pub(crate) const DEFAULT_PORT: u16 = 2181;
/// The session TTL used when neither the URL nor the caller names one.
pub(crate) const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(10);
/// The bound of every call to the server when the URL does not name one.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Digest credentials. The password never appears in Debug output (a [`Secret`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) password: Secret,
}

impl Credentials {
    /// The `add_auth("digest", …)` payload.
    pub(crate) fn digest(&self) -> Vec<u8> {
        format!("{}:{}", self.user, self.password.expose()).into_bytes()
    }
}

/// The parsed connection settings.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// `host:port,host:port` as the ZooKeeper client takes it (without chroot).
    pub(crate) connect_string: String,
    /// The chroot (`""` for the server's root).
    pub(crate) namespace: String,
    pub(crate) credentials: Option<Credentials>,
    /// The requested TTL of the main client's session and of sessions opened without one.
    /// `None`: not given in the URL. The option is `session_ttl`, as on every backend
    /// (`session_timeout`, its old name, is still accepted).
    pub(crate) session_ttl: Option<Duration>,
    /// The bound of every call.
    pub(crate) timeout: Duration,
    /// The registry's layout (`registry=`).
    pub(crate) registry: RegistryLayout,
}

impl Config {
    /// Parses a `zk://[user:password@]host:port[,host:port…][/namespace][?options]` URL
    /// (`zookeeper://` is the same).
    pub(crate) fn parse(url: &str) -> Result<Config> {
        let mut u = ConnectUrl::parse(url)?;
        u.expect_scheme(&["zk", "zookeeper"])?;
        let connect_string = u.endpoints(DEFAULT_PORT)?.join(",");
        let credentials = u
            .take_credentials()?
            .map(|(user, password)| Credentials { user, password });
        u.alias("session_timeout", "session_ttl")?;
        let session_ttl = u.take_duration_in("session_ttl", ConnectUrl::POSITIVE)?;
        let timeout = u.take_positive_duration("timeout", DEFAULT_TIMEOUT)?;
        let registry = u.take_registry_layout()?;
        u.finish()?;
        Ok(Config {
            connect_string,
            namespace: u.namespace,
            credentials,
            session_ttl,
            timeout,
            registry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coord_core::Error;

    #[test]
    fn parses_full_url() {
        let c =
            Config::parse("zk://bob:s3cret@h1:2182,h2/app/x?session_ttl=4s&timeout=500ms").unwrap();
        assert_eq!(c.connect_string, "h1:2182,h2:2181");
        assert_eq!(c.namespace, "/app/x");
        assert_eq!(c.session_ttl, Some(Duration::from_secs(4)));
        assert_eq!(c.timeout, Duration::from_millis(500));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert_eq!(c.credentials.unwrap().digest(), b"bob:s3cret");
        let c = Config::parse("zookeeper://[::1]").unwrap();
        assert_eq!(c.connect_string, "[::1]:2181");
        assert_eq!((c.session_ttl, c.timeout), (None, DEFAULT_TIMEOUT));
    }

    #[test]
    fn session_timeout_is_an_alias_of_session_ttl() {
        let c = Config::parse("zk://h?session_timeout=4s").unwrap();
        assert_eq!(c.session_ttl, Some(Duration::from_secs(4)));
        let e = Config::parse("zk://h?session_timeout=4s&session_ttl=4s").unwrap_err();
        assert!(matches!(e, Error::InvalidUrl { .. }), "{e:?}");
    }
}
