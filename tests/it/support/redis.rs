//! Real `redis-server` processes on free ports.

use super::*;

/// `redis-cli` against the server on `port`; its output, trimmed.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs (it comes with redis-server)");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A `redis-server` on a free port in its own folder; killed on drop.
pub struct RedisServer {
    pub port: u16,
    /// The TLS port, for a server started with [`RedisServer::start_tls`].
    pub tls_port: Option<u16>,
    process: ServerProcess,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(free_port(), None, Vec::new())
    }

    /// With these options after the usual ones (which they override, e.g.
    /// `--appendonly yes`).
    pub fn start_args(args: &[&str]) -> RedisServer {
        RedisServer::start_on(free_port(), args)
    }

    /// On `port`, with these options after the usual ones.
    pub fn start_on(port: u16, args: &[&str]) -> RedisServer {
        RedisServer::start_with(port, None, args.iter().map(Into::into).collect())
    }

    /// Plain on `port` (for the test's own checks) and TLS on `tls_port`
    /// with this certificate; clients need no certificate.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> RedisServer {
        let tls_port = free_port();
        let args = vec![
            "--tls-port".into(),
            tls_port.to_string().into(),
            "--tls-cert-file".into(),
            cert.into(),
            "--tls-key-file".into(),
            key.into(),
            "--tls-ca-cert-file".into(),
            ca.into(),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        RedisServer::start_with(free_port(), Some(tls_port), args)
    }

    fn start_with(port: u16, tls_port: Option<u16>, extra: Vec<std::ffi::OsString>) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command: Vec<std::ffi::OsString> = [
            "redis-server",
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ]
        .iter()
        .chain(&["--save", "", "--appendonly", "no", "--dir"])
        .map(Into::into)
        .collect();
        command.push(dir.path().into());
        command.extend(extra);
        let mut server = RedisServer {
            port,
            tls_port,
            process: ServerProcess::new(command),
            dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        self.process.spawn("install redis-server");

        let until = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(
                Instant::now() < until,
                "redis-server on port {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        // A server with `requirepass` answers, but asks for the password.
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && (&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}
