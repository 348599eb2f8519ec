//! The instance codecs of the native layouts whose entries are JSON values under keys (the
//! adapters' module docs describe each layout): pure functions of an [`Instance`], shared
//! here so that an adapter keeps only its store's side.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::path::Path;

use super::native::scalar_members;
use super::Instance;

/// etcd's `client/v3/naming/endpoints` JSON (`internal.Update`), which grpc-go's etcd resolver
/// reads (coord-etcd's `GrpcNaming`).
pub mod grpc {
    use super::*;

    /// The endpoints package's value (`internal.Update`; Go's field names).
    #[derive(Serialize, Deserialize)]
    struct Update {
        #[serde(rename = "Op", default)]
        op: u8,
        #[serde(rename = "Addr")]
        addr: String,
        #[serde(rename = "Metadata", default)]
        metadata: serde_json::Value,
    }

    /// What coord writes into `Metadata`.
    #[derive(Serialize)]
    struct CoordMeta<'a> {
        id: &'a str,
        metadata: &'a BTreeMap<String, String>,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        tags: &'a [String],
    }

    /// The `host:port` of an instance (an IPv6 host in brackets), as grpc dials it.
    pub fn endpoint_addr(instance: &Instance) -> String {
        if instance.address.contains(':') && !instance.address.starts_with('[') {
            format!("[{}]:{}", instance.address, instance.port)
        } else {
            format!("{}:{}", instance.address, instance.port)
        }
    }

    /// The endpoints JSON of `instance` (see coord-etcd's `naming` module).
    pub fn encode(instance: &Instance) -> Result<Vec<u8>> {
        let meta = CoordMeta {
            id: &instance.id,
            metadata: &instance.metadata,
            tags: &instance.tags,
        };
        let update = Update {
            op: 0,
            addr: endpoint_addr(instance),
            metadata: serde_json::to_value(meta)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?,
        };
        serde_json::to_vec(&update).map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    /// Decodes the entry at `key` (under `<target>/`) of `service` (see coord-etcd's `naming` module).
    pub fn decode(service: &str, key: &str, value: &[u8]) -> Result<Instance> {
        let bad = |reason: String| Error::MalformedData {
            path: key.to_owned(),
            reason,
        };
        let u: Update = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
        if u.op != 0 {
            return Err(bad(format!("Op {} is not an add (0)", u.op)));
        }
        let (host, port) = u
            .addr
            .rsplit_once(':')
            .ok_or_else(|| bad(format!("Addr {:?} is not host:port", u.addr)))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad(format!("Addr {:?} has no valid port", u.addr)))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let last = key.rsplit('/').next().unwrap_or(key);
        let mut instance = Instance::new(service, last, host, port);
        if let serde_json::Value::Object(m) = u.metadata {
            match m.get("id") {
                Some(serde_json::Value::String(id)) => {
                    instance.id = id.clone();
                    if let Some(serde_json::Value::Object(md)) = m.get("metadata") {
                        instance.metadata = scalar_members(md);
                    }
                    if let Some(serde_json::Value::Array(tags)) = m.get("tags") {
                        instance.tags = tags
                            .iter()
                            .filter_map(|t| t.as_str().map(str::to_owned))
                            .collect();
                    }
                }
                _ => instance.metadata = scalar_members(&m),
            }
        }
        Ok(instance)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn writes_the_endpoints_json() {
            let i = Instance::new("api", "api-1", "10.0.0.7", 8080).with_meta("zone", "a");
            assert_eq!(
                String::from_utf8(encode(&i).unwrap()).unwrap(),
                r#"{"Op":0,"Addr":"10.0.0.7:8080","Metadata":{"id":"api-1","metadata":{"zone":"a"}}}"#
            );
            let v6 = Instance::new("api", "api-2", "::1", 80).with_tag("v2");
            assert_eq!(endpoint_addr(&v6), "[::1]:80");
            let key = format!("t/{}", endpoint_addr(&v6));
            assert_eq!(decode("api", &key, &encode(&v6).unwrap()).unwrap(), v6);
        }

        #[test]
        fn reads_what_go_services_write() {
            let go = br#"{"Op":0,"Addr":"10.0.0.9:50051","Metadata":null}"#;
            let i = decode("grpc", "t/10.0.0.9:50051", go).unwrap();
            assert_eq!(
                i,
                Instance::new("grpc", "10.0.0.9:50051", "10.0.0.9", 50051)
            );
            let meta = br#"{"Op":0,"Addr":"h:1","Metadata":{"weight":3,"ok":true,"x":{"y":1}}}"#;
            let i = decode("grpc", "t/h:1", meta).unwrap();
            assert_eq!(i.metadata.get("weight").map(String::as_str), Some("3"));
            assert_eq!(i.metadata.get("ok").map(String::as_str), Some("true"));
            assert!(!i.metadata.contains_key("x"));
            for bad in [
                &br#"{"Op":1,"Addr":"h:1"}"#[..],
                br#"{"Op":0,"Addr":"no-port"}"#,
                br#"{"Op":0,"Addr":"h:99999"}"#,
                b"not json",
            ] {
                let e = decode("grpc", "t/x", bad).unwrap_err();
                assert!(matches!(e, Error::MalformedData { .. }), "{e:?}");
            }
        }
    }
}

/// Curator's x-discovery `ServiceInstance` JSON (coord-zk's `CuratorDiscovery`).
pub mod curator {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;

    /// Curator's `ServiceInstance` (field names and order as Curator writes them).
    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ServiceInstance {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        address: Option<String>,
        #[serde(default)]
        port: Option<i64>,
        #[serde(default)]
        ssl_port: Option<i64>,
        #[serde(default)]
        payload: serde_json::Value,
        #[serde(rename = "registrationTimeUTC", default)]
        registration_time_utc: i64,
        #[serde(default)]
        service_type: Option<String>,
        #[serde(default)]
        uri_spec: serde_json::Value,
        /// coord's metadata (not Curator's; Curator ignores it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<BTreeMap<String, String>>,
        /// coord's tags (not Curator's; Curator ignores them).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tags: Vec<String>,
    }

    /// Curator's JSON of `instance` (see coord-zk's `discovery` module).
    pub fn encode(instance: &Instance) -> Result<Vec<u8>> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let si = ServiceInstance {
            name: Some(instance.service.clone()),
            id: Some(instance.id.clone()),
            address: Some(instance.address.clone()),
            port: Some(i64::from(instance.port)),
            ssl_port: None,
            payload: serde_json::Value::Null,
            registration_time_utc: now,
            service_type: Some("DYNAMIC".to_owned()),
            uri_spec: serde_json::Value::Null,
            metadata: Some(instance.metadata.clone()),
            tags: instance.tags.clone(),
        };
        serde_json::to_vec(&si).map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    /// Decodes the node `node` (named by the instance id) of `service` (see coord-zk's `discovery` module).
    pub fn decode(service: &str, node: &Path, value: &[u8]) -> Result<Instance> {
        let bad = |reason: String| Error::MalformedData {
            path: node.to_string(),
            reason,
        };
        let si: ServiceInstance = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
        let address = si
            .address
            .filter(|a| !a.is_empty())
            .ok_or_else(|| bad("no address".to_owned()))?;
        let port = si
            .port
            .or(si.ssl_port)
            .ok_or_else(|| bad("neither port nor sslPort".to_owned()))?;
        let port = u16::try_from(port).map_err(|_| bad(format!("port {port} out of range")))?;
        let id = si.id.unwrap_or_else(|| node.name().to_owned());
        let mut instance = Instance::new(service, &id, &address, port);
        instance.tags = si.tags;
        instance.metadata = match (si.metadata, si.payload) {
            (Some(m), _) => m,
            (None, serde_json::Value::Object(mut p)) => {
                p.remove("@class");
                scalar_members(&p)
            }
            (None, _) => BTreeMap::new(),
        };
        Ok(instance)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn node() -> Path {
            Path::new("/services/api/a1").unwrap()
        }

        #[test]
        fn reads_what_curator_5_4_writes() {
            // As Curator 5.4's ServiceDiscovery stored it on this machine (payload: a HashMap).
            let json = br#"{"name":"api","id":"a1","address":"10.0.0.1","port":8080,"sslPort":null,"payload":{"@class":"java.util.HashMap","owner":"curator"},"registrationTimeUTC":1796247739833,"serviceType":"DYNAMIC","uriSpec":null}"#;
            let i = decode("api", &node(), json).unwrap();
            assert_eq!(
                i,
                Instance::new("api", "a1", "10.0.0.1", 8080).with_meta("owner", "curator")
            );
        }

        #[test]
        fn writes_curator_s_fields_and_reads_them_back() {
            let i = Instance::new("api", "a1", "10.0.0.1", 8080)
                .with_meta("zone", "a")
                .with_tag("v2");
            let v: serde_json::Value = serde_json::from_slice(&encode(&i).unwrap()).unwrap();
            let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            for k in [
                "name",
                "id",
                "address",
                "port",
                "sslPort",
                "payload",
                "registrationTimeUTC",
                "serviceType",
                "uriSpec",
            ] {
                assert!(keys.contains(&k), "{k} missing from {v}");
            }
            assert_eq!(v["serviceType"], "DYNAMIC");
            assert!(v["payload"].is_null());
            assert_eq!(decode("api", &node(), &encode(&i).unwrap()).unwrap(), i);
        }

        #[test]
        fn ssl_only_and_malformed_entries() {
            let ssl = br#"{"name":"api","id":"a1","address":"h","port":null,"sslPort":8443}"#;
            assert_eq!(decode("api", &node(), ssl).unwrap().port, 8443);
            for bad in [
                &br#"{"name":"api","id":"a1","address":"h"}"#[..],
                br#"{"name":"api","id":"a1","port":1}"#,
                br#"{"name":"api","id":"a1","address":"h","port":70000}"#,
                b"not json",
            ] {
                let e = decode("api", &node(), bad).unwrap_err();
                assert!(matches!(e, Error::MalformedData { .. }), "{e:?}");
            }
        }
    }
}
