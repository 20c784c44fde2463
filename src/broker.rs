//! The embedded MQTT broker: rumqttd inside the node (MQTT 3.1.1 only).
//!
//! Its base configuration is `broker/rumqttd.json` (compiled in); the node
//! sets the listen address and, with `mqtt.app_id`/`token`, the one user
//! allowed in. rumqttd runs on threads of its own and has no shutdown: it
//! lives as long as the process.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::time::{Duration, Instant};

use tracing::info;

const BASE_CONFIG: &str = include_str!("../broker/rumqttd.json");

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker: {addr} is not an address: {reason}")]
    Address { addr: String, reason: String },
    #[error("embedded broker: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("embedded broker: not accepting connections on {addr} after {waited:?}")]
    NotListening { addr: SocketAddr, waited: Duration },
}

/// A running embedded broker.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedBroker {
    pub addr: SocketAddr,
}

/// Starts rumqttd on `host:port` (port 0 picks a free one) and waits until
/// it accepts connections.
pub fn start(
    host: &str,
    port: u16,
    user: Option<(&str, &str)>,
) -> Result<EmbeddedBroker, BrokerError> {
    let wanted = format!("{host}:{port}");
    let mut addr = wanted
        .to_socket_addrs()
        .map_err(|e| BrokerError::Address {
            addr: wanted.clone(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| BrokerError::Address {
            addr: wanted.clone(),
            reason: "resolves to nothing".into(),
        })?;
    // rumqttd only logs a failed bind, and cannot bind port 0: check and
    // pick here.
    let probe = TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?;
    addr = probe
        .local_addr()
        .map_err(|source| BrokerError::Bind { addr, source })?;
    drop(probe);

    let mut config: rumqttd::Config =
        serde_json::from_str(BASE_CONFIG).expect("broker/rumqttd.json is a valid rumqttd config");
    for server in config.v4.iter_mut().flat_map(|v4| v4.values_mut()) {
        server.listen = addr;
        server.connections.auth =
            user.map(|(name, password)| HashMap::from([(name.to_string(), password.to_string())]));
    }
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .expect("a thread for the broker");

    let waited = Duration::from_secs(5);
    let until = Instant::now() + waited;
    // Listening is seen by the port being taken, not by connecting: rumqttd
    // logs an error for every probe connection that leaves.
    while !port_taken(addr) {
        if Instant::now() > until {
            return Err(BrokerError::NotListening { addr, waited });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // rumqttd never sets `TCP_NODELAY` on the sockets it accepts, so small
    // publishes to a subscriber wait on Nagle and delayed ACKs (~40–90 ms a
    // message). On Linux an accepted socket inherits `TCP_NODELAY` from its
    // listener, so it is set on rumqttd's listening socket.
    let nodelay = crate::os::set_nodelay_on_listener(addr);
    info!(%addr, auth = user.is_some(), nodelay, "embedded MQTT broker listening");
    Ok(EmbeddedBroker { addr })
}

fn port_taken(addr: SocketAddr) -> bool {
    matches!(TcpListener::bind(addr), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn sockets_accepted_after_the_fix_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accept_one = || {
            let _client = std::net::TcpStream::connect(addr).unwrap();
            listener.accept().unwrap().0.nodelay().unwrap()
        };
        assert!(!accept_one(), "Linux default is Nagle on");
        assert!(crate::os::set_nodelay_on_listener(addr));
        assert!(accept_one());
        assert!(
            !crate::os::set_nodelay_on_listener("127.0.0.1:1".parse().unwrap()),
            "no listener of ours there"
        );
    }
}
