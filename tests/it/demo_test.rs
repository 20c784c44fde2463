//! `qproxy demo` from a user's chair: one command, nothing installed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_demo_records_replays_and_matches_its_sample_traffic() {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_qproxy"))
        .args(["demo", "--any-ports"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qproxy demo runs");
    let stdout = demo.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let until = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let counts = loop {
        let line = rx
            .recv_timeout(until.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                panic!("no counts from the demo; it printed:\n{}", seen.join("\n"))
            });
        seen.push(line.clone());
        if line.starts_with("recorded ") {
            break line;
        }
    };
    assert_eq!(
        counts,
        "recorded 12, replayed 12, matched 12, mismatched 0, failed 0 (sync via mqtt)",
        "{}",
        seen.join("\n")
    );
    let text = seen.join("\n");
    assert!(
        text.contains("MQTT broker") && text.contains("(embedded)"),
        "{text}"
    );
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        if line.contains("Ctrl-C") {
            break;
        }
    }

    // SIGTERM stops it cleanly.
    let status = Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let until = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(code) = demo.try_wait().unwrap() {
            break code;
        }
        assert!(Instant::now() < until, "the demo did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "exit status {code}");
}
