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
