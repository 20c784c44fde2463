//! A real ZooKeeper (Debian's `zookeeper` package) on a free port in its
//! own folder, and a client for the tests to register services with.

use super::*;

pub struct ZooKeeperServer {
    pub port: u16,
    process: ServerProcess,
    _dir: tempfile::TempDir,
}

impl ZooKeeperServer {
    pub fn start() -> ZooKeeperServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("zoo.cfg");
        std::fs::write(
            &config,
            format!(
                "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n4lw.commands.whitelist=ruok\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let command: Vec<std::ffi::OsString> = vec![
            "java".into(),
            "-Xmx256m".into(),
            "-cp".into(),
            "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar".into(),
            "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
            config.into_os_string(),
        ];
        let mut process = ServerProcess::new(command);
        process.spawn("install it with `apt-get install zookeeper`");
        let until = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < until,
                "zookeeper did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ZooKeeperServer {
            port,
            process,
            _dir: dir,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> zookeeper_client::Client {
        let address = self.address();
        eventually("a zookeeper session", Duration::from_secs(30), || {
            let address = address.clone();
            async move { zookeeper_client::Client::connect(&address).await.ok() }
        })
        .await
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.process.stop();
        self.process
            .spawn("install it with `apt-get install zookeeper`");
        let until = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < until,
                "zookeeper did not listen again within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Creates `path` (and its parents) with `data`, as a service would
/// register itself.
pub async fn zk_register(client: &zookeeper_client::Client, path: &str, data: &[u8]) {
    let options =
        zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    let mut at = String::new();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        at.push('/');
        at.push_str(part);
        let value: &[u8] = if i + 1 == parts.len() { data } else { b"" };
        match client.create(&at, value, &options).await {
            Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
            Err(e) => panic!("create {at}: {e}"),
        }
    }
}
