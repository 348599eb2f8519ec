//! [`GrpcNaming`]: the registry in the layout of etcd's `client/v3/naming/endpoints` package,
//! which grpc-go's etcd resolver (`etcd:///<target>`) reads.
//!
//! # Keys
//!
//! The keys are raw etcd keys, outside coord's namespace layout (no `__coord/` part). The
//! **target** of service `S` in a registry rooted at `R`, on a client with namespace `N`, is
//! `N/R/S` with the empty parts and the leading `/` left out: namespace `/myapp`, root
//! `/services`, service `api` → target `myapp/services/api`, which a Go client resolves as
//! `etcd:///myapp/services/api`. An instance at `host:port` is the key `<target>/<host:port>`
//! (an IPv6 host in brackets), written under the registering session's lease, so it goes when
//! the lease is revoked or expires.
//!
//! # Values
//!
//! The endpoints package's JSON (`internal.Update`), exactly as `endpoints.Manager.AddEndpoint`
//! writes it: `{"Op":0,"Addr":"10.0.0.7:8080","Metadata":{…}}`. coord's `Metadata` is an
//! object `{"id":"api-1","metadata":{"zone":"a"},"tags":["v2"]}`: the instance id, its metadata
//! map and its tags (`tags` left out when empty). A Go resolver passes `Metadata` through
//! untouched (grpc's `resolver.Address.Metadata`).
//!
//! Entries written by others decode too: without a string `id` in `Metadata` the instance id
//! is the key's last segment (the address), and the string, number and boolean members of an
//! object `Metadata` become the instance's metadata (numbers and booleans as their JSON text).
//! An entry whose value is not that JSON, whose `Op` is not 0 (add), or whose `Addr` is not
//! `host:port`, is [`Error::MalformedData`] for `discover` and skipped (with a warning) by
//! `watch`. Keys one level further down (`<target>/a/b`) belong to other targets and are
//! ignored.
//!
//! # One id, two sessions
//!
//! As in coord's own layout, an id (or an address) held by another lease is replaced
//! ([`IfPresent::Replace`]) or refused ([`IfPresent::Fail`]) in one transaction that checks
//! what was read; an id held by the registering session itself is refused. An address is one
//! gRPC endpoint, so it is one entry: two instances with different ids at the same
//! `host:port` are treated like one id (the later replaces or is refused).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use coord_core::adapter::hold::raw_name;
use coord_core::adapter::WatchScope;
use coord_core::registry::{
    decode_entries, Entry, Holder, IfPresent, Instance, NativeLayout, NativeRegistry, Replacing,
    REPLACE_ATTEMPTS,
};
use coord_core::{Error, Path, Result, Session};
use etcd_client::proto::{PbEvent, PbKeyValue};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::context::{lease_sid, Context, Range};
use crate::error::Ctx;
use crate::session::EtcdSession;
use crate::watch::{drive, Logic, Step, DELETE, PUT};

pub use coord_core::registry::codec::grpc::{decode, encode, endpoint_addr};

/// The native registry of etcd: grpc-go's naming layout (see the module docs). Not the
/// default registry on etcd ([`NativeLayout::is_default`] is false): select it with
/// `registry=native` or `Registry::with_layout`.
pub struct GrpcNaming {
    ctx: Arc<Context>,
    /// The watch tasks end with the last handle of this registry.
    watches: WatchScope,
}

impl std::fmt::Debug for GrpcNaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcNaming")
            .field("namespace", &self.ctx.tree.namespace)
            .finish_non_exhaustive()
    }
}

/// The lease of a session of this backend.
fn lease_of(session: &Arc<dyn Session>) -> Result<i64> {
    if let Some(s) = session.as_any().downcast_ref::<EtcdSession>() {
        return Ok(s.lease_id());
    }
    // A wrapper that hides the handle: the session id is the lease id in hex.
    i64::from_str_radix(&session.id().0, 16).map_err(|_| {
        Error::InvalidArgument(format!(
            "session {} is not an etcd session of this client",
            session.id()
        ))
    })
}

/// The last segment of `key` under `prefix` (`None` for keys further down).
fn entry_name<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    let name = key.strip_prefix(prefix)?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

impl GrpcNaming {
    pub(crate) fn new(ctx: Arc<Context>) -> GrpcNaming {
        GrpcNaming {
            ctx,
            watches: WatchScope::new(),
        }
    }

    /// The target of `service` in the registry rooted at `root` (see the module docs).
    pub fn target(&self, root: &Path, service: &str) -> Result<String> {
        Ok(raw_name(&self.ctx.tree.namespace, &root.join(service)?))
    }

    /// The prefix under which the services of `root` have their targets.
    fn root_prefix(&self, root: &Path) -> String {
        let name = raw_name(&self.ctx.tree.namespace, root);
        if name.is_empty() {
            name
        } else {
            format!("{name}/")
        }
    }

    /// Every entry under `<target>/` with the read's revision.
    async fn read(&self, prefix: &str) -> Result<(Vec<PbKeyValue>, i64)> {
        let range = Range {
            key: prefix.to_owned(),
            prefix: true,
            keys_only: false,
        };
        let (mut snap, rev) = self.ctx.store().snapshot(&[range]).await?;
        Ok((snap.pop().unwrap_or_default(), rev))
    }
}

/// The decoded instances among `kvs` (under `prefix`), sorted by id; malformed ones are errors
/// or, with `skip`, logged and left out.
fn instances<'a>(
    service: &str,
    prefix: &str,
    kvs: impl Iterator<Item = (&'a str, &'a [u8])>,
    skip: bool,
) -> Result<Vec<Instance>> {
    let entries = kvs.filter(|(key, _)| entry_name(prefix, key).is_some());
    decode_entries(entries, skip, |(key, value)| decode(service, key, value))
}

fn key_str(kv: &PbKeyValue) -> &str {
    std::str::from_utf8(&kv.key).unwrap_or_default()
}

#[async_trait]
impl NativeRegistry for GrpcNaming {
    fn layout(&self) -> NativeLayout {
        NativeLayout::opt_in("etcd-naming")
    }

    fn check(&self, instance: &Instance) -> Result<()> {
        Path::root().join(&instance.service)?;
        Path::root().join(&instance.id)?;
        if instance.address.is_empty() || instance.address.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "address {:?} cannot be an etcd naming key segment (host or IP, no '/')",
                instance.address
            )));
        }
        Ok(())
    }

    async fn register(&self, entry: Entry<'_>, if_present: IfPresent) -> Result<()> {
        let (root, session, instance) = (entry.root, entry.session, entry.instance);
        self.check(instance)?;
        let lease = lease_of(session)?;
        let value = encode(instance)?;
        let prefix = format!("{}/", self.target(root, &instance.service)?);
        let key = format!("{prefix}{}", endpoint_addr(instance));
        let mut replacing = Replacing::default();
        for _ in 0..REPLACE_ATTEMPTS {
            let (kvs, _) = self.read(&prefix).await?;
            // The entries that hold this address or this id.
            let present: Vec<&PbKeyValue> = kvs
                .iter()
                .filter(|kv| entry_name(&prefix, key_str(kv)).is_some())
                .filter(|kv| {
                    key_str(kv) == key
                        || decode(&instance.service, key_str(kv), &kv.value)
                            .is_ok_and(|i| i.id == instance.id)
                })
                .collect();
            for kv in &present {
                if replacing.keeps(if_present, kv.lease == lease, &kv.lease) {
                    let holder = if kv.lease == 0 {
                        "a key without a lease".to_owned()
                    } else {
                        format!("session {:x}", kv.lease)
                    };
                    return Err(Error::AlreadyExists {
                        path: format!("{} (held by {holder})", key_str(kv)),
                    });
                }
            }
            let mut when: Vec<Compare> = present
                .iter()
                .map(|kv| Compare::mod_revision(key_str(kv), CompareOp::Equal, kv.mod_revision))
                .collect();
            if !present.iter().any(|kv| key_str(kv) == key) {
                when.push(Compare::create_revision(key.as_str(), CompareOp::Equal, 0));
            }
            let mut then: Vec<TxnOp> = present
                .iter()
                .filter(|kv| key_str(kv) != key)
                .map(|kv| TxnOp::delete(key_str(kv), None))
                .collect();
            then.push(TxnOp::put(
                key.as_str(),
                value.clone(),
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            ));
            let sid = session.id().clone();
            let at = Ctx {
                session: Some(&sid),
                value: Some((value.len(), self.ctx.store().max_value)),
            };
            let resp = self
                .ctx
                .store()
                .txn("register", at, Txn::new().when(when).and_then(then))
                .await?;
            if resp.succeeded() {
                if !present.is_empty() {
                    tracing::info!(%key, "replaced a naming entry held by another session");
                }
                return Ok(());
            }
            for kv in &present {
                replacing.replaced(kv.lease);
            }
        }
        Err(replacing.contended(key))
    }

    async fn deregister(&self, entry: Entry<'_>) -> Result<()> {
        let (root, instance) = (entry.root, entry.instance);
        let lease = lease_of(entry.session)?;
        let key = format!(
            "{}/{}",
            self.target(root, &instance.service)?,
            endpoint_addr(instance)
        );
        // Only our own entry: one that replaced it stays.
        let txn = Txn::new()
            .when(vec![Compare::lease(key.as_str(), CompareOp::Equal, lease)])
            .and_then(vec![TxnOp::delete(key.as_str(), None)]);
        self.ctx
            .store()
            .txn("deregister", Ctx::default(), txn)
            .await?;
        Ok(())
    }

    /// The entry at the instance's address, else one with its id: [`Holder::Session`] with
    /// the entry's lease (in hex, as coord names etcd sessions), [`Holder::Foreign`] for a key
    /// without a lease.
    async fn holder(&self, root: &Path, instance: &Instance) -> Result<Holder> {
        let prefix = format!("{}/", self.target(root, &instance.service)?);
        let key = format!("{prefix}{}", endpoint_addr(instance));
        let (kvs, _) = self.read(&prefix).await?;
        let entries = || {
            kvs.iter()
                .filter(|kv| entry_name(&prefix, key_str(kv)).is_some())
        };
        let found = entries().find(|kv| key_str(kv) == key).or_else(|| {
            entries().find(|kv| {
                decode(&instance.service, key_str(kv), &kv.value).is_ok_and(|i| i.id == instance.id)
            })
        });
        Ok(match found {
            None => Holder::Nobody,
            Some(kv) if kv.lease == 0 => Holder::Foreign,
            Some(kv) => Holder::Session(lease_sid(kv.lease)),
        })
    }

    async fn discover(&self, root: &Path, service: &str) -> Result<Vec<Instance>> {
        let prefix = format!("{}/", self.target(root, service)?);
        let (kvs, _) = self.read(&prefix).await?;
        instances(
            service,
            &prefix,
            kvs.iter().map(|kv| (key_str(kv), kv.value.as_slice())),
            false,
        )
    }

    async fn services(&self, root: &Path) -> Result<Vec<String>> {
        let prefix = self.root_prefix(root);
        let range = Range {
            key: prefix.clone(),
            prefix: true,
            keys_only: true,
        };
        let (snap, _) = self.ctx.store().snapshot(&[range]).await?;
        let kvs = snap.into_iter().next().unwrap_or_default();
        // `<service>/<entry>` exactly; coord's own tree (`__coord/…`) is never a service.
        let mut names: Vec<String> = kvs
            .iter()
            .filter_map(|kv| key_str(kv).strip_prefix(prefix.as_str()))
            .filter_map(|rest| rest.split_once('/'))
            .filter(|(svc, addr)| !svc.is_empty() && !addr.is_empty() && !addr.contains('/'))
            .filter(|(svc, _)| !svc.starts_with(coord_core::path::RESERVED_PREFIX))
            .map(|(svc, _)| svc.to_owned())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn watch(
        &self,
        root: &Path,
        service: &str,
    ) -> Result<BoxStream<'static, Result<Vec<Instance>>>> {
        let prefix = format!("{}/", self.target(root, service)?);
        let ranges = vec![Range {
            key: prefix.clone(),
            prefix: true,
            keys_only: false,
        }];
        let (snap, rev) = self.ctx.store().snapshot(&ranges).await?;
        let mut logic = PrefixLogic {
            service: service.to_owned(),
            prefix,
            entries: BTreeMap::new(),
        };
        let first = logic.resync(&snap, rev);
        let ctx = self.ctx.clone();
        let rest = self
            .watches
            .spawn(|tx| drive(ctx, ranges, rev + 1, logic, tx));
        Ok(futures::stream::once(async move { Ok(first) })
            .chain(rest)
            .boxed())
    }
}

/// Follows the entries under a target's prefix; yields the instance list after each change.
struct PrefixLogic {
    service: String,
    prefix: String,
    entries: BTreeMap<String, Vec<u8>>,
}

impl PrefixLogic {
    fn list(&self) -> Vec<Instance> {
        let kvs = self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
        instances(&self.service, &self.prefix, kvs, true).unwrap_or_default()
    }
}

impl Logic for PrefixLogic {
    type Ev = Vec<Instance>;

    fn on_event(&mut self, _idx: usize, ev: &PbEvent, _rev: i64) -> Step<Vec<Instance>> {
        let Some(kv) = ev.kv.as_ref() else {
            return Step::None;
        };
        let key = key_str(kv).to_owned();
        let changed = match ev.r#type {
            PUT => self.entries.insert(key, kv.value.clone()).as_ref() != Some(&kv.value),
            DELETE => self.entries.remove(&key).is_some(),
            _ => false,
        };
        if changed {
            Step::Emit(self.list())
        } else {
            Step::None
        }
    }

    fn resync(&mut self, snap: &[Vec<PbKeyValue>], _rev: i64) -> Vec<Instance> {
        self.entries = snap
            .first()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| (key_str(kv).to_owned(), kv.value.clone()))
                    .collect()
            })
            .unwrap_or_default();
        self.list()
    }
}
