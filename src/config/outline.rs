//! What a configuration runs, in words and with no secret in them: the
//! lines `qproxy -t` prints, the node's ready line, and the effective
//! configuration as JSON with its passwords and tokens replaced.

use std::net::SocketAddr;

use super::*;

/// Shown in place of a password or a token.
pub const REDACTED: &str = "[redacted]";

impl Config {
    /// `(part, description)` pairs: the mode, each listener with its
    /// address and downstream, the store and the MQTT broker, and where a
    /// Playback node pulls from. With `bound` (addresses by listener name:
    /// `http`, `grpc`, `tcp`, `api`, and `mqtt` for the embedded broker),
    /// only the listeners bound are named, at their bound addresses;
    /// without it, the configured ones.
    pub fn outline(&self, bound: Option<&[(&str, SocketAddr)]>) -> Vec<(&'static str, String)> {
        let find = |name: &str| {
            bound.and_then(|b| {
                b.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, a)| a.to_string())
            })
        };
        let listener = |name: &str, host: &str, port: u16| match bound {
            Some(_) => find(name),
            None => Some(format!("{host}:{port}")),
        };
        let tls = |on: bool| if on { " (tls)" } else { "" };
        let mut parts = vec![("mode", self.mode.to_string())];
        if let Some(h) = self.http.as_ref().filter(|h| h.enabled) {
            if let Some(at) = listener("http", &h.host, h.port) {
                let tls = tls(self.http_tls());
                parts.push(("http", format!("{at}{tls} -> {}", h.downstream)));
            }
        }
        if let Some(g) = self.grpc.as_ref().filter(|g| g.enabled) {
            if let Some(at) = listener("grpc", &g.host, g.port) {
                let downstreams: Vec<String> = g
                    .downstream
                    .iter()
                    .map(|d| match d.is_https() {
                        true => format!("https://{}", d.authority()),
                        false => d.authority().to_string(),
                    })
                    .collect();
                let tls = tls(self.grpc_tls());
                parts.push(("grpc", format!("{at}{tls} -> {}", downstreams.join(", "))));
            }
        }
        if let Some(t) = self.tcp.as_ref().filter(|t| t.enabled) {
            if let Some(at) = listener("tcp", &t.host, t.port) {
                let (listen, to) = (tls(t.tls), tls(t.downstream_tls));
                parts.push(("tcp", format!("{at}{listen} -> {}{to}", t.downstream)));
            }
        }
        if let Some(at) = listener("api", &self.api.host, self.api.port) {
            parts.push(("api", format!("{at}{}", tls(self.api.tls))));
        }
        parts.push(("store", self.store_name()));
        let mqtt = match self.mqtt.as_ref().filter(|m| m.enabled) {
            None => "off".to_string(),
            Some(m) => match m.embedded() {
                Some(b) => format!(
                    "{} (embedded broker)",
                    find("mqtt").unwrap_or_else(|| format!("{}:{}", b.host, b.port))
                ),
                None => {
                    let (host, port) = m.broker_addr();
                    format!("{host}:{port}{}", if m.tls { " (tls)" } else { "" })
                }
            },
        };
        parts.push(("mqtt", mqtt));
        if self.mode == Mode::Playback && self.sync.enabled {
            let peer = match &self.sync.peer {
                Some(p) => format!(
                    "{}:{}{} as {}",
                    p.host,
                    p.port,
                    if p.tls { " (tls)" } else { "" },
                    self.sync.peer_id
                ),
                None if self.mqtt_enabled() => format!("over mqtt as {}", self.sync.peer_id),
                None => format!("found in zookeeper, as {}", self.sync.peer_id),
            };
            parts.push(("peer", peer));
        }
        parts
    }

    /// The store in words: `embedded ./data` or `redis redis://host:6379`
    /// without its password.
    pub fn store_name(&self) -> String {
        match &self.redis {
            Some(redis) => format!("redis {}", redact_url(&redis.url)),
            None => format!("embedded {}", self.data_dir.display()),
        }
    }

    /// The configuration in force, defaults filled in, as pretty JSON in
    /// the file's key order; passwords and tokens are [`REDACTED`] (file
    /// paths, such as `tls.tls_key`, are shown: they are not the key).
    pub fn effective_json(&self) -> String {
        let mut shown = self.clone();
        let hide = |secret: &mut Option<String>| {
            if secret.is_some() {
                *secret = Some(REDACTED.into());
            }
        };
        hide(&mut shown.api.auth_token);
        if let Some(peer) = &mut shown.sync.peer {
            hide(&mut peer.auth_token);
        }
        if let Some(mqtt) = &mut shown.mqtt {
            hide(&mut mqtt.token);
        }
        if let Some(redis) = &mut shown.redis {
            redis.url = redact_url(&redis.url);
        }
        serde_json::to_string_pretty(&shown).expect("a config always serializes")
    }
}

/// `url` with its password (`redis://user:secret@host`, or
/// `?pass=`/`?password=` in the query) replaced by [`REDACTED`].
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if matches!(key, "pass" | "password") => {
                        format!("{key}={REDACTED}")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_leave_urls() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://:secret@10.0.0.5:6379/0",
                "redis://:[redacted]@10.0.0.5:6379/0",
            ),
            (
                "rediss://qproxy:se:cr@et@r.example:6380",
                "rediss://qproxy:[redacted]@r.example:6380",
            ),
            ("redis://user@h", "redis://user@h"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=secret",
                "redis+unix:///run/redis.sock?db=1&pass=[redacted]",
            ),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
