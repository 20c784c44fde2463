//! Service discovery on the Playback node: records are replayed to the
//! endpoints of the service they name (`static` provider), round robin,
//! passing over an endpoint that refuses; a service discovery does not know
//! goes to the node's own downstream.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;

use crate::support::{self, eventually, get_json, ClientConn, FakeDownstream, StoreChoice};

/// A Record node (zone A's downstream `zone_a`) and a Playback node
/// replaying to `own` unless `discovery` (its `service_discovery` section)
/// knows the service; both with embedded stores under `dir`.
async fn zones(
    zone_a: &str,
    own: &str,
    dir: &std::path::Path,
    discovery: serde_json::Value,
    pipeline_depth: Option<usize>,
) -> (qproxy::node::RunningNode, qproxy::node::RunningNode) {
    let record = support::start_node(support::record_config(
        zone_a,
        1,
        &StoreChoice::Embedded(dir.join("a")),
    ))
    .await;
    let mut config = support::playback_config(
        own,
        1,
        record.api_addr,
        &StoreChoice::Embedded(dir.join("b")),
    );
    config["service_discovery"] = discovery;
    if let Some(depth) = pipeline_depth {
        config["playback"] = serde_json::json!({ "pipeline_depth": depth });
    }
    let playback = support::start_node(config).await;
    (record, playback)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_test_static_services_share_the_replays_and_unknown_ones_go_to_the_downstream() {
    let zone_a = FakeDownstream::start().await;
    let (one, two, own) = (
        FakeDownstream::start().await,
        FakeDownstream::start().await,
        FakeDownstream::start().await,
    );
    let (_refusing, refusing_addr) = support::refusing_port();
    let dir = tempfile::tempdir().unwrap();
    let (record, playback) =
        zones(&zone_a.url(), &own.url(), dir.path(), json!({
        "provider": "static",
        "config": {"static_services": [
            {"name": "orders", "endpoints": [one.addr.to_string(), refusing_addr.to_string(), two.addr.to_string()]},
        ]},
    // Runs of at most two records go to one endpoint, then the next.
    }), Some(2)).await;

    // Ten requests for `orders` (the Host, without its port), two for a
    // service discovery does not know.
    let mut conn =
        ClientConn::connect("127.0.0.1".parse().unwrap(), record.http_addr.unwrap()).await;
    for (host, n) in [("orders:8080", 10), ("billing", 2)] {
        for i in 0..n {
            let req = Request::post(format!("/{host}/{i}"))
                .header("host", host)
                .body(Full::new(Bytes::from("x")))
                .unwrap();
            conn.send(req).await;
        }
    }

    eventually("all twelve replayed", Duration::from_secs(30), || async {
        (one.count() + two.count() + own.count() == 12).then_some(())
    })
    .await;
    assert_eq!(own.count(), 2, "an unknown service goes to http.downstream");
    assert!(own.seen().iter().all(|s| s.uri.starts_with("/billing/")));
    let orders: Vec<_> = one.seen().into_iter().chain(two.seen()).collect();
    assert_eq!(orders.len(), 10);
    assert!(
        one.count() >= 3 && two.count() >= 3,
        "both endpoints share the load: {} / {}",
        one.count(),
        two.count()
    );
    let ids: HashSet<_> = orders
        .iter()
        .map(|s| s.header("x-qproxy-replay-id").unwrap().to_string())
        .collect();
    assert_eq!(
        ids.len(),
        10,
        "each record once, none lost to the refusing endpoint"
    );

    // Results are saved once their batch is done.
    let replays = eventually("twelve results saved", Duration::from_secs(20), || async {
        let (_, replays) = get_json(&format!(
            "http://{}/api/replays?limit=100",
            playback.api_addr
        ))
        .await;
        (replays["results"].as_array().unwrap().len() == 12).then_some(replays)
    })
    .await;
    let results = replays["results"].as_array().unwrap();
    let endpoints: HashSet<&str> = results
        .iter()
        .filter(|r| r["service"] == "orders")
        .map(|r| r["endpoint"].as_str().unwrap())
        .collect();
    let expected: HashSet<String> = [one.addr.to_string(), two.addr.to_string()].into();
    assert_eq!(
        endpoints,
        expected.iter().map(String::as_str).collect(),
        "each result says which endpoint served it"
    );
    assert!(results
        .iter()
        .filter(|r| r["service"] == "billing")
        .all(|r| r["endpoint"] == own.addr.to_string()));
    assert!(
        results.iter().all(|r| r["outcome"] == "matched"),
        "{replays}"
    );

    let (_, status) = get_json(&format!("http://{}/api/status", playback.api_addr)).await;
    let discovery = &status["playback"]["discovery"];
    assert_eq!(discovery["provider"], "static (1 services)", "{status}");
    assert_eq!(discovery["services"][0]["name"], "orders");
    assert_eq!(
        discovery["services"][0]["endpoints"],
        json!([
            one.addr.to_string(),
            refusing_addr.to_string(),
            two.addr.to_string()
        ])
    );
    // Passed over for 5 s after it refused (already over on a very slow box).
    let passed_over = discovery["services"][0]["passed_over"].as_array().unwrap();
    assert!(
        passed_over
            .iter()
            .all(|e| e == &json!(refusing_addr.to_string())),
        "only the refusing endpoint is passed over: {status}"
    );

    playback.stop().await;
    record.stop().await;
}

/// ZooKeeper: instances registered under `<base_path>/<service>` are
/// replayed to; a change of registration moves the replays without a
/// restart; an unknown service goes to the node's own downstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_test_zookeeper_registrations_move_the_replays_without_a_restart() {
    let mut zk = support::ZooKeeperServer::start();
    let client = zk.client().await;
    let zone_a = FakeDownstream::start().await;
    let (first, second, own) = (
        FakeDownstream::start().await,
        FakeDownstream::start().await,
        FakeDownstream::start().await,
    );
    let data = |addr: std::net::SocketAddr| {
        json!({"host": addr.ip().to_string(), "port": addr.port()}).to_string()
    };
    support::zk_register(&client, "/services/orders/i1", data(first.addr).as_bytes()).await;
    // An instance whose data QProxy cannot read is skipped, not fatal.
    support::zk_register(&client, "/services/orders/garbage", b"not json").await;

    let dir = tempfile::tempdir().unwrap();
    let (record, playback) = zones(
        &zone_a.url(),
        &own.url(),
        dir.path(),
        json!({
            "provider": "zookeeper",
            "config": {"zookeeper": {"address": zk.address(), "base_path": "/services"}},
        }),
        // One record at a time: round robin record by record.
        Some(1),
    )
    .await;
    eventually(
        "the playback node reads zookeeper",
        Duration::from_secs(20),
        || async {
            let (_, status) = get_json(&format!("http://{}/api/status", playback.api_addr)).await;
            (status["playback"]["discovery"]["services"][0]["name"] == "orders").then_some(())
        },
    )
    .await;

    let mut conn =
        ClientConn::connect("127.0.0.1".parse().unwrap(), record.http_addr.unwrap()).await;
    let send = |host: &'static str, tag: &'static str, n: usize| {
        (0..n).map(move |i| {
            Request::post(format!("/{tag}/{i}"))
                .header("host", host)
                .body(Full::new(Bytes::from("x")))
                .unwrap()
        })
    };
    for req in send("orders", "before", 3).chain(send("billing", "other", 1)) {
        conn.send(req).await;
    }
    eventually(
        "replayed to the registered instance",
        Duration::from_secs(20),
        || async { (first.count() == 3 && own.count() == 1).then_some(()) },
    )
    .await;

    // The instance moves: replays follow within the poll interval.
    client.delete("/services/orders/i1", None).await.unwrap();
    support::zk_register(&client, "/services/orders/i2", data(second.addr).as_bytes()).await;
    eventually(
        "the playback node sees the move",
        Duration::from_secs(10),
        || async {
            let (_, status) = get_json(&format!("http://{}/api/status", playback.api_addr)).await;
            let endpoints = &status["playback"]["discovery"]["services"][0]["endpoints"];
            (endpoints == &json!([second.addr.to_string()])).then_some(())
        },
    )
    .await;
    for req in send("orders", "after", 3) {
        conn.send(req).await;
    }
    eventually(
        "replayed to the new instance",
        Duration::from_secs(20),
        || async { (second.count() == 3).then_some(()) },
    )
    .await;
    assert_eq!(first.count(), 3, "nothing more to the removed instance");
    assert!(second.seen().iter().all(|s| s.uri.starts_with("/after/")));
    let (_, health) = get_json(&format!("http://{}/health", playback.api_addr)).await;
    assert_eq!(health["components"]["discovery"], "UP", "{health}");

    // ZooKeeper goes away: /health says so, replays go on to the endpoints
    // last known, and nothing is lost.
    zk.stop();
    eventually("discovery DEGRADED", Duration::from_secs(30), || async {
        let (code, health) = get_json(&format!("http://{}/health", playback.api_addr)).await;
        (health["components"]["discovery"] == "DEGRADED" && code == http::StatusCode::OK)
            .then_some(())
    })
    .await;
    for req in send("orders", "zk-down", 2) {
        conn.send(req).await;
    }
    eventually(
        "replayed while zookeeper is down",
        Duration::from_secs(20),
        || async { (second.count() == 5).then_some(()) },
    )
    .await;

    // Back (same data): the node reconnects and reads everything again; a
    // second instance registered now shares the load.
    zk.restart();
    let client = zk.client().await;
    let third = FakeDownstream::start().await;
    support::zk_register(&client, "/services/orders/i3", data(third.addr).as_bytes()).await;
    eventually(
        "two instances known again",
        Duration::from_secs(30),
        || async {
            let (_, status) = get_json(&format!("http://{}/api/status", playback.api_addr)).await;
            let endpoints = &status["playback"]["discovery"]["services"][0]["endpoints"];
            (endpoints.as_array().map(Vec::len) == Some(2)).then_some(())
        },
    )
    .await;
    for req in send("orders", "shared", 6) {
        conn.send(req).await;
    }
    eventually(
        "shared by both instances",
        Duration::from_secs(20),
        || async { (second.count() + third.count() == 11).then_some(()) },
    )
    .await;
    assert_eq!(third.count(), 3, "round robin over two instances");

    playback.stop().await;
    record.stop().await;
}

/// The fake API server's slices, their version, and the events sent.
type KubeState = (serde_json::Value, u64, Vec<(u64, String)>);

/// A stand-in for the Kubernetes API server (none can run here): it answers
/// `GET …/namespaces/zone-b/endpointslices` with the EndpointSliceList the
/// test sets, and `?watch=1` with a stream of watch events (MODIFIED when
/// the test changes a slice, ERROR 410 when it expires the watch), in the
/// real JSON shapes; it keeps the bearer tokens it saw and counts lists.
struct FakeKubeApi {
    addr: std::net::SocketAddr,
    /// Items, version, and every event sent (version, line), so a watch
    /// from an older version gets what it missed, as the real server does.
    state: std::sync::Arc<std::sync::Mutex<KubeState>>,
    events: tokio::sync::broadcast::Sender<String>,
    tokens: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    lists: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeKubeApi {
    async fn start() -> FakeKubeApi {
        use http_body_util::BodyExt;
        use hyper::service::service_fn;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = std::sync::Arc::new(std::sync::Mutex::new((json!([]), 1u64, Vec::new())));
        let (events, _) = tokio::sync::broadcast::channel::<String>(64);
        let tokens: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let lists: std::sync::Arc<std::sync::atomic::AtomicUsize> = Default::default();
        let (st, ev, tk, ls) = (state.clone(), events.clone(), tokens.clone(), lists.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (st, ev, tk, ls) = (st.clone(), ev.clone(), tk.clone(), ls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (st, ev, tk, ls) = (st.clone(), ev.clone(), tk.clone(), ls.clone());
                        async move {
                            if let Some(auth) = req.headers().get("authorization") {
                                tk.lock().unwrap().push(auth.to_str().unwrap().to_string());
                            }
                            let ours = req.uri().path()
                                == "/apis/discovery.k8s.io/v1/namespaces/zone-b/endpointslices";
                            let watch = req.uri().query().is_some_and(|q| q.contains("watch=1"));
                            let body = if !ours {
                                Full::new(Bytes::from(
                                    json!({"kind": "Status", "code": 404}).to_string(),
                                ))
                                .map_err(|never| match never {})
                                .boxed()
                            } else if watch {
                                let rx = ev.subscribe();
                                let from: u64 = req
                                    .uri()
                                    .query()
                                    .and_then(|q| {
                                        q.split('&')
                                            .find_map(|p| p.strip_prefix("resourceVersion="))
                                    })
                                    .and_then(|v| v.parse().ok())
                                    .unwrap_or(0);
                                let missed: Vec<_> = st
                                    .lock()
                                    .unwrap()
                                    .2
                                    .iter()
                                    .filter(|(v, _)| *v > from)
                                    .map(|(_, line)| {
                                        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                                            Bytes::from(format!("{line}\n")),
                                        ))
                                    })
                                    .collect();
                                let live = futures_util::stream::unfold(rx, |mut rx| async move {
                                    let line = rx.recv().await.ok()?;
                                    let frame = hyper::body::Frame::data(Bytes::from(line + "\n"));
                                    Some((Ok::<_, std::convert::Infallible>(frame), rx))
                                });
                                let lines = futures_util::StreamExt::chain(
                                    futures_util::stream::iter(missed),
                                    live,
                                );
                                http_body_util::StreamBody::new(lines).boxed()
                            } else {
                                ls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                let (items, version, _) = st.lock().unwrap().clone();
                                let list = json!({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                                                  "metadata": {"resourceVersion": version.to_string()},
                                                  "items": items});
                                Full::new(Bytes::from(list.to_string()))
                                    .map_err(|never| match never {})
                                    .boxed()
                            };
                            let mut response = http::Response::new(body);
                            if !ours {
                                *response.status_mut() = http::StatusCode::NOT_FOUND;
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeKubeApi {
            addr,
            state,
            events,
            tokens,
            lists,
            task,
        }
    }

    /// The one EndpointSlice of `service`, with these (address, ready)
    /// endpoints; watchers get a MODIFIED event.
    fn set(&self, service: &str, port: u16, endpoints: &[(&str, bool)]) {
        let endpoints: Vec<_> = endpoints
            .iter()
            .map(|(address, ready)| json!({"addresses": [address], "conditions": {"ready": ready}}))
            .collect();
        let mut state = self.state.lock().unwrap();
        state.1 += 1;
        let slice = json!({
            "kind": "EndpointSlice",
            "metadata": {"name": format!("{service}-abc12"), "namespace": "zone-b",
                         "resourceVersion": state.1.to_string(),
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": endpoints,
        });
        state.0 = json!([slice.clone()]);
        let line = json!({"type": "MODIFIED", "object": slice}).to_string();
        let version = state.1;
        state.2.push((version, line.clone()));
        let _ = self.events.send(line);
    }

    /// Tells every watcher its version is gone (410): they list again.
    fn expire(&self) {
        let _ = self.events.send(
            json!({"type": "ERROR", "object": {"kind": "Status", "status": "Failure",
                   "reason": "Expired", "code": 410}})
            .to_string(),
        );
    }

    fn lists(&self) -> usize {
        self.lists.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Kubernetes (against a fake API server): the ready endpoints of a
/// service's EndpointSlices are replayed to; a slice update (a watch event)
/// moves the replays without a restart; an expired watch is listed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_test_kubernetes_endpoint_slices_move_the_replays() {
    // Two zone-B instances of `orders` on one port: 127.0.0.2 and .3.
    let port = support::free_port();
    let listen = |ip: &str| {
        format!("{ip}:{port}")
            .parse::<std::net::SocketAddr>()
            .unwrap()
    };
    let first = FakeDownstream::start_on(listen("127.0.0.2")).await;
    let second = FakeDownstream::start_on(listen("127.0.0.3")).await;
    let (zone_a, own) = (FakeDownstream::start().await, FakeDownstream::start().await);
    let api = FakeKubeApi::start().await;
    api.set("orders", port, &[("127.0.0.2", true), ("127.0.0.3", false)]);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();

    let discovery = json!({
        "provider": "kubernetes",
        "config": {"kubernetes": {"namespace": "zone-b",
                                   "service_account_token": token.display().to_string(),
                                   "api_server": format!("http://{}", api.addr)}},
    });
    let (record, playback) = zones(&zone_a.url(), &own.url(), dir.path(), discovery, None).await;
    eventually(
        "the playback node lists the slices",
        Duration::from_secs(20),
        || async {
            let (_, status) = get_json(&format!("http://{}/api/status", playback.api_addr)).await;
            (status["playback"]["discovery"]["services"][0]["name"] == "orders").then_some(())
        },
    )
    .await;
    assert!(api
        .tokens
        .lock()
        .unwrap()
        .iter()
        .all(|t| t == "Bearer s3cret-token"));

    let mut conn =
        ClientConn::connect("127.0.0.1".parse().unwrap(), record.http_addr.unwrap()).await;
    let send = |tag: &'static str, n: usize| {
        (0..n).map(move |i| {
            Request::post(format!("/{tag}/{i}"))
                .header("host", "orders")
                .body(Full::new(Bytes::from("x")))
                .unwrap()
        })
    };
    for req in send("ready", 3) {
        conn.send(req).await;
    }
    eventually(
        "replayed to the ready endpoint only",
        Duration::from_secs(20),
        || async { (first.count() == 3).then_some(()) },
    )
    .await;
    assert_eq!(second.count(), 0, "a not-ready endpoint gets nothing");

    // The slice changes: the other endpoint is the ready one now.
    api.set("orders", port, &[("127.0.0.2", false), ("127.0.0.3", true)]);
    eventually(
        "the playback node sees the update",
        Duration::from_secs(10),
        || async {
            let (_, status) = get_json(&format!("http://{}/api/status", playback.api_addr)).await;
            let endpoints = &status["playback"]["discovery"]["services"][0]["endpoints"];
            (endpoints == &json!([format!("127.0.0.3:{port}")])).then_some(())
        },
    )
    .await;
    for req in send("moved", 3) {
        conn.send(req).await;
    }
    eventually(
        "replayed to the new endpoint",
        Duration::from_secs(20),
        || async { (second.count() == 3).then_some(()) },
    )
    .await;
    assert_eq!(first.count(), 3);
    assert_eq!(own.count(), 0);
    // The update came by the watch, not by listing again.
    assert_eq!(api.lists(), 1, "one list, then the watch");

    // An expired watch (410 Gone) makes the node list again.
    api.expire();
    eventually(
        "listed again after 410",
        Duration::from_secs(10),
        || async { (api.lists() >= 2).then_some(()) },
    )
    .await;
    api.set("orders", port, &[("127.0.0.2", true), ("127.0.0.3", false)]);
    for req in send("again", 2) {
        conn.send(req).await;
    }
    eventually(
        "replayed after the relist and a new event",
        Duration::from_secs(20),
        || async { (first.count() == 5).then_some(()) },
    )
    .await;

    playback.stop().await;
    record.stop().await;
}

/// A Playback node without `sync.peer` finds its Record node in ZooKeeper
/// (registered under `<base_path>/_qproxy/record`) and replays everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_test_a_playback_node_finds_its_record_node_in_zookeeper() {
    let zk = support::ZooKeeperServer::start();
    let zone_a = FakeDownstream::start().await;
    let zone_b = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let discovery = json!({
        "provider": "zookeeper",
        "config": {"zookeeper": {"address": zk.address(), "base_path": "/qp"}},
    });
    let mut record_config = support::record_config(
        &zone_a.url(),
        1,
        &StoreChoice::Embedded(dir.path().join("a")),
    );
    record_config["service_discovery"] = discovery.clone();
    let record = support::start_node(record_config).await;
    let mut config = support::playback_config(
        &zone_b.url(),
        1,
        record.api_addr,
        &StoreChoice::Embedded(dir.path().join("b")),
    );
    config["sync"]["peer"] = serde_json::Value::Null;
    config["service_discovery"] = discovery;
    let playback = support::start_node(config).await;

    support::send_posts(record.http_addr.unwrap(), 5, "found").await;
    eventually(
        "replayed through the peer found in zookeeper",
        Duration::from_secs(30),
        || async { (zone_b.count() == 5).then_some(()) },
    )
    .await;
    let client = zk.client().await;
    let registered = client.list_children("/qp/_qproxy/record").await.unwrap();
    assert_eq!(
        registered,
        [format!("127.0.0.1:{}", record.api_addr.port())]
    );
    let (_, status) = get_json(&format!("http://{}/api/status", playback.api_addr)).await;
    assert_eq!(status["playback"]["peer"], "found in zookeeper", "{status}");

    playback.stop().await;
    record.stop().await;
}
