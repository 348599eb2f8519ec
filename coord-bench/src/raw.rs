//! The raw clients: the same operations as coord's kernel, straight through the client crate
//! (zookeeper-client, etcd-client, Consul's HTTP API over reqwest), as a user would write them
//! without coord. They are the denominators of the overhead ratios.

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zookeeper_client as zk;

use crate::stats::Res;

/// A raw client of one server.
#[derive(Clone)]
pub enum Raw {
    /// ZooKeeper (paths absolute, no chroot).
    Zk(zk::Client),
    /// etcd (keys are the path without its leading `/`).
    Etcd(Box<etcd_client::Client>),
    /// Consul's HTTP API (keys are the path without its leading `/`).
    Consul {
        /// The HTTP client.
        http: reqwest::Client,
        /// `http://host:port`.
        base: String,
    },
}

fn flat(path: &str) -> &str {
    path.trim_start_matches('/')
}

fn consul_index(resp: &reqwest::Response) -> u64 {
    resp.headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Raw {
    /// Connects the raw client of `backend` (`zk`, `etcd`, `consul`) to `endpoint`.
    pub async fn connect(backend: &str, endpoint: &str) -> Res<Raw> {
        Ok(match backend {
            "zk" => Raw::Zk(
                zk::Client::connector()
                    .with_session_timeout(Duration::from_secs(10))
                    .connect(endpoint)
                    .await?,
            ),
            "etcd" => Raw::Etcd(Box::new(
                etcd_client::Client::connect([endpoint], None).await?,
            )),
            "consul" => Raw::Consul {
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()?,
                base: format!("http://{}", endpoint.trim_start_matches("http://")),
            },
            other => return Err(format!("no raw client for {other}").into()),
        })
    }

    /// Makes `parent` exist where the backend needs parents (ZooKeeper).
    pub async fn make_parent(&self, parent: &str) -> Res<()> {
        if let Raw::Zk(c) = self {
            let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
            match c.create(parent, b"", &opts).await {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Creates `path` if absent (fails if it exists).
    pub async fn create(&self, path: &str, value: &[u8]) -> Res<()> {
        match self {
            Raw::Zk(c) => {
                let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                c.create(path, value, &opts).await?;
            }
            Raw::Etcd(c) => {
                let key = flat(path);
                let txn = Txn::new()
                    .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key, value, None)]);
                if !c.clone().txn(txn).await?.succeeded() {
                    return Err(format!("{path} exists").into());
                }
            }
            Raw::Consul { http, base } => {
                let r = http
                    .put(format!("{base}/v1/kv/{}?cas=0", flat(path)))
                    .body(value.to_vec())
                    .send()
                    .await?;
                if r.text().await?.trim() != "true" {
                    return Err(format!("{path} exists").into());
                }
            }
        }
        Ok(())
    }

    /// Reads `path`; returns its version (ZooKeeper data version, etcd mod revision, Consul
    /// ModifyIndex).
    pub async fn get(&self, path: &str) -> Res<u64> {
        match self {
            Raw::Zk(c) => {
                let (_, stat) = c.get_data(path).await?;
                Ok(stat.version as u64)
            }
            Raw::Etcd(c) => {
                let r = c.clone().get(flat(path), None).await?;
                let kv = r.kvs().first().ok_or("absent")?;
                Ok(kv.mod_revision() as u64)
            }
            Raw::Consul { http, base } => {
                let r = http
                    .get(format!("{base}/v1/kv/{}", flat(path)))
                    .send()
                    .await?;
                let v: serde_json::Value = r.json().await?;
                v.get(0)
                    .and_then(|e| e.get("ModifyIndex"))
                    .and_then(|i| i.as_u64())
                    .ok_or_else(|| "absent".into())
            }
        }
    }

    /// Writes `path` only at `version` (compare-and-set).
    pub async fn set(&self, path: &str, value: &[u8], version: u64) -> Res<()> {
        match self {
            Raw::Zk(c) => {
                c.set_data(path, value, Some(version as i32)).await?;
            }
            Raw::Etcd(c) => {
                let key = flat(path);
                let txn = Txn::new()
                    .when([Compare::mod_revision(key, CompareOp::Equal, version as i64)])
                    .and_then([TxnOp::put(key, value, None)]);
                if !c.clone().txn(txn).await?.succeeded() {
                    return Err(format!("{path}: version mismatch").into());
                }
            }
            Raw::Consul { http, base } => {
                let r = http
                    .put(format!("{base}/v1/kv/{}?cas={version}", flat(path)))
                    .body(value.to_vec())
                    .send()
                    .await?;
                if r.text().await?.trim() != "true" {
                    return Err(format!("{path}: version mismatch").into());
                }
            }
        }
        Ok(())
    }

    /// Writes `path` unconditionally (the writer of the watch measurements).
    pub async fn put(&self, path: &str, value: &[u8]) -> Res<()> {
        match self {
            Raw::Zk(c) => {
                c.set_data(path, value, None).await?;
            }
            Raw::Etcd(c) => {
                c.clone().put(flat(path), value, None).await?;
            }
            Raw::Consul { http, base } => {
                http.put(format!("{base}/v1/kv/{}", flat(path)))
                    .body(value.to_vec())
                    .send()
                    .await?
                    .error_for_status()?;
            }
        }
        Ok(())
    }

    /// Like [`Raw::put`], for a key given as raw bytes (etcd layout keys).
    pub async fn put_bytes(&self, key: &[u8], value: &[u8]) -> Res<()> {
        match self {
            Raw::Etcd(c) => {
                c.clone().put(key, value, None).await?;
                Ok(())
            }
            _ => self.put(&String::from_utf8_lossy(key), value).await,
        }
    }

    /// Deletes `path`.
    pub async fn delete(&self, path: &str) -> Res<()> {
        match self {
            Raw::Zk(c) => c.delete(path, None).await?,
            Raw::Etcd(c) => {
                c.clone().delete(flat(path), None).await?;
            }
            Raw::Consul { http, base } => {
                http.delete(format!("{base}/v1/kv/{}", flat(path)))
                    .send()
                    .await?
                    .error_for_status()?;
            }
        }
        Ok(())
    }

    /// Lists the children of `parent`; returns their number.
    pub async fn children(&self, parent: &str) -> Res<usize> {
        match self {
            Raw::Zk(c) => Ok(c.list_children(parent).await?.len()),
            Raw::Etcd(c) => {
                let prefix = format!("{}/", flat(parent));
                let r = c
                    .clone()
                    .get(
                        prefix,
                        Some(GetOptions::new().with_prefix().with_keys_only()),
                    )
                    .await?;
                Ok(r.kvs().len())
            }
            Raw::Consul { http, base } => {
                let r = http
                    .get(format!("{base}/v1/kv/{}/?keys&separator=/", flat(parent)))
                    .send()
                    .await?;
                let v: Vec<String> = r.json().await?;
                Ok(v.len())
            }
        }
    }

    /// Watches one key (`key` as the server names it: a full ZooKeeper path, an etcd key, a
    /// Consul key) and sends the arrival time of each change event. Returns once the watch is
    /// armed. On ZooKeeper, whose notifications carry no data, `with_value` also gets the time
    /// the re-arming read (which returns the new value) completed.
    pub async fn watch(
        &self,
        key: Vec<u8>,
        tx: mpsc::UnboundedSender<Instant>,
        with_value: mpsc::UnboundedSender<Instant>,
    ) -> Res<JoinHandle<()>> {
        let (armed_tx, armed_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let task = match self.clone() {
            Raw::Zk(c) => {
                let path = String::from_utf8(key)?;
                tokio::spawn(async move {
                    let mut armed = Some(armed_tx);
                    let mut fired = false;
                    loop {
                        // One-shot watch: re-armed after each event (a read with a watch).
                        let w = match c.get_and_watch_data(&path).await {
                            Ok((_, _, w)) => {
                                if fired && with_value.send(Instant::now()).is_err() {
                                    return;
                                }
                                w
                            }
                            Err(e) => {
                                if let Some(a) = armed.take() {
                                    let _ = a.send(Err(e.to_string()));
                                }
                                return;
                            }
                        };
                        if let Some(a) = armed.take() {
                            let _ = a.send(Ok(()));
                        }
                        let _ = w.changed().await;
                        fired = true;
                        if tx.send(Instant::now()).is_err() {
                            return;
                        }
                    }
                })
            }
            Raw::Etcd(mut c) => {
                let mut stream = c.watch(key, None).await?;
                let _ = armed_tx.send(Ok(()));
                tokio::spawn(async move {
                    while let Ok(Some(m)) = stream.message().await {
                        if !m.events().is_empty() && tx.send(Instant::now()).is_err() {
                            return;
                        }
                    }
                })
            }
            Raw::Consul { http, base } => {
                let key = String::from_utf8(key)?;
                let url = format!("{base}/v1/kv/{key}");
                let first = http.get(&url).send().await?;
                let mut index = consul_index(&first);
                let _ = armed_tx.send(Ok(()));
                tokio::spawn(async move {
                    loop {
                        let r = http
                            .get(format!("{url}?index={index}&wait=30s"))
                            .send()
                            .await;
                        let Ok(r) = r else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        let now = Instant::now();
                        let i = consul_index(&r);
                        let _ = r.bytes().await;
                        if i != index {
                            index = i;
                            if tx.send(now).is_err() {
                                return;
                            }
                        }
                    }
                })
            }
        };
        match armed_rx.await {
            Ok(Ok(())) => Ok(task),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err("the raw watch ended before it was armed".into()),
        }
    }

    /// Writes many keys fast (setup of the grandchildren test): etcd transactions of 128
    /// puts, Consul transactions of 64 sets, ZooKeeper pipelined creates; 8 batches in flight.
    pub async fn bulk_create(&self, keys: Vec<Vec<u8>>) -> Res<()> {
        use futures::{StreamExt, TryStreamExt};
        let per = match self {
            Raw::Etcd(_) => 128,
            Raw::Consul { .. } => 64,
            Raw::Zk(_) => 256,
        };
        let batches: Vec<Vec<Vec<u8>>> = keys.chunks(per).map(|c| c.to_vec()).collect();
        futures::stream::iter(batches)
            .map(|batch| {
                let me = self.clone();
                async move {
                    match me {
                        Raw::Etcd(mut c) => {
                            let ops: Vec<TxnOp> = batch
                                .into_iter()
                                .map(|k| TxnOp::put(k, Vec::<u8>::new(), None))
                                .collect();
                            c.txn(Txn::new().and_then(ops)).await?;
                        }
                        Raw::Consul { http, base } => {
                            let ops: Vec<serde_json::Value> = batch
                                .into_iter()
                                .map(|k| {
                                    serde_json::json!({"KV": {"Verb": "set",
                                        "Key": String::from_utf8_lossy(&k), "Value": ""}})
                                })
                                .collect();
                            http.put(format!("{base}/v1/txn"))
                                .json(&ops)
                                .send()
                                .await?
                                .error_for_status()?;
                        }
                        Raw::Zk(c) => {
                            let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                            let paths: Vec<String> = batch
                                .into_iter()
                                .map(|k| String::from_utf8_lossy(&k).into_owned())
                                .collect();
                            let futs = paths.iter().map(|p| c.create(p, b"", &opts));
                            futures::future::try_join_all(futs).await?;
                        }
                    }
                    Ok::<(), crate::stats::BoxError>(())
                }
            })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Deletes everything under `prefix` (etcd and Consul; best effort cleanup).
    pub async fn delete_prefix(&self, prefix: &[u8]) -> Res<()> {
        match self {
            Raw::Etcd(c) => {
                c.clone()
                    .delete(
                        prefix,
                        Some(etcd_client::DeleteOptions::new().with_prefix()),
                    )
                    .await?;
            }
            Raw::Consul { http, base } => {
                http.delete(format!(
                    "{base}/v1/kv/{}?recurse",
                    String::from_utf8_lossy(prefix)
                ))
                .send()
                .await?;
            }
            Raw::Zk(_) => {}
        }
        Ok(())
    }
}
