//! Item 6 in the backend's other registry layout: the native layout on ZooKeeper (Curator's
//! x-discovery) and etcd (grpc-go's naming), whose default is coord's generic layout; the
//! generic layout on Consul, whose default is its catalog. Same measurements as
//! [`crate::recipes::registry`], through a client whose URL selects the layout.

use coord::Client;

use crate::cx::Cx;
use crate::recipes;
use crate::stats::{Res, Row};

/// The layout item 6 did not measure on `backend` (`None` for mem, which has one layout).
fn other_layout(backend: &str) -> Option<&'static str> {
    match backend {
        "zk" | "etcd" => Some("native"),
        "consul" => Some("generic"),
        _ => None,
    }
}

/// `url` with the query option `opt` added.
fn with_option(url: &str, opt: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{opt}")
}

/// Item 6 again in the other layout; its rows name the layout.
pub async fn registry_other_layout(cx: &Cx) -> Res<Vec<Row>> {
    let Some(layout) = other_layout(cx.name) else {
        return Ok(Vec::new());
    };
    let url = with_option(&cx.url, &format!("registry={layout}"));
    let backend = coord::connect_backend(&url).await?;
    let name = Client::new(backend.clone()).registry().layout_name()?;
    let sub = Cx {
        name: cx.name,
        url,
        backend,
        raw: None,
        uniq: cx.uniq.clone(),
        sizes: cx.sizes.clone(),
    };
    let mut rows = recipes::registry(&sub).await?;
    for r in &mut rows {
        r.measure = r
            .measure
            .replacen("registry:", &format!("registry ({name} layout):"), 1);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_other_layout_and_its_url() {
        assert_eq!(other_layout("etcd"), Some("native"));
        assert_eq!(other_layout("consul"), Some("generic"));
        assert_eq!(other_layout("mem"), None);
        assert_eq!(
            with_option("zk://h:1/ns", "registry=native"),
            "zk://h:1/ns?registry=native"
        );
        assert_eq!(
            with_option("zk://h:1/ns?a=1", "registry=native"),
            "zk://h:1/ns?a=1&registry=native"
        );
    }
}
