//! Replaying a TCP session: the client's chunks in their recorded order,
//! each after the server bytes that preceded it, then the server's bytes
//! compared byte for byte.

use std::time::Duration;

use super::super::compare::compare_bytes;
use super::super::Outcome;
use super::{Failure, Replayer};
use crate::config::TcpPacing;
use crate::downstream::TcpTarget;
use crate::record::{Record, TcpSession};

impl Replayer {
    /// Sends the client's chunks in order, each once the server bytes that
    /// preceded it in the recording have arrived, then compares what the
    /// server sent with what zone A's server sent.
    pub(super) async fn tcp(
        &self,
        record: &Record,
        tcp: &TcpSession,
    ) -> Result<(Outcome, Option<String>), Failure> {
        if tcp.chunks.is_empty() && record.error.is_some() {
            let why = record.error.as_deref().unwrap_or("no connection");
            return Ok((
                Outcome::Skipped,
                Some(format!("zone A's downstream was not reached: {why}")),
            ));
        }
        if tcp.truncated {
            return Ok((
                Outcome::Skipped,
                Some(
                    "session was larger than record.max_body_bytes and was not recorded in full"
                        .into(),
                ),
            ));
        }
        let Some((target, endpoint)) = self.tcp_target(record).map_err(Failure::permanent)? else {
            return Err(Failure::permanent(
                "this Playback node has no tcp.downstream to replay to".into(),
            ));
        };
        let target = &target;
        // Paced as recorded, a session takes at least as long as it did.
        let timeout = match self.tcp_pacing {
            TcpPacing::Fast => self.timeout,
            TcpPacing::Recorded => {
                let span = tcp.chunks.last().map_or(0, |c| c.at_us);
                self.timeout + Duration::from_micros(span)
            }
        };
        match tokio::time::timeout(timeout, run_tcp(target, tcp, self.tcp_pacing)).await {
            Ok(Ok(server_bytes)) => Ok(
                match compare_bytes("server bytes", &tcp.server_stream(), &server_bytes) {
                    None => (Outcome::Matched, None),
                    Some(diff) => (Outcome::Mismatched, Some(diff)),
                },
            ),
            Ok(Err(e)) => {
                // Not reached at all (rather than broken mid-session).
                let unreached = !e.starts_with("reading") && !e.starts_with("writing");
                if let Some(endpoint) = endpoint.as_ref().filter(|_| unreached) {
                    self.unreachable(endpoint);
                }
                Err(Failure::transient(format!("target {target}: {e}")))
            }
            Err(_) => Err(Failure::transient(format!(
                "target {target}: session not done within {timeout:?}"
            ))),
        }
    }
}

/// How long a replayed TCP session waits for the server's next bytes.
const TCP_IDLE: Duration = Duration::from_secs(2);

async fn run_tcp(
    target: &TcpTarget,
    tcp: &TcpSession,
    pacing: TcpPacing,
) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = tokio::time::Instant::now();
    let stream = target.connect().await?;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut got: Vec<u8> = Vec::with_capacity(tcp.server_bytes as usize);
    let mut buf = vec![0u8; 64 << 10];
    let mut server_done = false;
    // Reads until `want` server bytes are in, the server closes, or it idles.
    async fn read_up_to(
        reader: &mut tokio::io::ReadHalf<crate::tls::Stream>,
        buf: &mut [u8],
        got: &mut Vec<u8>,
        want: u64,
        server_done: &mut bool,
    ) -> Result<(), String> {
        while !*server_done && (got.len() as u64) < want {
            match tokio::time::timeout(TCP_IDLE, reader.read(buf)).await {
                Ok(Ok(0)) => *server_done = true,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => return Err(format!("reading: {e}")),
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }
    let mut server_before: u64 = 0;
    for chunk in &tcp.chunks {
        if chunk.from_client {
            read_up_to(
                &mut reader,
                &mut buf,
                &mut got,
                server_before,
                &mut server_done,
            )
            .await?;
            if pacing == TcpPacing::Recorded {
                tokio::time::sleep_until(started + Duration::from_micros(chunk.at_us)).await;
            }
            writer
                .write_all(&chunk.data)
                .await
                .map_err(|e| format!("writing: {e}"))?;
        } else {
            server_before += chunk.data.len() as u64;
        }
    }
    if tcp.closed_by == "client" {
        let _ = writer.shutdown().await;
    }
    read_up_to(
        &mut reader,
        &mut buf,
        &mut got,
        tcp.server_bytes,
        &mut server_done,
    )
    .await?;
    Ok(got)
}
