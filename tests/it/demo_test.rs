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
        seen.push(line.clone());
        if line.contains("Ctrl-C") {
            break;
        }
    }
    // The README shows this output, ports aside.
    assert_eq!(
        without_ports(&readme_demo_output()),
        without_ports(&seen.join("\n")),
        "README's demo output"
    );

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

/// The first code block after "## The demo" in the README.
fn readme_demo_output() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("the README");
    let section = &readme[readme.find("## The demo").expect("a demo section")..];
    let open = section.find("```\n").expect("a block") + 4;
    let close = section[open..].find("```").expect("its end");
    section[open..open + close].trim_end().to_string()
}

/// `text` with every `:port` as `:PORT`.
fn without_ports(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == ':' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push_str("PORT");
        }
    }
    out
}
