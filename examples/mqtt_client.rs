//! The original README's MQTT client example, exactly as written there.
//! It talks to mqtt.example.com; `mqtt_integration_test` runs the same
//! sequence against real brokers on this machine.

use bytes::Bytes;
use qproxy::mqtt_client::{
    client::{MqttClient, MqttConfig},
    message::QoS,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 创建 MQTT 客户端配置
    let config = MqttConfig {
        client_id: "my-client".to_string(),
        host: "mqtt.example.com".to_string(),
        port: 1883,
        keep_alive: 60,
        app_id: Some("my-app".to_string()),
        token: Some("auth-token".to_string()),
        ..Default::default()
    };

    // 创建 MQTT 客户端
    let mut client = MqttClient::new(config);

    // 连接到 MQTT 服务器
    client.connect().await?;

    // 发布消息
    let topic = "my/topic".to_string();
    let payload = Bytes::from("Hello, MQTT!");
    client.publish(topic, payload, QoS::AtLeastOnce).await?;

    // 订阅主题
    client
        .subscribe("notifications/#".to_string(), QoS::AtMostOnce)
        .await?;

    // 查询主题
    let query_topic = "query/status".to_string();
    let query_payload = Bytes::from("query data");
    let response = client.query(query_topic, query_payload).await?;

    // 处理响应
    println!("Query response: {:?}", response);

    // 断开连接
    client.disconnect().await?;

    Ok(())
}
