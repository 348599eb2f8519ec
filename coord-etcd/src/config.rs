//! The `etcd://` URL and what it configures.

use std::time::Duration;

use coord_core::registry::RegistryLayout;
use coord_core::url::{url_err, Secret};
use coord_core::{ConnectUrl, Result};

/// etcd's default port.
pub(crate) const DEFAULT_PORT: u16 = 2379;
/// etcd's default `--max-request-bytes` (1.5 MiB).
const SERVER_MAX_REQUEST: usize = 1536 * 1024;
/// Room left in a request for the keys, the compares and the protobuf framing of a create or
/// set transaction (keys can be 2 KiB each and appear several times).
const REQUEST_HEADROOM: usize = 16 * 1024;
/// The largest value accepted by default: etcd's request limit minus the headroom.
pub(crate) const DEFAULT_MAX_VALUE: usize = SERVER_MAX_REQUEST - REQUEST_HEADROOM;

/// TLS files from the URL (`tls`, `ca`, `cert`, `key`, parsed as on every backend).
pub(crate) use coord_core::url::TlsFiles;

/// Everything an `etcd://` URL says (the password is a [`Secret`]: never printed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    /// `host:port` entries (IPv6 hosts in brackets).
    pub(crate) endpoints: Vec<String>,
    pub(crate) namespace: String,
    pub(crate) user: Option<(String, Secret)>,
    pub(crate) session_ttl: Duration,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalive: Duration,
    pub(crate) max_value_size: usize,
    pub(crate) tls: Option<TlsFiles>,
    /// The registry's layout (`registry=`).
    pub(crate) registry: RegistryLayout,
}

impl Config {
    /// Parses `etcd://[user:password@]host:port[,host:port…][/namespace][?options]`.
    pub(crate) fn parse(url: &str) -> Result<Config> {
        let mut u = ConnectUrl::parse(url)?;
        u.expect_scheme(&["etcd"])?;
        let endpoints = u.endpoints(DEFAULT_PORT)?;
        let user = u.take_credentials()?;
        let session_ttl = u.take_positive_duration("session_ttl", Duration::from_secs(10))?;
        let timeout = u.take_positive_duration("timeout", Duration::from_secs(5))?;
        let connect_timeout =
            u.take_positive_duration("connect_timeout", Duration::from_secs(1).min(timeout))?;
        let keepalive = u.take_positive_duration("keepalive", Duration::from_secs(5))?;
        let max_value_size = u.take_size("max_value_size", DEFAULT_MAX_VALUE, usize::MAX)?;
        let tls = u.take_tls_files()?;
        let registry = u.take_registry_layout()?;
        if tls.is_some() && !cfg!(feature = "tls") {
            return Err(url_err(
                "TLS options need coord-etcd's cargo feature `tls` (enabled by default)",
            ));
        }
        u.finish()?;
        Ok(Config {
            endpoints,
            namespace: u.namespace,
            user,
            session_ttl,
            timeout,
            connect_timeout,
            keepalive,
            max_value_size,
            tls,
            registry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let c = Config::parse(
            "etcd://bob:s3cret@h1:1,[::1],h3/app/x?session_ttl=2s&timeout=500ms&max_value_size=10",
        )
        .unwrap();
        assert_eq!(c.endpoints, ["h1:1", "[::1]:2379", "h3:2379"]);
        assert_eq!(c.namespace, "/app/x");
        assert_eq!(c.session_ttl, Duration::from_secs(2));
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.max_value_size, 10);
        assert_eq!(c.tls, None);
        let dbg = format!("{c:?}");
        assert!(
            dbg.contains("(\"bob\", ***)") && !dbg.contains("s3cret"),
            "{dbg}"
        );
        let d = Config::parse("etcd://h").unwrap();
        assert_eq!(d.namespace, "");
        assert_eq!(d.max_value_size, DEFAULT_MAX_VALUE);
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_options() {
        let c = Config::parse("etcd://h?ca=/ca.pem&cert=/c.pem&key=/k.pem").unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.ca.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert!(Config::parse("etcd://h?tls=true").unwrap().tls.is_some());
    }
}
