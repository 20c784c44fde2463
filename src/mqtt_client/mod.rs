//! A public MQTT 3.1.1 client: connect, publish (QoS 0/1/2), subscribe,
//! unsubscribe, query (request/response), disconnect, automatic reconnect
//! and persistent sessions. The API of the original README's example.
//!
//! ```no_run
//! use qproxy::mqtt_client::{
//!     client::{MqttClient, MqttConfig},
//!     message::QoS,
//! };
//! use bytes::Bytes;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = MqttClient::new(MqttConfig {
//!     client_id: "my-client".to_string(),
//!     host: "127.0.0.1".to_string(),
//!     port: 1883,
//!     ..Default::default()
//! });
//! client.connect().await?;
//! let mut messages = client.messages();
//! client.subscribe("notifications/#".to_string(), QoS::AtLeastOnce).await?;
//! client.publish("notifications/a".to_string(), Bytes::from("hi"), QoS::AtLeastOnce).await?;
//! let message = messages.recv().await?;
//! assert_eq!(message.topic, "notifications/a");
//! client.disconnect().await?;
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod message;

pub use client::{MqttClient, MqttConfig, MqttError, QueryHandler};
pub use message::{Message, QoS};
