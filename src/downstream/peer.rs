//! Which address an outbound request goes to: the one place that decides
//! (Pingora's `upstream_peer`). Today a node's configured downstream; service
//! discovery and gRPC round robin plug in here.

use http::uri::{PathAndQuery, Scheme};
use http::Uri;

use crate::config::Downstream;

/// The URI a request for `uri` is sent to: the downstream's scheme,
/// authority and path prefix, then the request's path and query.
pub fn http_peer(downstream: &Downstream, uri: &Uri) -> Result<Uri, http::Error> {
    let prefix = downstream.path_prefix();
    let path_and_query = match (prefix.is_empty(), uri.path_and_query()) {
        (true, Some(pq)) => pq.clone(),
        (true, None) => PathAndQuery::from_static("/"),
        (false, pq) => {
            let pq = pq.map_or("/", PathAndQuery::as_str);
            PathAndQuery::try_from(format!("{prefix}{pq}"))?
        }
    };
    let scheme = if downstream.is_https() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    Uri::builder()
        .scheme(scheme)
        .authority(downstream.authority().clone())
        .path_and_query(path_and_query)
        .build()
}

/// The request target `http_peer` would send on the wire (origin form:
/// the downstream's path prefix, then the request's path and query),
/// appended to `out` without building a URI.
pub fn origin_form(downstream: &Downstream, uri: &Uri, out: &mut impl bytes::BufMut) {
    out.put_slice(downstream.path_prefix().as_bytes());
    let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    // An absolute URI with no path has none (`http://h?q`): the root's.
    if !pq.starts_with('/') {
        out.put_u8(b'/');
    }
    out.put_slice(pq.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_peer_keeps_path_and_query_and_adds_prefix() {
        let plain: Downstream = "http://127.0.0.1:9000".parse().unwrap();
        let uri: Uri = "/a/b?x=1&y=%20".parse().unwrap();
        assert_eq!(
            http_peer(&plain, &uri).unwrap().to_string(),
            "http://127.0.0.1:9000/a/b?x=1&y=%20"
        );
        let prefixed: Downstream = "http://h:1/base/".parse().unwrap();
        assert_eq!(
            http_peer(&prefixed, &uri).unwrap().to_string(),
            "http://h:1/base/a/b?x=1&y=%20"
        );
        let absolute: Uri = "http://other:5/p?q".parse().unwrap();
        assert_eq!(
            http_peer(&plain, &absolute).unwrap().to_string(),
            "http://127.0.0.1:9000/p?q"
        );
        let form = |d: &Downstream, u: &Uri| {
            let mut out = Vec::new();
            origin_form(d, u, &mut out);
            String::from_utf8(out).unwrap()
        };
        for (d, u) in [
            (&plain, &uri),
            (&prefixed, &uri),
            (&plain, &absolute),
            (&plain, &"http://h:1".parse().unwrap()),
        ] {
            let peer = http_peer(d, u).unwrap();
            assert_eq!(form(d, u), peer.path_and_query().unwrap().as_str(), "{u}");
        }
    }
}
