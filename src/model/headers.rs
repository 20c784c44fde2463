//! Which HTTP headers belong to one connection (RFC 9110 §7.6.1): never
//! forwarded, recorded or replayed.

use http::header::{self, HeaderName};

/// Headers that describe one connection and must not be forwarded.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// [`is_hop_by_hop`] for a name as recorded, in any case, without parsing
/// it into a [`HeaderName`] (which allocates for names it does not know).
pub fn is_hop_by_hop_name(name: &str) -> bool {
    const NAMES: [&str; 9] = [
        "connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "keep-alive",
        "proxy-connection",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_tests_name_the_same_headers() {
        for name in [
            "Connection",
            "te",
            "TRAILER",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "proxy-authenticate",
            "Keep-Alive",
            "proxy-connection",
            "content-length",
            "host",
            "x-te",
        ] {
            let parsed = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(is_hop_by_hop(&parsed), is_hop_by_hop_name(name), "{name}");
        }
    }
}
