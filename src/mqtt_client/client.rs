//! An MQTT 3.1.1 client on rumqttc with reconnect, resubscription,
//! persistent sessions and request/response queries.
//!
//! [`MqttClient`] owns a background task that polls rumqttc's event loop:
//! it reconnects with backoff, restores subscriptions after a reconnect that
//! lost the session, routes query answers to their waiters, answers queries
//! for registered handlers, and fans every other message out to
//! [`MqttClient::messages`] receivers.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::message::{topic_matches, topic_safe, Message, QoS, QueryRequest, QueryResponse};

/// How to reach a broker and behave there.
#[derive(Clone)]
pub struct MqttConfig {
    pub client_id: String,
    pub host: String,
    pub port: u16,
    /// Seconds between keep-alive pings.
    pub keep_alive: u64,
    /// Sent as the MQTT user name.
    pub app_id: Option<String>,
    /// Sent as the MQTT password.
    pub token: Option<String>,
    /// false keeps the session (subscriptions and QoS 1/2 messages) on the
    /// broker while the client is away.
    pub clean_session: bool,
    /// How long [`MqttClient::connect`] waits for the broker.
    pub connect_timeout: Duration,
    /// How long [`MqttClient::query`] waits for an answer.
    pub query_timeout: Duration,
    /// Largest packet sent or accepted.
    pub max_packet_bytes: usize,
    /// Longest pause between reconnect attempts.
    pub max_reconnect_delay: Duration,
    /// MQTT over TLS with this rustls client config (the server's
    /// certificate must name `host`); plain TCP when `None`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Everything but the token, which is a secret.
impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("client_id", &self.client_id)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("keep_alive", &self.keep_alive)
            .field("app_id", &self.app_id)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("clean_session", &self.clean_session)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        MqttConfig {
            client_id: format!(
                "qproxy-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
            host: "127.0.0.1".into(),
            port: 1883,
            keep_alive: 60,
            app_id: None,
            token: None,
            clean_session: false,
            connect_timeout: Duration::from_secs(10),
            query_timeout: Duration::from_secs(5),
            max_packet_bytes: 16 << 20,
            max_reconnect_delay: Duration::from_secs(5),
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("mqtt: not connected to {0}")]
    NotConnected(String),
    #[error("mqtt: no connection to {broker} within {timeout:?}: {reason}")]
    ConnectTimeout {
        broker: String,
        timeout: Duration,
        reason: String,
    },
    #[error("mqtt: the client is stopped")]
    Stopped,
    #[error("mqtt: request queue: {0}")]
    Client(#[from] rumqttc::ClientError),
    #[error("mqtt: query on {topic}: no answer within {timeout:?}")]
    QueryTimeout { topic: String, timeout: Duration },
    #[error("mqtt: query on {topic} failed: {message}")]
    QueryFailed { topic: String, message: String },
}

/// Answers one query payload.
pub type QueryHandler =
    Arc<dyn Fn(Bytes) -> Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>> + Send + Sync>;

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Bytes, String>>>>;

/// State shared by the handle and its event-loop task.
struct Shared {
    broker: String,
    reply_topic: String,
    subscriptions: Mutex<Vec<(String, QoS)>>,
    handlers: Mutex<Vec<(String, QueryHandler)>>,
    pending: Pending,
    messages: broadcast::Sender<Message>,
    connected: watch::Sender<bool>,
    last_error: Mutex<Option<String>>,
    /// QoS 1/2 publishes handed to the event loop and not yet acknowledged.
    unacked: AtomicI64,
}

struct Running {
    client: AsyncClient,
    task: JoinHandle<()>,
}

pub struct MqttClient {
    config: MqttConfig,
    shared: Arc<Shared>,
    running: Option<Running>,
    next_query: AtomicU64,
}

impl MqttClient {
    pub fn new(config: MqttConfig) -> MqttClient {
        let (messages, _) = broadcast::channel(4096);
        let (connected, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            broker: format!("{}:{}", config.host, config.port),
            reply_topic: format!("qproxy/reply/{}", topic_safe(&config.client_id)),
            subscriptions: Mutex::new(Vec::new()),
            handlers: Mutex::new(Vec::new()),
            pending: Mutex::new(HashMap::new()),
            messages,
            connected,
            last_error: Mutex::new(None),
            unacked: AtomicI64::new(0),
        });
        MqttClient {
            config,
            shared,
            running: None,
            next_query: AtomicU64::new(1),
        }
    }

    /// Starts the connection and waits until the broker accepts it.
    pub async fn connect(&mut self) -> Result<(), MqttError> {
        self.start();
        let mut connected = self.shared.connected.subscribe();
        let waited =
            tokio::time::timeout(self.config.connect_timeout, connected.wait_for(|c| *c)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            _ => {
                let reason = self
                    .shared
                    .last_error
                    .lock()
                    .expect("error lock")
                    .clone()
                    .unwrap_or_else(|| "no answer".into());
                self.stop();
                Err(MqttError::ConnectTimeout {
                    broker: self.shared.broker.clone(),
                    timeout: self.config.connect_timeout,
                    reason,
                })
            }
        }
    }

    /// Starts the connection without waiting: the client keeps trying until
    /// the broker is there (for nodes that start before their broker).
    pub fn start(&mut self) {
        if self.running.is_some() {
            return;
        }
        let mut options =
            MqttOptions::new(&self.config.client_id, &self.config.host, self.config.port);
        options
            .set_keep_alive(Duration::from_secs(self.config.keep_alive.max(1)))
            .set_clean_session(self.config.clean_session)
            .set_max_packet_size(self.config.max_packet_bytes, self.config.max_packet_bytes)
            .set_request_channel_capacity(1024);
        if let Some(user) = &self.config.app_id {
            options.set_credentials(user, self.config.token.clone().unwrap_or_default());
        }
        if let Some(tls) = &self.config.tls {
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        // Small packets (notifications, queries) must not wait for Nagle.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(self.config.connect_timeout.as_secs().max(1));
        eventloop.set_network_options(network);
        // The reply topic is a subscription like any other: restored with them.
        self.remember_subscription(&self.shared.reply_topic.clone(), QoS::AtMostOnce);
        let task = tokio::spawn(run(
            eventloop,
            client.clone(),
            self.shared.clone(),
            (self.config.host.clone(), self.config.port),
            self.config.max_reconnect_delay,
        ));
        self.running = Some(Running { client, task });
    }

    fn client(&self) -> Result<&AsyncClient, MqttError> {
        self.running
            .as_ref()
            .map(|r| &r.client)
            .ok_or(MqttError::Stopped)
    }

    pub fn is_connected(&self) -> bool {
        *self.shared.connected.borrow()
    }

    /// Changes to the connection state, for callers that react to them.
    pub fn connection_state(&self) -> watch::Receiver<bool> {
        self.shared.connected.subscribe()
    }

    pub fn broker(&self) -> &str {
        &self.shared.broker
    }

    pub fn client_id(&self) -> &str {
        &self.config.client_id
    }

    /// Every message of every subscription (but query traffic).
    pub fn messages(&self) -> broadcast::Receiver<Message> {
        self.shared.messages.subscribe()
    }

    /// Publishes; a QoS 1/2 message queued while disconnected is sent after
    /// the reconnect.
    pub async fn publish(&self, topic: String, payload: Bytes, qos: QoS) -> Result<(), MqttError> {
        self.client()?
            .publish_bytes(topic, qos.into(), false, payload)
            .await?;
        if qos != QoS::AtMostOnce {
            self.shared.unacked.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Publishes without waiting for room in the request queue.
    pub fn try_publish(&self, topic: String, payload: Bytes, qos: QoS) -> Result<(), MqttError> {
        self.client()?
            .try_publish(topic, qos.into(), false, payload)?;
        Ok(())
    }

    pub async fn subscribe(&self, filter: String, qos: QoS) -> Result<(), MqttError> {
        self.remember_subscription(&filter, qos);
        self.client()?.subscribe(filter, qos.into()).await?;
        Ok(())
    }

    pub async fn unsubscribe(&self, filter: String) -> Result<(), MqttError> {
        self.shared
            .subscriptions
            .lock()
            .expect("subscriptions lock")
            .retain(|(f, _)| *f != filter);
        self.client()?.unsubscribe(filter).await?;
        Ok(())
    }

    fn remember_subscription(&self, filter: &str, qos: QoS) {
        let mut subs = self
            .shared
            .subscriptions
            .lock()
            .expect("subscriptions lock");
        subs.retain(|(f, _)| f != filter);
        subs.push((filter.to_string(), qos));
    }

    /// Sends `payload` to whoever answers `topic` and waits for the answer.
    pub async fn query(&self, topic: String, payload: Bytes) -> Result<Bytes, MqttError> {
        if !self.is_connected() {
            return Err(MqttError::NotConnected(self.shared.broker.clone()));
        }
        let id = self.next_query.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .insert(id, tx);
        let request = QueryRequest {
            id,
            reply_to: self.shared.reply_topic.clone(),
            payload,
        };
        let sent = self
            .publish(
                topic.clone(),
                Bytes::from(request.encode()),
                QoS::AtMostOnce,
            )
            .await;
        let answer = match sent {
            Ok(()) => tokio::time::timeout(self.config.query_timeout, rx).await,
            Err(e) => {
                self.shared
                    .pending
                    .lock()
                    .expect("pending lock")
                    .remove(&id);
                return Err(e);
            }
        };
        match answer {
            Ok(Ok(Ok(payload))) => Ok(payload),
            Ok(Ok(Err(message))) => Err(MqttError::QueryFailed { topic, message }),
            Ok(Err(_)) => Err(MqttError::Stopped),
            Err(_) => {
                self.shared
                    .pending
                    .lock()
                    .expect("pending lock")
                    .remove(&id);
                Err(MqttError::QueryTimeout {
                    topic,
                    timeout: self.config.query_timeout,
                })
            }
        }
    }

    /// Answers queries published on `filter` with `handler`.
    pub async fn serve_queries(
        &self,
        filter: String,
        handler: QueryHandler,
    ) -> Result<(), MqttError> {
        self.shared
            .handlers
            .lock()
            .expect("handlers lock")
            .push((filter.clone(), handler));
        self.subscribe(filter, QoS::AtMostOnce).await
    }

    /// Waits (up to 2 s) for the broker to acknowledge what was published
    /// with QoS 1/2, sends DISCONNECT (the broker keeps a persistent
    /// session) and stops.
    pub async fn disconnect(&mut self) -> Result<(), MqttError> {
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.is_connected()
            && self.shared.unacked.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(running) = self.running.take() {
            let _ = running.client.disconnect().await;
            let stopping = running.task;
            if tokio::time::timeout(Duration::from_secs(2), stopping)
                .await
                .is_err()
            {
                debug!(broker = %self.shared.broker, "mqtt event loop did not stop in time");
            }
        }
        let _ = self.shared.connected.send_replace(false);
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.task.abort();
        }
        let _ = self.shared.connected.send_replace(false);
    }
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        self.stop();
    }
}

/// This client's connections to `broker`, found once connected (rumqttc
/// does not expose its socket).
async fn broker_sockets((host, port): &(String, u16)) -> Vec<crate::os::ForeignSocket> {
    match tokio::net::lookup_host((host.as_str(), *port)).await {
        Ok(addrs) => crate::os::sockets_connected_to(&addrs.collect::<Vec<_>>()),
        Err(_) => Vec::new(),
    }
}

async fn run(
    mut eventloop: EventLoop,
    client: AsyncClient,
    shared: Arc<Shared>,
    broker: (String, u16),
    max_delay: Duration,
) {
    let mut delay = Duration::from_millis(100);
    let mut failures = 0u32;
    // A broker whose sockets have Nagle's algorithm on (Mosquitto's
    // default) holds a small write until the previous one is
    // acknowledged, and Linux delays that ACK up to 40 ms: a notification
    // or a query's answer waited that long. TCP_QUICKACK after each read
    // acknowledges at once. Another client of this process connected to
    // the same broker may be among these sockets: it wants the same.
    let mut sockets = Vec::new();
    loop {
        let event = eventloop.poll().await;
        if let Ok(Event::Incoming(packet)) = &event {
            if matches!(packet, Packet::ConnAck(_)) {
                sockets = broker_sockets(&broker).await;
            }
            sockets.retain(crate::os::ForeignSocket::quickack);
        }
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if failures > 0 {
                    info!(broker = %shared.broker, "mqtt reconnected");
                } else {
                    debug!(broker = %shared.broker, "mqtt connected");
                }
                failures = 0;
                delay = Duration::from_millis(100);
                if !ack.session_present {
                    let subs = shared
                        .subscriptions
                        .lock()
                        .expect("subscriptions lock")
                        .clone();
                    for (filter, qos) in subs {
                        if let Err(e) = client.try_subscribe(filter.clone(), qos.into()) {
                            warn!(broker = %shared.broker, filter, error = %e, "cannot restore a subscription");
                        }
                    }
                }
                let _ = shared.connected.send_replace(true);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => dispatch(&shared, &client, publish),
            Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                shared.unacked.fetch_sub(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                let _ = shared.connected.send_replace(false);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                sockets.clear();
                let _ = shared.connected.send_replace(false);
                let reason = e.to_string();
                if failures == 0 {
                    warn!(broker = %shared.broker, error = %reason, "mqtt connection lost; reconnecting");
                } else {
                    debug!(broker = %shared.broker, error = %reason, failures, "mqtt reconnect failed");
                }
                *shared.last_error.lock().expect("error lock") = Some(reason);
                failures = failures.saturating_add(1);
                // Queries in flight will not be answered on this connection.
                for (_, waiter) in shared.pending.lock().expect("pending lock").drain() {
                    let _ = waiter.send(Err("connection lost".into()));
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(max_delay);
            }
        }
    }
}

fn dispatch(shared: &Arc<Shared>, client: &AsyncClient, publish: rumqttc::Publish) {
    if publish.topic == shared.reply_topic {
        match QueryResponse::decode(&publish.payload) {
            Ok(response) => {
                let waiter = shared
                    .pending
                    .lock()
                    .expect("pending lock")
                    .remove(&response.id);
                if let Some(waiter) = waiter {
                    let answer = match (response.payload, response.error) {
                        (_, Some(error)) => Err(error),
                        (Some(payload), None) => Ok(payload),
                        (None, None) => Ok(Bytes::new()),
                    };
                    let _ = waiter.send(answer);
                }
            }
            Err(e) => warn!(topic = %publish.topic, error = %e, "ignoring a bad query answer"),
        }
        return;
    }
    let handler = shared
        .handlers
        .lock()
        .expect("handlers lock")
        .iter()
        .find(|(filter, _)| topic_matches(filter, &publish.topic))
        .map(|(_, h)| h.clone());
    if let Some(handler) = handler {
        let request = match QueryRequest::decode(&publish.payload) {
            Ok(request) => request,
            Err(e) => {
                warn!(topic = %publish.topic, error = %e, "ignoring a bad query");
                return;
            }
        };
        let client = client.clone();
        tokio::spawn(async move {
            let answer = handler(request.payload).await;
            let response = match answer {
                Ok(payload) => QueryResponse {
                    id: request.id,
                    payload: Some(payload),
                    error: None,
                },
                Err(error) => QueryResponse {
                    id: request.id,
                    payload: None,
                    error: Some(error),
                },
            };
            if let Err(e) = client
                .publish(
                    request.reply_to,
                    rumqttc::QoS::AtMostOnce,
                    false,
                    response.encode(),
                )
                .await
            {
                debug!(error = %e, "cannot send a query answer");
            }
        });
        return;
    }
    let _ = shared.messages.send(Message {
        topic: publish.topic,
        payload: publish.payload,
        qos: publish.qos.into(),
        retain: publish.retain,
    });
}
