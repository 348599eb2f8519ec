//! The connection URL shared by every backend.
//!
//! `scheme://[user[:password]@]host:port[,host:port…][/namespace][?option=value&…]`
//!
//! Each backend checks its scheme with [`ConnectUrl::expect_scheme`], takes the options it knows
//! with [`ConnectUrl::take`] and the typed `take_*` helpers, and then calls
//! [`ConnectUrl::finish`], which rejects whatever is left: an unknown option is an error, not
//! ignored, and names the closest option the backend takes (`unknown option `sesion_ttl` (did
//! you mean `session_ttl`?)`). Credentials are never shown by `Debug`, `Display` or an error.
//!
//! One name per meaning on every backend: `session_ttl` (the TTL of sessions opened without
//! one), `timeout` (the bound of every call), `max_value_size` (bytes), `registry` (the
//! registry's layout, see [`ConnectUrl::take_registry_layout`]), and for TLS `tls`, `ca`,
//! `cert`, `key` (see [`ConnectUrl::take_tls_files`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::path::Path;

/// A parsed connection URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectUrl {
    /// The scheme, lower-cased (`mem`, `zk`, `etcd`, `consul`).
    pub scheme: String,
    /// The user name, percent-decoded.
    pub username: Option<String>,
    /// The password, percent-decoded. Never printed.
    pub password: Option<String>,
    /// The comma-separated authority entries (`host:port`, or the store name for `mem`).
    pub hosts: Vec<String>,
    /// The namespace: `""` for none, else a valid [`Path`] such as `/myapp`.
    pub namespace: String,
    options: BTreeMap<String, String>,
    /// The option names the backend asked for (taken or not): the known options, for the
    /// suggestion of [`ConnectUrl::finish`].
    known: BTreeSet<String>,
}

/// The TLS files of a URL (`ca`, `cert`, `key`): see [`ConnectUrl::take_tls_files`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the CA certificates to trust (`None`: the system's roots).
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate (always together with `key`).
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's key (always together with `cert`).
    pub key: Option<PathBuf>,
}

/// Names `endpoint` (a `host:port`, a list of them or a connect string — never credentials)
/// in a [`Error::ConnectionLost`] or [`Error::Timeout`] whose message does not name it yet;
/// other errors are returned unchanged.
pub fn with_endpoint(mut e: Error, endpoint: &str) -> Error {
    if let Error::ConnectionLost { message, .. } | Error::Timeout { message, .. } = &mut e {
        if !endpoint.is_empty() && !message.contains(endpoint) {
            message.push_str(&format!(" (endpoint {endpoint})"));
        }
    }
    e
}

/// The edit (Levenshtein) distance between `a` and `b`, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The known option closest to `name`, if it is close enough to be a typo: at most one edit
/// for names of up to 5 characters, two for longer ones.
fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= (k.chars().count() / 3).clamp(1, 2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// An [`Error::InvalidUrl`] with `reason`, which must not carry credentials.
pub fn url_err(reason: impl Into<String>) -> Error {
    Error::InvalidUrl {
        reason: reason.into(),
    }
}

/// `host:port`, with an IPv6 host in brackets (`[::1]:2379`).
pub fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A secret from a URL (a password, a token): `Debug` prints `***`, so a configuration that
/// holds one can derive `Debug`; [`Secret::expose`] gives the text to the one place that
/// sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

fn percent_decode(s: &str, what: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| url_err(format!("bad percent-escape in the {what}")))?;
                out.push(hex);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| url_err(format!("the {what} is not UTF-8")))
}

impl ConnectUrl {
    /// Parses a URL. Only the syntax is checked here; the backend checks hosts and options.
    pub fn parse(url: &str) -> Result<ConnectUrl> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| url_err("expected `scheme://…`"))?;
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
        {
            return Err(url_err("the scheme is empty or has forbidden characters"));
        }
        if rest.contains('#') {
            return Err(url_err("fragments (`#…`) are not allowed"));
        }
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (authority, ns) = match before_query.find('/') {
            Some(i) => (&before_query[..i], &before_query[i..]),
            None => (before_query, ""),
        };
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(ui) => {
                let (u, p) = match ui.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (ui, None),
                };
                let u = percent_decode(u, "user name")?;
                if u.is_empty() {
                    return Err(url_err("empty user name before `@`"));
                }
                (
                    Some(u),
                    p.map(|p| percent_decode(p, "password")).transpose()?,
                )
            }
        };
        let hosts: Vec<String> = if hosts.is_empty() {
            Vec::new()
        } else {
            hosts.split(',').map(str::to_owned).collect()
        };
        if hosts.iter().any(|h| h.is_empty()) {
            return Err(url_err("empty host in the host list"));
        }
        let namespace = if ns.is_empty() || ns == "/" {
            String::new()
        } else {
            let decoded = percent_decode(ns, "namespace")?;
            Path::new(&decoded)
                .map_err(|e| url_err(format!("the namespace is not a valid path: {e}")))?;
            decoded
        };
        let mut options = BTreeMap::new();
        if let Some(q) = query {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let k = percent_decode(k, "option name")?;
                let v = percent_decode(v, "option value")?;
                if options.insert(k.clone(), v).is_some() {
                    return Err(url_err(format!("option `{k}` given twice")));
                }
            }
        }
        Ok(ConnectUrl {
            scheme: scheme.to_ascii_lowercase(),
            username,
            password,
            hosts,
            namespace,
            options,
            known: BTreeSet::new(),
        })
    }

    /// Durations greater than zero: the range of [`ConnectUrl::take_positive_duration`].
    pub const POSITIVE: RangeInclusive<Duration> = Duration::from_nanos(1)..=Duration::MAX;

    /// Fails unless the scheme is one of `schemes` (`expected zk:// or zookeeper://, got …`).
    pub fn expect_scheme(&self, schemes: &[&str]) -> Result<()> {
        if schemes.contains(&self.scheme.as_str()) {
            return Ok(());
        }
        let expected: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
        Err(url_err(format!(
            "expected {}, got {}://",
            expected.join(" or "),
            self.scheme
        )))
    }

    /// Removes and returns `user:password@`: `None` without a user part; an error for a user
    /// name without a password.
    pub fn take_credentials(&mut self) -> Result<Option<(String, Secret)>> {
        match (self.username.take(), self.password.take()) {
            (None, _) => Ok(None),
            (Some(_), None) => Err(url_err(format!(
                "{}:// needs a password with the user name (`user:password@`)",
                self.scheme
            ))),
            (Some(user), Some(password)) => Ok(Some((user, Secret(password)))),
        }
    }

    /// The hosts as `host:port` strings (see [`endpoint`]); `default_port` applies where none
    /// is given.
    pub fn endpoints(&self, default_port: u16) -> Result<Vec<String>> {
        Ok(self
            .host_ports(default_port)?
            .iter()
            .map(|(h, p)| endpoint(h, *p))
            .collect())
    }

    /// Removes and returns the option `name`, and remembers `name` as an option the backend
    /// knows (for the suggestion of [`ConnectUrl::finish`]).
    pub fn take(&mut self, name: &str) -> Option<String> {
        self.known.insert(name.to_owned());
        self.options.remove(name)
    }

    /// Accepts `old` as a deprecated alias of the option `name`: a value given as `old` is
    /// taken as `name` from then on. Both given is an error.
    pub fn alias(&mut self, old: &str, name: &str) -> Result<()> {
        self.known.insert(old.to_owned());
        if let Some(v) = self.options.remove(old) {
            if self.options.contains_key(name) {
                return Err(url_err(format!(
                    "options `{name}` and `{old}` (its old name) are both given"
                )));
            }
            self.options.insert(name.to_owned(), v);
        }
        Ok(())
    }

    /// The TLS options, the same on every backend that speaks TLS:
    ///
    /// - `tls`: `true` turns TLS on (with the system's roots unless `ca` is given); `false`
    ///   turns it off and then contradicts `ca`/`cert`/`key`;
    /// - `ca`: PEM file of the CA certificates to trust;
    /// - `cert` + `key`: PEM files of a client certificate and its key (only together).
    ///
    /// Any of `ca`, `cert`, `key` turns TLS on. `None`: no TLS. A file name must not be empty.
    pub fn take_tls_files(&mut self) -> Result<Option<TlsFiles>> {
        let flag = self.take_bool("tls")?;
        let mut file = |name: &str| match self.take(name) {
            Some(v) if v.is_empty() => Err(url_err(format!("option `{name}` is empty"))),
            v => Ok(v.map(PathBuf::from)),
        };
        let files = TlsFiles {
            ca: file("ca")?,
            cert: file("cert")?,
            key: file("key")?,
        };
        if files.cert.is_some() != files.key.is_some() {
            return Err(url_err("options `cert` and `key` go together"));
        }
        let any_file = files != TlsFiles::default();
        match flag {
            Some(false) if any_file => Err(url_err(
                "`tls=false` contradicts the `ca`/`cert`/`key` options",
            )),
            Some(false) => Ok(None),
            Some(true) => Ok(Some(files)),
            None => Ok(any_file.then_some(files)),
        }
    }

    /// Removes the option `name` and parses it as a duration (`250ms`, `2s`, `1m`, `1h`).
    pub fn take_duration(&mut self, name: &str) -> Result<Option<Duration>> {
        self.take(name)
            .map(|v| {
                parse_duration(&v).ok_or_else(|| {
                    url_err(format!(
                        "option `{name}`: {v:?} is not a duration such as 500ms, 2s, 1m"
                    ))
                })
            })
            .transpose()
    }

    /// Like [`ConnectUrl::take_duration`], and fails unless the duration lies within `range`.
    pub fn take_duration_in(
        &mut self,
        name: &str,
        range: RangeInclusive<Duration>,
    ) -> Result<Option<Duration>> {
        let d = self.take_duration(name)?;
        match d {
            Some(d) if !range.contains(&d) => {
                let (lo, hi) = (*range.start(), *range.end());
                Err(url_err(if hi < Duration::MAX {
                    format!("option `{name}`: {d:?} is outside [{lo:?}, {hi:?}]")
                } else if lo == Duration::from_nanos(1) {
                    format!("option `{name}` must be positive")
                } else {
                    format!("option `{name}` must be at least {lo:?}")
                }))
            }
            d => Ok(d),
        }
    }

    /// The duration option `name`, `default` when absent; zero is an error.
    pub fn take_positive_duration(&mut self, name: &str, default: Duration) -> Result<Duration> {
        Ok(self
            .take_duration_in(name, Self::POSITIVE)?
            .unwrap_or(default))
    }

    /// The size option `name` (bytes), `default` when absent; more than `max` is an error.
    pub fn take_size(&mut self, name: &str, default: usize, max: usize) -> Result<usize> {
        match self.take_u64(name)? {
            None => Ok(default),
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| {
                    url_err(format!("option `{name}`: {n} is too large (at most {max})"))
                }),
        }
    }

    /// Removes the option `name` and parses it as a flag: `true`/`1`/`yes` or `false`/`0`/`no`.
    pub fn take_bool(&mut self, name: &str) -> Result<Option<bool>> {
        self.take(name)
            .map(|v| match v.as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(url_err(format!(
                    "option `{name}`: {v:?} is not true or false"
                ))),
            })
            .transpose()
    }

    /// Removes the option `name` and parses it as an unsigned integer.
    pub fn take_u64(&mut self, name: &str) -> Result<Option<u64>> {
        self.take(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    url_err(format!("option `{name}`: {v:?} is not an unsigned integer"))
                })
            })
            .transpose()
    }

    /// Removes the option `registry` (the layout of [`crate::Client::registry`]: `default`,
    /// `generic` or `native`; see [`crate::registry::RegistryLayout`]). Absent: `default`.
    pub fn take_registry_layout(&mut self) -> Result<crate::registry::RegistryLayout> {
        match self.take("registry") {
            None => Ok(crate::registry::RegistryLayout::Default),
            Some(v) => crate::registry::RegistryLayout::parse(&v).map_err(|_| {
                url_err(format!(
                    "option `registry`: {v:?} is not a layout (default, generic, native)"
                ))
            }),
        }
    }

    /// Rejects any option no backend code has taken. The error names the known option (one
    /// the backend asked for with [`ConnectUrl::take`] or a `take_*` helper) closest to the
    /// unknown one, if it is within a typo's distance, else lists the known options.
    pub fn finish(&self) -> Result<()> {
        let Some(k) = self.options.keys().next() else {
            return Ok(());
        };
        let known = self.known.iter().map(String::as_str);
        Err(url_err(match closest(k, known) {
            Some(near) => format!("unknown option `{k}` (did you mean `{near}`?)"),
            None if self.known.is_empty() => {
                format!("unknown option `{k}`: {}:// takes no options", self.scheme)
            }
            None => {
                let known: Vec<&str> = self.known.iter().map(String::as_str).collect();
                format!(
                    "unknown option `{k}` for {}:// (known: {})",
                    self.scheme,
                    known.join(", ")
                )
            }
        }))
    }

    /// The hosts as `(host, port)` pairs; `default_port` applies where none is given.
    pub fn host_ports(&self, default_port: u16) -> Result<Vec<(String, u16)>> {
        if self.hosts.is_empty() {
            return Err(url_err(format!(
                "{}:// needs at least one host",
                self.scheme
            )));
        }
        self.hosts
            .iter()
            .map(|h| {
                let (host, port) = if let Some(rest) = h.strip_prefix('[') {
                    let (host, after) = rest
                        .split_once(']')
                        .ok_or_else(|| url_err(format!("unclosed `[` in host {h:?}")))?;
                    (host, after.strip_prefix(':'))
                } else {
                    match h.rsplit_once(':') {
                        Some((host, port)) => (host, Some(port)),
                        None => (h.as_str(), None),
                    }
                };
                if host.is_empty() {
                    return Err(url_err(format!("empty host name in {h:?}")));
                }
                let port = match port {
                    None => default_port,
                    Some(p) => p
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| url_err(format!("bad port in {h:?}")))?,
                };
                Ok((host.to_owned(), port))
            })
            .collect()
    }
}

/// Parses `250ms`, `2s`, `1.5s`, `1m`, `1h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    if !secs.is_finite() || !(0.0..=1.0e9).contains(&secs) {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

impl fmt::Display for ConnectUrl {
    /// The URL with the password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        if let Some(u) = &self.username {
            // consul:// carries its ACL token in the user part: hide it like a password.
            let u = if self.scheme == "consul" { "***" } else { u };
            write!(f, "{u}")?;
            if self.password.is_some() {
                write!(f, ":***")?;
            }
            write!(f, "@")?;
        }
        write!(f, "{}{}", self.hosts.join(","), self.namespace)?;
        let mut sep = '?';
        for (k, v) in &self.options {
            // Option values may carry tokens (`?token=`): hide those too.
            let shown = if k.contains("token") || k.contains("password") {
                "***"
            } else {
                v
            };
            write!(f, "{sep}{k}={shown}")?;
            sep = '&';
        }
        Ok(())
    }
}

impl fmt::Debug for ConnectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_form() {
        let mut u = ConnectUrl::parse(
            "etcd://bob:s%40cret@10.0.0.5:2379,[::1]:2380/myapp/x?session_ttl=2s&timeout=500ms",
        )
        .unwrap();
        assert_eq!(u.scheme, "etcd");
        assert_eq!(u.username.as_deref(), Some("bob"));
        assert_eq!(u.password.as_deref(), Some("s@cret"));
        assert_eq!(u.namespace, "/myapp/x");
        assert_eq!(
            u.host_ports(1).unwrap(),
            vec![("10.0.0.5".to_owned(), 2379), ("::1".to_owned(), 2380)]
        );
        assert_eq!(
            u.take_duration("session_ttl").unwrap(),
            Some(Duration::from_secs(2))
        );
        assert!(format!("{u:?}").contains("***"));
        assert!(!format!("{u:?}").contains("cret"));
        assert!(matches!(u.finish(), Err(Error::InvalidUrl { .. })));
        assert_eq!(
            u.take_duration("timeout").unwrap(),
            Some(Duration::from_millis(500))
        );
        u.finish().unwrap();
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "nothing",
            "://x",
            "zk://a:1,,b:2",
            "zk://:pw@h:1",
            "zk://h:1/a//b",
            "zk://h:1/..",
            "zk://h:1?a=1&a=2",
            "zk://h:1/%zz",
            "zk://h#frag",
        ] {
            assert!(
                matches!(ConnectUrl::parse(bad), Err(Error::InvalidUrl { .. })),
                "{bad}"
            );
        }
        let u = ConnectUrl::parse("zk://h:99999").unwrap();
        assert!(u.host_ports(2181).is_err());
        assert!(ConnectUrl::parse("zk://")
            .unwrap()
            .host_ports(2181)
            .is_err());
        let mut u = ConnectUrl::parse("zk://h?t=5").unwrap();
        assert!(u.take_duration("t").is_err());
    }

    #[test]
    fn typed_helpers() {
        let mut u = ConnectUrl::parse(
            "zookeeper://bob:pw@h1,[::1]:7?a=2s&z=0s&w=1h&n=10&big=11&f=yes&g=maybe",
        )
        .unwrap();
        u.expect_scheme(&["zk", "zookeeper"]).unwrap();
        let e = u.expect_scheme(&["etcd"]).unwrap_err().to_string();
        assert!(e.contains("expected etcd://, got zookeeper://"), "{e}");
        assert_eq!(u.endpoints(9).unwrap(), ["h1:9", "[::1]:7"]);
        assert_eq!(
            u.take_credentials().unwrap(),
            Some(("bob".into(), Secret::new("pw")))
        );
        let one = Duration::from_secs(1);
        assert_eq!(u.take_positive_duration("a", one).unwrap(), 2 * one);
        assert_eq!(u.take_positive_duration("absent", one).unwrap(), one);
        let e = u.take_positive_duration("z", one).unwrap_err().to_string();
        assert!(e.contains("option `z` must be positive"), "{e}");
        assert!(u.take_duration_in("w", one..=60 * one).is_err());
        assert_eq!(u.take_size("n", 1, 10).unwrap(), 10);
        assert_eq!(u.take_size("absent", 1, 10).unwrap(), 1);
        assert!(u.take_size("big", 1, 10).is_err());
        assert_eq!(u.take_bool("f").unwrap(), Some(true));
        assert!(u.take_bool("g").is_err());
        u.finish().unwrap();
        let mut u = ConnectUrl::parse("etcd://bob@h").unwrap();
        assert!(u.take_credentials().is_err());
        assert_eq!(format!("{:?}", Some(Secret::new("pw"))), "Some(***)");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("1e999s"), None);
    }

    #[test]
    fn unknown_options_name_the_closest_known_one() {
        assert_eq!(edit_distance("sesion_ttl", "session_ttl"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        let reason = |url: &str| {
            let mut u = ConnectUrl::parse(url).unwrap();
            let _ = u.take_duration("session_ttl");
            let _ = u.take_duration("timeout");
            let _ = u.take_tls_files();
            match u.finish() {
                Err(Error::InvalidUrl { reason }) => reason,
                other => panic!("{url}: {other:?}"),
            }
        };
        assert_eq!(
            reason("etcd://h?sesion_ttl=5s"),
            "unknown option `sesion_ttl` (did you mean `session_ttl`?)"
        );
        assert_eq!(
            reason("etcd://h?timout=5s"),
            "unknown option `timout` (did you mean `timeout`?)"
        );
        assert_eq!(
            reason("etcd://h?cs=x"),
            "unknown option `cs` (did you mean `ca`?)"
        );
        // Too far from anything: the known options are listed instead.
        let r = reason("etcd://h?bogus=1");
        assert_eq!(
            r,
            "unknown option `bogus` for etcd:// (known: ca, cert, key, session_ttl, timeout, tls)"
        );
        let e = ConnectUrl::parse("mem://x?a=1")
            .unwrap()
            .finish()
            .unwrap_err();
        assert!(e.to_string().contains("mem:// takes no options"), "{e}");
    }

    #[test]
    fn aliases() {
        let mut u = ConnectUrl::parse("zk://h?session_timeout=3s").unwrap();
        u.alias("session_timeout", "session_ttl").unwrap();
        assert_eq!(
            u.take_duration("session_ttl").unwrap(),
            Some(Duration::from_secs(3))
        );
        u.finish().unwrap();
        let mut u = ConnectUrl::parse("zk://h?session_timeout=3s&session_ttl=2s").unwrap();
        assert!(matches!(
            u.alias("session_timeout", "session_ttl"),
            Err(Error::InvalidUrl { .. })
        ));
        let mut u = ConnectUrl::parse("zk://h?session_timeot=3s").unwrap();
        u.alias("session_timeout", "session_ttl").unwrap();
        let _ = u.take_duration("session_ttl");
        let e = u.finish().unwrap_err().to_string();
        assert!(e.contains("did you mean `session_timeout`"), "{e}");
    }

    #[test]
    fn tls_files() {
        let tls = |url: &str| ConnectUrl::parse(url).unwrap().take_tls_files();
        assert_eq!(tls("etcd://h").unwrap(), None);
        assert_eq!(tls("etcd://h?tls=false").unwrap(), None);
        assert_eq!(tls("etcd://h?tls=true").unwrap(), Some(TlsFiles::default()));
        let f = tls("etcd://h?ca=/ca.pem&cert=/c.pem&key=/k.pem")
            .unwrap()
            .unwrap();
        assert_eq!(f.ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(f.cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(f.key, Some(PathBuf::from("/k.pem")));
        for bad in [
            "etcd://h?tls=maybe",
            "etcd://h?cert=/c.pem",
            "etcd://h?tls=true&key=/k.pem",
            "etcd://h?tls=false&ca=/ca.pem",
            "etcd://h?tls=true&ca=",
        ] {
            assert!(matches!(tls(bad), Err(Error::InvalidUrl { .. })), "{bad}");
        }
    }

    #[test]
    fn connection_errors_name_the_endpoint() {
        let e = with_endpoint(Error::connection_lost("refused"), "127.0.0.1:1");
        assert_eq!(
            e.to_string(),
            "connection lost: refused (endpoint 127.0.0.1:1)"
        );
        // Named once only.
        assert_eq!(with_endpoint(e.clone(), "127.0.0.1:1"), e);
        let t = with_endpoint(Error::timeout("no answer"), "h:2181,h2:2181");
        assert!(t.to_string().ends_with("(endpoint h:2181,h2:2181)"), "{t}");
        assert_eq!(with_endpoint(Error::Closed, "h:1"), Error::Closed);
    }
}
