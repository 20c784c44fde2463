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
    }
}
