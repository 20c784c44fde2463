//! Real Mosquitto brokers on free ports.

use super::*;

/// A Mosquitto broker on a free port (or a given one), optionally with one
/// user; killed on drop.
pub struct Mosquitto {
    pub port: u16,
    process: ServerProcess,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start(user: Option<(&str, &str)>) -> Mosquitto {
        Mosquitto::start_on(free_port(), user)
    }

    pub fn start_on(port: u16, user: Option<(&str, &str)>) -> Mosquitto {
        Mosquitto::start_with(port, user, "")
    }

    /// MQTT over TLS only, with this certificate; clients need none.
    pub fn start_tls(cert: &Path, key: &Path) -> Mosquitto {
        let listener = format!("certfile {}\nkeyfile {}\n", cert.display(), key.display());
        Mosquitto::start_with(free_port(), None, &listener)
    }

    /// `listener_conf` goes right after the listener line.
    fn start_with(port: u16, user: Option<(&str, &str)>, listener_conf: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut conf = format!(
            "listener {port} 127.0.0.1\n{listener_conf}persistence false\nuser root\nmax_queued_messages 100000\n"
        );
        match user {
            Some((name, password)) => {
                let file = dir.path().join("passwd");
                let status = Command::new("mosquitto_passwd")
                    .arg("-c")
                    .arg("-b")
                    .arg(&file)
                    .args([name, password])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .unwrap_or_else(|e| {
                        panic!(
                            "cannot run mosquitto_passwd ({e}); install mosquitto — .ci/run does"
                        )
                    });
                assert!(status.success(), "mosquitto_passwd failed");
                conf.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    file.display()
                ));
            }
            None => conf.push_str("allow_anonymous true\n"),
        }
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let command = vec!["mosquitto".into(), "-c".into(), conf_path.into()];
        let mut broker = Mosquitto {
            port,
            process: ServerProcess::new(command),
            _dir: dir,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        self.process.spawn("install mosquitto");
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < until,
                "mosquitto on port {} does not accept connections",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}
