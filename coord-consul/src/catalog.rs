//! The registry in Consul's service catalog (the native layout, and the default on Consul):
//! what `consul catalog services`, Consul DNS (`<name>.service.consul`) and every tool that
//! reads the health API see.
//!
//! # Registering
//!
//! An instance is an agent service (`PUT /v1/agent/service/register`): `Name` = the service,
//! `Address`, `Port`, `Tags`, and `Meta` = the metadata plus three keys coord keeps for
//! itself (`coord_id`: the instance id; `coord_session`: the coord session it lives on;
//! `coord_registry`: the registry's path, namespace included). Its `ID` is
//! `<service>-<id>`, with `-<8 hex digits>` of the registry's path appended for any registry
//! other than the default one (`/services` without a namespace), so that two namespaces
//! never share an agent service.
//!
//! Its health is the coord session's: its one check is an **alias check**
//! (`AliasService`) of the per-session service whose TTL check keeps the session alive
//! (see the crate's session docs). While the session's keep-alive passes that check, the
//! instance is passing; when the passes stop (the process was SIGKILLed, hung or cut off) the
//! session's check turns critical after one session TTL and the instance with it; when the
//! session's check is deregistered (the session closed or expired) the alias finds no
//! service and the instance is critical at once. A critical instance leaves
//! `/v1/health/service/<name>?passing` and DNS, and the agent deregisters it after one
//! minute critical (`DeregisterCriticalServiceAfter`, whose minimum is one minute). A clean
//! end (deregistration, drop, [`coord_core::Client::close`] or `shutdown`) deregisters it
//! at once.
//!
//! A registration that replaces another session's entry (after an expiry, a crash, or the
//! same id registered twice) first deregisters it and waits, up to the request timeout,
//! until the health API no longer lists it: watchers see the old instance go before the new
//! one comes, as with the other layouts.
//!
//! # Reading
//!
//! Discovery, watches and caches read `/v1/health/service/<name>?passing` (watches with
//! blocking queries); `services` reads `/v1/catalog/services`. The catalog has no
//! namespaces, so the registry's path decides what it sees: the default registry (`/services`
//! without a namespace) is the whole catalog, services of every tool included (an instance
//! without `coord_id` is listed with its service ID as id); any other registry sees only the
//! instances registered through a registry at its path (`coord_registry`), like the other
//! layouts' namespaces. `services` of such a registry reads each service of the catalog once.
//!
//! With ACLs, the token needs `service:write` on the service names it registers (and
//! `service:read`/`node:read` to discover), besides what sessions and keys need.
//!
//! # Rules checked before any I/O ([`coord_core::Error::InvalidArgument`], nothing registered)
//!
//! - service names: 1 to 63 ASCII letters, digits and `-` (a DNS label: Consul accepts other
//!   names but leaves them out of DNS); ids: no `"`, `\` or control characters;
//! - metadata (Consul's rules): keys match `^[A-Za-z0-9_-]+$`, at most 128 bytes, not
//!   starting with `consul-`, not one of coord's three keys; values at most 512 bytes; at most
//!   64 pairs with coord's three (so 61 of the caller's).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use coord_core::adapter::Backoff;
use coord_core::registry::{Entry, Holder, IfPresent, Instance, NativeLayout, NativeRegistry};
use coord_core::{Error, Path, Result, SessionId};
use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest::StatusCode;
use serde::Deserialize;

use crate::api::Api;
use crate::error::{parse, status_error};
use crate::session::ConsulSession;

/// The meta key holding the coord instance id.
pub const META_ID: &str = "coord_id";
/// The meta key holding the coord session the instance lives on.
pub const META_SESSION: &str = "coord_session";
/// The meta key holding the registry's path (namespace included).
pub const META_REGISTRY: &str = "coord_registry";
/// The name of the per-session services (not listed by `services`).
const SESSION_SERVICE: &str = "coord-session";
/// Consul's limit of meta pairs per service.
const MAX_META: usize = 64;
/// How long a critical instance stays in the catalog (Consul's minimum).
const DEREGISTER_CRITICAL_AFTER: &str = "1m";

/// The Consul catalog as a [`NativeRegistry`] (see the module docs).
#[derive(Debug)]
pub(crate) struct Catalog {
    api: Api,
    namespace: String,
}

/// A service as `/v1/agent/service/<id>` and the health API return it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

/// One entry of `/v1/health/service/<name>`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: HealthNode,
    service: Service,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthNode {
    #[serde(default)]
    address: String,
}

/// 32 bits of FNV-1a: enough to keep the agent service IDs of a few registries apart.
fn short_hash(s: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h ^ (h >> 32)) as u32
}

fn invalid(instance: &Instance, why: String) -> Error {
    Error::InvalidArgument(format!(
        "instance {}/{} cannot be registered in Consul's catalog: {why}",
        instance.service, instance.id
    ))
}

impl Catalog {
    pub(crate) fn new(api: Api, namespace: &str) -> Catalog {
        Catalog {
            api,
            namespace: namespace.to_owned(),
        }
    }

    /// The registry's path, namespace included (`/services`, `/myapp/services`).
    fn registry_path(&self, root: &Path) -> String {
        if root.is_root() {
            return if self.namespace.is_empty() {
                "/".to_owned()
            } else {
                self.namespace.clone()
            };
        }
        format!("{}{root}", self.namespace)
    }

    /// Whether the registry is the default one, which sees the whole catalog.
    fn is_whole(&self, root: &Path) -> bool {
        self.registry_path(root) == "/services"
    }

    /// The agent service ID of `instance`.
    fn service_id(&self, root: &Path, instance: &Instance) -> String {
        let id = format!("{}-{}", instance.service, instance.id);
        if self.is_whole(root) {
            id
        } else {
            format!("{id}-{:08x}", short_hash(&self.registry_path(root)))
        }
    }

    /// The instance a health entry describes, if the registry at `root` sees it.
    fn instance(&self, root: &Path, e: HealthEntry) -> Option<Instance> {
        let mut meta = e.service.meta.unwrap_or_default();
        let registry = meta.remove(META_REGISTRY);
        if !self.is_whole(root) && registry.as_deref() != Some(&*self.registry_path(root)) {
            return None;
        }
        let id = meta.remove(META_ID).unwrap_or(e.service.id);
        meta.remove(META_SESSION);
        let address = if e.service.address.is_empty() {
            e.node.address
        } else {
            e.service.address
        };
        let mut i = Instance::new(&e.service.service, &id, &address, e.service.port);
        i.metadata = meta;
        i.tags = e.service.tags.unwrap_or_default();
        Some(i)
    }

    /// `/v1/health/service/<name>` (only passing instances with `passing`; only the agent
    /// service `id` with `id`), optionally as a blocking query; the entries and the index.
    async fn health(
        &self,
        service: &str,
        passing: bool,
        id: Option<&str>,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<HealthEntry>, u64)> {
        let what = "health read";
        let mut u = self.api.url(&["v1", "health", "service", service], None)?;
        if passing {
            u.query_pairs_mut().append_key_only("passing");
        }
        if let Some(id) = id {
            // `check` keeps `"` and `\` out of ids: the literal needs no escaping.
            u.query_pairs_mut()
                .append_pair("filter", &format!("Service.ID == \"{id}\""));
        }
        let a = self.api.get(u, block, what).await?.ok(None, what)?;
        Ok((parse(&a.body, what)?, a.index))
    }

    /// The passing instances of `service` that the registry at `root` sees, sorted by id.
    async fn passing(
        &self,
        root: &Path,
        service: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<Instance>, u64)> {
        let (entries, index) = self.health(service, true, None, block).await?;
        let mut list: Vec<Instance> = entries
            .into_iter()
            .filter_map(|e| self.instance(root, e))
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((list, index))
    }

    /// The agent's service `id`, if registered on this agent.
    async fn agent_service(&self, id: &str) -> Result<Option<Service>> {
        let what = "agent service read";
        let u = self.api.url(&["v1", "agent", "service", id], None)?;
        let a = self.api.get(u, None, what).await?;
        match a.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(parse(&a.body, what)?)),
            s => Err(status_error(s, &a.body, what)),
        }
    }

    async fn deregister_id(&self, id: &str) -> Result<()> {
        let what = "service deregistration";
        let seg = ["v1", "agent", "service", "deregister", id];
        let a = self.api.put(&seg, None, self.api.timeout, what).await?;
        a.ok(Some(StatusCode::NOT_FOUND), what)?;
        Ok(())
    }

    /// Waits, up to the request timeout, until the health API lists `id` as passing
    /// (`passing`) or no longer lists it at all (`!passing`): the agent hands its changes to
    /// the catalog asynchronously, and a caller that registered or deregistered expects every
    /// reader to see it afterwards, as in the other layouts. Past the timeout it logs and
    /// returns (a session that is ending may never make the instance pass).
    async fn settle(&self, service: &str, id: &str, passing: bool) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.api.timeout;
        let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(100));
        loop {
            let (entries, _) = self.health(service, passing, Some(id), None).await?;
            if entries.iter().any(|e| e.service.id == id) == passing {
                return Ok(());
            }
            let pause = backoff.next_delay();
            if tokio::time::Instant::now() + pause > deadline {
                tracing::warn!(%id, passing, "the catalog did not show the change within the timeout");
                return Ok(());
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// Checks a service name: a DNS label (see the module docs).
fn check_name(instance: &Instance) -> Result<()> {
    let name = &instance.service;
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !ok {
        return Err(invalid(
            instance,
            format!(
                "the service name {name:?} is not 1 to 63 ASCII letters, digits and `-` \
                 (Consul DNS could not find it)"
            ),
        ));
    }
    Ok(())
}

/// Checks an instance id: printable, without `"` or `\` (it is part of the agent service ID,
/// which coord quotes in health API filters).
fn check_id(instance: &Instance) -> Result<()> {
    if let Some(c) = instance
        .id
        .chars()
        .find(|c| *c == '"' || *c == '\\' || c.is_control())
    {
        return Err(invalid(
            instance,
            format!("the id may not hold {c:?} (Consul service IDs are quoted in filters)"),
        ));
    }
    Ok(())
}

/// Checks the metadata against Consul's rules and coord's reserved keys.
fn check_meta(instance: &Instance) -> Result<()> {
    let meta = &instance.metadata;
    if meta.len() > MAX_META - 3 {
        return Err(invalid(
            instance,
            format!(
                "{} metadata pairs: Consul takes {MAX_META}, of which coord uses 3",
                meta.len()
            ),
        ));
    }
    for (k, v) in meta {
        let why = if k.is_empty()
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            Some("keys must match ^[A-Za-z0-9_-]+$".to_owned())
        } else if k.len() > 128 {
            Some("keys are at most 128 bytes".to_owned())
        } else if k.starts_with("consul-") {
            Some("the prefix `consul-` is Consul's".to_owned())
        } else if [META_ID, META_SESSION, META_REGISTRY].contains(&k.as_str()) {
            Some("coord keeps this key for itself".to_owned())
        } else if v.len() > 512 {
            Some(format!("values are at most 512 bytes, not {}", v.len()))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(invalid(instance, format!("metadata key {k:?}: {why}")));
        }
    }
    Ok(())
}

#[async_trait]
impl NativeRegistry for Catalog {
    fn layout(&self) -> NativeLayout {
        NativeLayout::default_of_backend("consul-catalog")
    }

    fn check(&self, instance: &Instance) -> Result<()> {
        check_name(instance)?;
        check_id(instance)?;
        check_meta(instance)
    }

    async fn register(&self, entry: Entry<'_>, _if_present: IfPresent) -> Result<()> {
        let (root, session, instance) = (entry.root, entry.session, entry.instance);
        self.check(instance)?;
        let consul = session
            .as_any()
            .downcast_ref::<ConsulSession>()
            .ok_or_else(|| {
                Error::InvalidArgument("the catalog registers on Consul sessions only".into())
            })?;
        let id = self.service_id(root, instance);
        if let Holder::Session(other) = self.holder(root, instance).await? {
            if &other != session.id() {
                self.deregister_id(&id).await?;
                self.settle(&instance.service, &id, false).await?;
            }
        }
        let mut meta = instance.metadata.clone();
        meta.insert(META_ID.into(), instance.id.clone());
        meta.insert(META_SESSION.into(), session.id().0.clone());
        meta.insert(META_REGISTRY.into(), self.registry_path(root));
        let body = serde_json::json!({
            "ID": id,
            "Name": instance.service,
            "Address": instance.address,
            "Port": instance.port,
            "Tags": instance.tags,
            "Meta": meta,
            "Check": {
                "CheckID": format!("{id}:coord-session"),
                "Name": "coord session",
                "Notes": format!("passing while the coord session {} lives", session.id()),
                "AliasService": consul.check_id(),
                "DeregisterCriticalServiceAfter": DEREGISTER_CRITICAL_AFTER,
            },
        });
        let what = "service registration";
        let seg = ["v1", "agent", "service", "register"];
        self.api
            .put(&seg, Some(body), self.api.timeout, what)
            .await?
            .ok(None, what)?;
        self.settle(&instance.service, &id, true).await
    }

    async fn deregister(&self, entry: Entry<'_>) -> Result<()> {
        let (root, instance) = (entry.root, entry.instance);
        match self.holder(root, instance).await? {
            Holder::Session(s) if &s == entry.session.id() => {
                let id = self.service_id(root, instance);
                self.deregister_id(&id).await?;
                self.settle(&instance.service, &id, false).await
            }
            _ => Ok(()),
        }
    }

    async fn holder(&self, root: &Path, instance: &Instance) -> Result<Holder> {
        let id = self.service_id(root, instance);
        Ok(match self.agent_service(&id).await? {
            None => Holder::Nobody,
            Some(s) => match s.meta.as_ref().and_then(|m| m.get(META_SESSION)) {
                Some(sid) => Holder::Session(SessionId(sid.clone())),
                None => Holder::Foreign,
            },
        })
    }

    async fn discover(&self, root: &Path, service: &str) -> Result<Vec<Instance>> {
        Ok(self.passing(root, service, None).await?.0)
    }

    async fn services(&self, root: &Path) -> Result<Vec<String>> {
        let what = "catalog services";
        let u = self.api.url(&["v1", "catalog", "services"], None)?;
        let a = self.api.get(u, None, what).await?.ok(None, what)?;
        let all: BTreeMap<String, serde_json::Value> = parse(&a.body, what)?;
        let names = all.into_keys().filter(|n| n != SESSION_SERVICE);
        if self.is_whole(root) {
            return Ok(names.collect());
        }
        // A view: the services with an instance registered through this registry.
        let path = self.registry_path(root);
        let reads = names.map(|name| {
            let path = &path;
            async move {
                let what = "catalog service read";
                let u = self.api.url(&["v1", "catalog", "service", &name], None)?;
                let a = self.api.get(u, None, what).await?.ok(None, what)?;
                let entries: Vec<serde_json::Value> = parse(&a.body, what)?;
                let ours = entries
                    .iter()
                    .any(|e| e["ServiceMeta"][META_REGISTRY].as_str() == Some(path.as_str()));
                Ok::<_, Error>(ours.then_some(name))
            }
        });
        let found: Vec<Option<String>> = futures::stream::iter(reads)
            .buffered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn watch(
        &self,
        root: &Path,
        service: &str,
    ) -> Result<BoxStream<'static, Result<Vec<Instance>>>> {
        let (first, index) = self.passing(root, service, None).await?;
        let me = Catalog::new(self.api.clone(), &self.namespace);
        let (root, service) = (root.clone(), service.to_owned());
        let state = (me, root, service, index, first.clone(), false);
        let rest =
            futures::stream::unfold(state, |(me, root, service, index, last, done)| async move {
                if done {
                    return None;
                }
                let mut index = index;
                loop {
                    let wait = me.api.wait;
                    match me.passing(&root, &service, Some((index, wait))).await {
                        // Consul's index may go backwards (a snapshot restore): start over.
                        Ok((list, i)) => {
                            index = if i < index { 0 } else { i };
                            if list != last {
                                let next = (me, root, service, index, list.clone(), false);
                                return Some((Ok(list), next));
                            }
                        }
                        Err(e) => {
                            return Some((Err(e), (me, root, service, index, last, true)));
                        }
                    }
                }
            });
        Ok(futures::stream::once(async move { Ok(first) })
            .chain(rest)
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_checked() {
        let ok = Instance::new("api-2", "x", "h", 1).with_meta("zone_a-1", "v");
        assert!(check_name(&ok).is_ok() && check_meta(&ok).is_ok());
        for id in ["a\"b", "a\\b"] {
            assert!(
                check_id(&Instance::new("api", id, "h", 1)).is_err(),
                "{id:?}"
            );
        }
        for bad in ["", "a_b", "a.b", &"x".repeat(64)] {
            let i = Instance::new(bad, "x", "h", 1);
            assert!(
                matches!(check_name(&i), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        let long_key = "k".repeat(129);
        let long_value = "v".repeat(513);
        for (k, v) in [
            ("a.b", "v"),
            ("", "v"),
            (long_key.as_str(), "v"),
            ("consul-x", "v"),
            (META_SESSION, "v"),
            ("k", long_value.as_str()),
        ] {
            let i = Instance::new("api", "x", "h", 1).with_meta(k, v);
            let e = check_meta(&i).unwrap_err().to_string();
            assert!(e.contains("metadata key"), "{k:?}: {e}");
        }
        let mut many = Instance::new("api", "x", "h", 1);
        for n in 0..62 {
            many = many.with_meta(&format!("k{n}"), "v");
        }
        assert!(check_meta(&many).is_err());
    }
}
