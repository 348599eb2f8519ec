//! A shared counter: a signed 64-bit integer that many clients read and change, exactly.
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
//! let hits = client.counter("hits")?;
//! let now = hits.add(1).await?;          // the value after this add
//! assert!(hits.compare_and_set(now, 0).await? || hits.get().await? != now);
//! # Ok(()) }
//! ```
//!
//! # Storage
//!
//! One persistent node, `/counters/<name>`, holding the value as ASCII decimal text (`-42`,
//! `0`, `9223372036854775807`): readable with any store's own tools, and the format of kazoo's
//! `Counter` for integers. An absent node or an empty value reads as 0 (the counter starts at
//! 0; the first write creates the node). Anything else stored there (not an `i64` in decimal,
//! leading `+`, spaces, binary such as Curator's 4-byte `SharedCount`) is
//! [`Error::MalformedData`] and is never overwritten by [`Counter::add`] or
//! [`Counter::compare_and_set`].
//!
//! # Exactness
//!
//! Every change is a compare-and-set on the node's version, retried after a lost race (a
//! re-read, then a jittered back-off of 1 to 32 ms) at most [`DEFAULT_MAX_ATTEMPTS`] times
//! (see [`Counter::with_max_attempts`]); after that the call fails with
//! [`Error::Contended`] and wrote nothing. So no add is lost or applied twice, whatever the
//! contention. An add that would leave the `i64` range is [`Error::Overflow`], never a wrap.
//! An error that [`Error::is_retryable`] (a timeout, a lost connection) during the write means
//! the write may or may not have taken effect: read the counter before adding again.

use futures::{Stream, StreamExt};

use crate::adapter::Backoff;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::kernel::{create_parents, CreateMode, KeyEvent, KeyWatch, Version};
use crate::path::Path;

/// How many compare-and-set attempts [`Counter::add`] and [`Counter::compare_and_set`] make
/// before they give up with [`Error::Contended`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 100;

/// A shared counter, identified by its path. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Counter {
    client: Client,
    path: Path,
    max_attempts: u32,
}

/// The value read, with the version of the node (`None`: no node, the value is 0).
type Read = (i64, Option<Version>);

impl Counter {
    /// The counter stored at `path`.
    pub fn new(client: &Client, path: Path) -> Counter {
        Counter {
            client: client.clone(),
            path,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// Sets how many compare-and-set attempts a change makes before [`Error::Contended`]
    /// (at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Counter {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The counter's node.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value now (0 if the counter was never written).
    pub async fn get(&self) -> Result<i64> {
        Ok(self.read().await?.0)
    }

    /// Adds `delta` (which may be negative) and returns the value after this add.
    /// [`Error::Overflow`] if the result leaves the `i64` range, [`Error::Contended`] after
    /// [`DEFAULT_MAX_ATTEMPTS`] lost races; in both cases nothing was written.
    pub async fn add(&self, delta: i64) -> Result<i64> {
        let mut backoff = Backoff::contention();
        for _ in 0..self.max_attempts {
            let current = self.read().await?;
            let new = current
                .0
                .checked_add(delta)
                .ok_or_else(|| Error::Overflow {
                    path: self.path.to_string(),
                    value: current.0,
                    delta,
                })?;
            if self.write(current, new).await? {
                return Ok(new);
            }
            backoff.wait().await;
        }
        Err(self.contended("add"))
    }

    /// Sets the counter to `new` if it is `expected` now: `true` if it did, `false` (nothing
    /// written) if the value is another one. A race lost against a write that left the value
    /// at `expected` is retried, as [`Counter::add`] does.
    pub async fn compare_and_set(&self, expected: i64, new: i64) -> Result<bool> {
        let mut backoff = Backoff::contention();
        for _ in 0..self.max_attempts {
            let current = self.read().await?;
            if current.0 != expected {
                return Ok(false);
            }
            if self.write(current, new).await? {
                return Ok(true);
            }
            backoff.wait().await;
        }
        Err(self.contended("compare_and_set"))
    }

    /// The value now, then each new value as it changes (a value written again unchanged is
    /// not repeated; quick successive changes may come as their last value only, as watches
    /// coalesce). A malformed stored value is an `Err` item ([`Error::MalformedData`]) and the
    /// stream goes on; an error of the underlying watch is the last item.
    pub async fn changes(&self) -> Result<impl Stream<Item = Result<i64>> + Send> {
        let (node, events) = self.client.watch(&self.path).await?;
        let first = match node {
            Some(n) => decode(&self.path, &n.value),
            None => Ok(0),
        };
        let last = first.as_ref().ok().copied();
        let rest = futures::stream::unfold(
            Some((events, self.path.clone(), last)),
            |state: Option<(KeyWatch, Path, Option<i64>)>| async move {
                let (mut events, path, mut last) = state?;
                loop {
                    let value = match events.next().await? {
                        Ok(KeyEvent::Created(n) | KeyEvent::Changed(n)) => decode(&path, &n.value),
                        Ok(KeyEvent::Resync(Some(n))) => decode(&path, &n.value),
                        Ok(KeyEvent::Deleted | KeyEvent::Resync(None)) => Ok(0),
                        Err(e) => return Some((Err(e), None)),
                    };
                    match value {
                        Ok(v) if last == Some(v) => continue,
                        Ok(v) => {
                            last = Some(v);
                            return Some((Ok(v), Some((events, path, last))));
                        }
                        Err(e) => {
                            last = None;
                            return Some((Err(e), Some((events, path, last))));
                        }
                    }
                }
            },
        );
        Ok(futures::stream::once(async move { first }).chain(rest))
    }

    /// Reads the value and the node's version.
    async fn read(&self) -> Result<Read> {
        match self.client.get(&self.path).await {
            Ok(n) => Ok((decode(&self.path, &n.value)?, Some(n.stat.version))),
            Err(Error::NotFound { .. }) => Ok((0, None)),
            Err(e) => Err(e),
        }
    }

    /// Writes `new` if the node is still as `current` read it: `false` if a race was lost.
    async fn write(&self, current: Read, new: i64) -> Result<bool> {
        let text = new.to_string();
        match current.1 {
            Some(version) => match self
                .client
                .set(&self.path, text.as_bytes(), Some(version))
                .await
            {
                Ok(_) => Ok(true),
                Err(Error::VersionMismatch { .. } | Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            },
            None => {
                if let Some(parent) = self.path.parent() {
                    create_parents(&**self.client.backend(), &parent).await?;
                }
                match self
                    .client
                    .create(&self.path, text.as_bytes(), CreateMode::Exact)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(Error::AlreadyExists { .. }) => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn contended(&self, op: &'static str) -> Error {
        Error::Contended {
            op,
            path: self.path.to_string(),
            attempts: self.max_attempts,
        }
    }
}

/// The longest decimal text of an `i64` (`-9223372036854775808`).
const MAX_TEXT: usize = 20;

/// Decodes a stored value (see the module docs); empty is 0.
pub(crate) fn decode(path: &Path, value: &[u8]) -> Result<i64> {
    if value.is_empty() {
        return Ok(0);
    }
    let malformed = |reason: String| Error::MalformedData {
        path: path.to_string(),
        reason,
    };
    if value.len() > MAX_TEXT {
        return Err(malformed(format!(
            "a counter holds at most {MAX_TEXT} bytes of decimal text, found {} bytes",
            value.len()
        )));
    }
    let digits = value.strip_prefix(b"-").unwrap_or(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(malformed(format!(
            "not a decimal integer: {:?}",
            String::from_utf8_lossy(value)
        )));
    }
    // ASCII digits with an optional sign: valid UTF-8; only the range can still fail.
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| malformed("out of the i64 range".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_decimal_text_only() {
        let p = Path::new("/counters/x").unwrap();
        assert_eq!(decode(&p, b""), Ok(0));
        assert_eq!(decode(&p, b"0"), Ok(0));
        assert_eq!(decode(&p, b"-42"), Ok(-42));
        assert_eq!(decode(&p, b"9223372036854775807"), Ok(i64::MAX));
        assert_eq!(decode(&p, b"-9223372036854775808"), Ok(i64::MIN));
        for bad in [
            &b"9223372036854775808"[..],
            b"+1",
            b" 1",
            b"1 ",
            b"-",
            b"0x10",
            b"\x00\x00\x00\x01",
            b"12345678901234567890123",
        ] {
            assert!(
                matches!(decode(&p, bad), Err(Error::MalformedData { .. })),
                "{bad:?}"
            );
        }
    }
}
