//! Service discovery: the endpoints of the service a record names, so a
//! replay goes to the services zone B actually runs. One trait, one
//! implementation per provider; `static` (a list in the config) for now.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{DiscoverySettings, Downstream};

/// Where the endpoints of a service come from.
pub trait Discovery: Send + Sync {
    /// The endpoints of `service` as known now; `None` when the provider
    /// does not know the service (its records go to the node's own
    /// downstream).
    fn endpoints(&self, service: &str) -> Option<Arc<[Downstream]>>;

    /// Names the provider for logs and status pages.
    fn describe(&self) -> String;

    /// Every known service with its endpoints, for `/api/status`.
    fn services(&self) -> Vec<(String, Arc<[Downstream]>)>;
}

/// `provider: "static"`: the `static_services` of the config.
pub struct StaticDiscovery {
    services: HashMap<String, Arc<[Downstream]>>,
}

impl StaticDiscovery {
    /// From `static_services` (the config checked every endpoint).
    pub fn new(settings: &DiscoverySettings) -> Result<StaticDiscovery, String> {
        let mut services = HashMap::new();
        for service in &settings.static_services {
            let endpoints = service
                .endpoints
                .iter()
                .map(|e| Downstream::endpoint(e))
                .collect::<Result<Vec<_>, _>>()?;
            if !endpoints.is_empty() {
                services.insert(service.name.clone(), endpoints.into());
            }
        }
        Ok(StaticDiscovery { services })
    }
}

impl Discovery for StaticDiscovery {
    fn endpoints(&self, service: &str) -> Option<Arc<[Downstream]>> {
        self.services.get(service).cloned()
    }

    fn describe(&self) -> String {
        format!("static ({} services)", self.services.len())
    }

    fn services(&self) -> Vec<(String, Arc<[Downstream]>)> {
        let mut all: Vec<_> = self
            .services
            .iter()
            .map(|(name, endpoints)| (name.clone(), endpoints.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// How long an endpoint that refused a connection is passed over.
const SKIP_FOR: Duration = Duration::from_secs(5);

/// Picks an endpoint of a service: round robin, passing over endpoints
/// that refused a connection in the last [`SKIP_FOR`] (unless all did).
pub struct Endpoints {
    discovery: Arc<dyn Discovery>,
    next: AtomicUsize,
    refused: Mutex<HashMap<String, Instant>>,
}

impl Endpoints {
    pub fn new(discovery: Arc<dyn Discovery>) -> Endpoints {
        Endpoints {
            discovery,
            next: AtomicUsize::new(0),
            refused: Mutex::new(HashMap::new()),
        }
    }

    pub fn describe(&self) -> String {
        self.discovery.describe()
    }

    /// The endpoint for the next request to `service`; `None` when
    /// discovery does not know it.
    pub fn pick(&self, service: &str) -> Option<Downstream> {
        let endpoints = self.discovery.endpoints(service)?;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let refused = self.refused.lock().expect("refused lock");
        let usable = |e: &Downstream| {
            refused
                .get(&e.uri.to_string())
                .is_none_or(|at| at.elapsed() >= SKIP_FOR)
        };
        (0..endpoints.len())
            .map(|i| &endpoints[(start + i) % endpoints.len()])
            .find(|e| usable(e))
            .or_else(|| endpoints.get(start % endpoints.len()))
            .cloned()
    }

    /// What `/api/status` shows: the provider, and each service with its
    /// endpoints and those passed over now.
    pub fn status(&self) -> serde_json::Value {
        let refused = self.refused.lock().expect("refused lock");
        let services: Vec<serde_json::Value> = self
            .discovery
            .services()
            .into_iter()
            .map(|(name, endpoints)| {
                let show = |e: &Downstream| e.authority().to_string();
                let passed_over: Vec<String> = endpoints
                    .iter()
                    .filter(|e| {
                        refused
                            .get(&e.uri.to_string())
                            .is_some_and(|at| at.elapsed() < SKIP_FOR)
                    })
                    .map(show)
                    .collect();
                serde_json::json!({
                    "name": name,
                    "endpoints": endpoints.iter().map(show).collect::<Vec<_>>(),
                    "passed_over": passed_over,
                })
            })
            .collect();
        serde_json::json!({"provider": self.discovery.describe(), "services": services})
    }

    /// `endpoint` refused a connection or could not be reached: pass it
    /// over for a while.
    pub fn refused(&self, endpoint: &Downstream) {
        self.refused
            .lock()
            .expect("refused lock")
            .insert(endpoint.uri.to_string(), Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StaticService;

    fn endpoints(list: &[(&str, &[&str])]) -> Endpoints {
        let settings = DiscoverySettings {
            static_services: list
                .iter()
                .map(|(name, eps)| StaticService {
                    name: name.to_string(),
                    endpoints: eps.iter().map(|e| e.to_string()).collect(),
                })
                .collect(),
            ..DiscoverySettings::default()
        };
        Endpoints::new(Arc::new(StaticDiscovery::new(&settings).unwrap()))
    }

    #[test]
    fn round_robin_over_a_services_endpoints_and_none_for_unknown_ones() {
        let e = endpoints(&[("orders", &["10.0.0.5:8080", "https://orders.b:8443"])]);
        let picked: Vec<String> = (0..4)
            .map(|_| e.pick("orders").unwrap().uri.to_string())
            .collect();
        assert_eq!(
            picked,
            [
                "http://10.0.0.5:8080/",
                "https://orders.b:8443/",
                "http://10.0.0.5:8080/",
                "https://orders.b:8443/"
            ]
        );
        assert!(e.pick("billing").is_none());
    }

    #[test]
    fn an_endpoint_that_refused_is_passed_over_unless_all_did() {
        let e = endpoints(&[("orders", &["a:1", "b:2"])]);
        let a = Downstream::endpoint("a:1").unwrap();
        e.refused(&a);
        for _ in 0..4 {
            assert_eq!(e.pick("orders").unwrap().uri.to_string(), "http://b:2/");
        }
        e.refused(&Downstream::endpoint("b:2").unwrap());
        assert!(e.pick("orders").is_some(), "all refused: still one to try");
    }

    #[test]
    fn endpoints_are_host_port_or_urls() {
        assert!(Downstream::endpoint("10.0.0.5:8080").is_ok());
        assert!(Downstream::endpoint("https://orders.b:8443").is_ok());
        for bad in ["orders", ":80", "a:0", "a:x", "ftp://a:1"] {
            assert!(Downstream::endpoint(bad).is_err(), "{bad}");
        }
    }
}
