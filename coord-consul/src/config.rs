//! The `consul://` URL and the options it carries.

use std::time::Duration;

use coord_core::registry::RegistryLayout;
use coord_core::url::{endpoint, url_err, Secret, TlsFiles};
use coord_core::{ConnectUrl, Result};

/// Consul's default HTTP port.
pub(crate) const DEFAULT_PORT: u16 = 8500;
/// The shortest session (check) TTL: the check is passed every TTL/3, so 1 s means a pass
/// every 333 ms; shorter TTLs turn scheduling hiccups into expiries.
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(1);
/// The longest session (check) TTL accepted.
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(3600);
/// The TTL of sessions opened without one (failover ≈ this long after a crash).
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(10);
/// Per-request timeout when the URL gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Blocking-query wait (`?wait=`) of watches when the URL gives none.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// The largest value written by default: what fits in one `/v1/txn` request whose body is
/// limited to 512 KiB (`txn_max_req_len`) with the value base64-encoded (4/3) plus the
/// operations' keys (up to ~2 KiB each).
pub const DEFAULT_MAX_VALUE_SIZE: usize = 360 * 1024;
/// The most HTTP connections one backend holds to its agent when the URL gives no
/// `max_connections`: well under the agent's default `limits.http_max_conns_per_client` (200),
/// so that several coord processes on one host fit too.
pub const DEFAULT_MAX_CONNECTIONS: usize = 32;
/// The fewest connections accepted: three requests in flight (a blocking query and two
/// ordinary requests) and one idle connection.
pub const MIN_MAX_CONNECTIONS: usize = 4;

/// A parsed `consul://[token@]host:port[/namespace][?options]` URL.
///
/// Options: `session_ttl` (default 10 s, 1 s – 1 h), `timeout` (per request, default 5 s),
/// `wait` (blocking-query wait of watches, default 10 s, at most 10 min), `token` (ACL token,
/// also accepted as the URL's user part), `max_value_size` (bytes, default 360 KiB; raise it
/// only together with the agent's `txn_max_req_len`), `max_connections` (the most HTTP connections
/// the backend holds to the agent, default [`DEFAULT_MAX_CONNECTIONS`], at least
/// [`MIN_MAX_CONNECTIONS`]; half of them, at least three, for requests in flight, of which a
/// quarter, at least two, is kept for ordinary requests (the check passes of many sessions) and
/// the rest carries the shared blocking queries of watches and session observers; the other
/// half for idle connections and those on their way back to the pool), `registry` (`native`, the default: the
/// agent's service catalog; `generic`: coord's key layout), and with the cargo feature `tls` the TLS
/// options shared with etcd ([`ConnectUrl::take_tls_files`]): `tls=true` (HTTPS), `ca` (PEM
/// file of extra trusted CAs), `cert` + `key` (PEM client certificate and key, for agents with
/// `verify_incoming_https`); any of `ca`/`cert`/`key` implies `tls=true`; `rejoin` (default
/// `true`; `false` turns it off): when the servers refuse a session because the agent's node is
/// marked failed (`serfHealth` critical, typically after a partition healed), ask the agent to
/// join the servers again (`PUT /v1/agent/join`, needs `agent:write`) instead of waiting for
/// Consul's gossip to reconnect on its own (every 30 s).
#[derive(Clone, Debug)]
pub struct Config {
    /// The agent's host.
    pub host: String,
    /// The agent's HTTP port.
    pub port: u16,
    /// The namespace (`""` or a path such as `/myapp`).
    pub namespace: String,
    /// The ACL token, sent as `X-Consul-Token`. Never printed.
    pub(crate) token: Option<Secret>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Default session TTL.
    pub session_ttl: Duration,
    /// Blocking-query wait of watches.
    pub wait: Duration,
    /// The largest value accepted.
    pub max_value_size: usize,
    /// The most HTTP connections held to the agent (`max_connections=`).
    pub max_connections: usize,
    /// HTTPS instead of HTTP.
    pub tls: bool,
    /// Extra trusted CA certificates (PEM file).
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate and key (PEM files).
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The registry's layout (`registry=`; the default is Consul's catalog).
    pub registry: RegistryLayout,
    /// Ask the agent to rejoin the servers when they refuse sessions on its node (`rejoin=`).
    pub rejoin: bool,
}

impl Config {
    /// Parses and checks a `consul://` URL (unknown options are an error).
    pub fn from_url(url: &str) -> Result<Config> {
        let mut u = ConnectUrl::parse(url)?;
        u.expect_scheme(&["consul"])?;
        if u.password.is_some() {
            return Err(url_err(
                "consul:// takes an ACL token as the user part (`token@host`), not user:password",
            ));
        }
        let (host, port) =
            match u.host_ports(DEFAULT_PORT)?.as_slice() {
                [one] => one.clone(),
                _ => return Err(url_err(
                    "consul:// talks to one agent (sessions are bound to that agent's checks): \
                     give exactly one host:port",
                )),
            };
        let token = match (u.username.take(), u.take("token")) {
            (Some(_), Some(_)) => {
                return Err(url_err("the token is given twice (user part and `token=`)"));
            }
            (a, b) => a.or(b).filter(|t| !t.is_empty()).map(Secret::new),
        };
        if let Some(t) = &token {
            if reqwest::header::HeaderValue::from_str(t.expose()).is_err() {
                return Err(url_err(
                    "the token has characters an HTTP header cannot carry",
                ));
            }
        }
        let timeout = u
            .take_duration_in("timeout", Duration::from_millis(10)..=Duration::MAX)?
            .unwrap_or(DEFAULT_TIMEOUT);
        let session_ttl = u
            .take_duration_in("session_ttl", MIN_SESSION_TTL..=MAX_SESSION_TTL)?
            .unwrap_or(DEFAULT_SESSION_TTL);
        let wait = u
            .take_duration_in(
                "wait",
                Duration::from_millis(100)..=Duration::from_secs(600),
            )?
            .unwrap_or(DEFAULT_WAIT);
        let max_value_size = u.take_size("max_value_size", DEFAULT_MAX_VALUE_SIZE, usize::MAX)?;
        let max_connections = u.take_size("max_connections", DEFAULT_MAX_CONNECTIONS, 100_000)?;
        if max_connections < MIN_MAX_CONNECTIONS {
            return Err(url_err(format!(
                "max_connections must be at least {MIN_MAX_CONNECTIONS}, not {max_connections}"
            )));
        }
        let files = u.take_tls_files()?;
        let registry = u.take_registry_layout()?;
        let rejoin = u.take_bool("rejoin")?.unwrap_or(true);
        if files.is_some() && !cfg!(feature = "tls") {
            return Err(url_err(
                "TLS options need the cargo feature `tls` of coord-consul (on by default)",
            ));
        }
        let tls = files.is_some();
        let TlsFiles { ca, cert, key } = files.unwrap_or_default();
        let client_cert = cert.zip(key);
        u.finish()?;
        Ok(Config {
            host,
            port,
            namespace: u.namespace,
            token,
            timeout,
            session_ttl,
            wait,
            max_value_size,
            max_connections,
            tls,
            ca,
            client_cert,
            registry,
            rejoin,
        })
    }

    /// The base URL of the agent's HTTP API.
    pub(crate) fn base_url(&self) -> Result<reqwest::Url> {
        let scheme = if self.tls { "https" } else { "http" };
        reqwest::Url::parse(&format!("{scheme}://{}/", endpoint(&self.host, self.port)))
            .map_err(|e| url_err(format!("bad host: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options() {
        let c = Config::from_url(
            "consul://s3cr3t@127.0.0.1:8501/app/x?session_ttl=2s&timeout=1s&wait=3s",
        )
        .unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 8501));
        assert_eq!(c.namespace, "/app/x");
        assert_eq!(c.session_ttl, Duration::from_secs(2));
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!(c.wait, Duration::from_secs(3));
        assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.token.as_ref().map(Secret::expose), Some("s3cr3t"));
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let c = Config::from_url("consul://h?token=abc").unwrap();
        assert_eq!(
            (c.port, c.token.as_ref().map(Secret::expose)),
            (8500, Some("abc"))
        );
        assert_eq!(c.namespace, "");
        let c = Config::from_url("consul://[::1]?tls=no").unwrap();
        assert_eq!(c.base_url().unwrap().as_str(), "http://[::1]:8500/");
        let c = Config::from_url("consul://h?max_connections=8").unwrap();
        assert_eq!(c.max_connections, 8);
        assert!(Config::from_url("consul://h?max_connections=3").is_err());
        assert!(Config::from_url("consul://h").unwrap().rejoin);
        assert!(!Config::from_url("consul://h?rejoin=false").unwrap().rejoin);
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_options_as_on_etcd() {
        let c = Config::from_url("consul://h?ca=/ca.pem&cert=/c.pem&key=/k.pem").unwrap();
        assert!(c.tls);
        assert_eq!(c.ca.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert_eq!(c.client_cert, Some(("/c.pem".into(), "/k.pem".into())));
        assert_eq!(c.base_url().unwrap().scheme(), "https");
        let c = Config::from_url("consul://h?tls=true").unwrap();
        assert!(c.tls && c.ca.is_none() && c.client_cert.is_none());
    }
}
