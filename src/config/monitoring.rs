//! The `monitoring` section: the thresholds past which `/health`'s
//! `system` component is DOWN (the product's alert thresholds by default).

use super::*;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringConfig {
    /// Host CPU busy, percent of all cores.
    #[serde(default = "default_cpu_threshold")]
    pub cpu_threshold: f64,
    /// Host memory in use, percent.
    #[serde(default = "default_memory_threshold")]
    pub memory_threshold: f64,
    /// The filesystem of `data_dir` in use, percent.
    #[serde(default = "default_disk_threshold")]
    pub disk_threshold: f64,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            cpu_threshold: default_cpu_threshold(),
            memory_threshold: default_memory_threshold(),
            disk_threshold: default_disk_threshold(),
        }
    }
}

fn default_cpu_threshold() -> f64 {
    80.0
}

fn default_memory_threshold() -> f64 {
    85.0
}

fn default_disk_threshold() -> f64 {
    90.0
}

impl MonitoringConfig {
    pub fn thresholds(&self) -> crate::system::Thresholds {
        crate::system::Thresholds {
            cpu_percent: self.cpu_threshold,
            memory_percent: self.memory_threshold,
            disk_percent: self.disk_threshold,
        }
    }

    /// Each threshold is a percentage from 1 to 100 (100: never).
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        for (key, value) in [
            ("monitoring.cpu_threshold", self.cpu_threshold),
            ("monitoring.memory_threshold", self.memory_threshold),
            ("monitoring.disk_threshold", self.disk_threshold),
        ] {
            if !(1.0..=100.0).contains(&value) {
                return Err((key, format!("must be 1 to 100 (percent), not {value}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_default_to_the_alert_thresholds_and_are_percentages() {
        let parse = |text: &str| Config::parse(text, Path::new("test.json"));
        let c = parse(r#"{"mode": "Record"}"#).unwrap();
        assert_eq!(
            c.monitoring.thresholds(),
            crate::system::Thresholds::default()
        );
        let c = parse(
            r#"{"mode": "Record", "monitoring": {"memory_threshold": 1, "disk_threshold": 97.5}}"#,
        )
        .unwrap();
        assert_eq!(
            (
                c.monitoring.cpu_threshold,
                c.monitoring.memory_threshold,
                c.monitoring.disk_threshold
            ),
            (80.0, 1.0, 97.5)
        );
        for (text, says) in [
            (
                "{\"mode\": \"Record\",\n \"monitoring\": {\"cpu_threshold\": 0}}",
                "test.json:2:17: monitoring.cpu_threshold: must be 1 to 100 (percent), not 0",
            ),
            (
                "{\"mode\": \"Record\",\n \"monitoring\": {\"disk_threshold\": 101}}",
                "test.json:2:17: monitoring.disk_threshold: must be 1 to 100 (percent), not 101",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err().to_string(), says);
        }
        let err = parse(r#"{"mode": "Record", "monitoring": {"cpu": 80}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.json:1:35: monitoring: unknown key `cpu` (known here: cpu_threshold, memory_threshold, disk_threshold)"
        );
    }
}
