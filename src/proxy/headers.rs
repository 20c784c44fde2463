//! Hop-by-hop headers (RFC 9110 §7.6.1) and forwarding headers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub use crate::model::headers::is_hop_by_hop;

/// Removes hop-by-hop headers, including those that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

/// Appends the client's address to `X-Forwarded-For`.
pub fn append_forwarded_for(headers: &mut HeaderMap, client_ip: std::net::IpAddr) {
    static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    thread_local! {
        // The last address formatted on this thread: a client sends many
        // requests, and a header value is cheap to clone.
        static LAST: std::cell::RefCell<Option<(std::net::IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    let value = match headers.get(&XFF).and_then(|v| v.to_str().ok()) {
        Some(existing) => HeaderValue::from_str(&format!("{existing}, {client_ip}")).ok(),
        None => LAST.with_borrow_mut(|last| match last {
            Some((ip, value)) if *ip == client_ip => Some(value.clone()),
            _ => {
                let value = HeaderValue::from_str(&client_ip.to_string()).ok()?;
                *last = Some((client_ip, value.clone()));
                Some(value)
            }
        }),
    };
    if let Some(value) = value {
        headers.insert(&XFF, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_standard_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "10.0.0.1".parse().unwrap());
        append_forwarded_for(&mut h, "10.0.0.2".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2");
        for ip in ["10.0.0.3", "10.0.0.3", "::1", "10.0.0.3"] {
            let mut fresh = HeaderMap::new();
            append_forwarded_for(&mut fresh, ip.parse().unwrap());
            assert_eq!(
                fresh["x-forwarded-for"], ip,
                "the per-thread cache follows the address"
            );
        }
    }
}
