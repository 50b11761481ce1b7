//! The control channel of `iomux serve --control`: how the bench reads a
//! server's counters from the server itself.
//!
//! After its address line, the server reads its stdin line by line. For each
//! `stats` line it prints one line, `stats name=value name=value ...`, with
//! every [`Counters`] field and `cpu_us`, the process's CPU time in
//! microseconds. When its stdin closes (the bench is done, or died), it stops.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::{anyhow, Result};
use iomux::server::{Counters, Stop};

/// One `stats` answer line (without the newline).
pub fn format_stats(counters: &Counters) -> String {
    let s = counters.snapshot();
    let cpu_us = iomux::sys::process_cpu_time().map_or(0, |d| d.as_micros() as u64);
    format!(
        "stats accepted={} refused={} closed={} resets={} accept_errors={} bytes_in={} bytes_out={} \
         recv_calls={} send_calls={} wait_calls={} ctl_calls={} pending_output={} peak_conn_output={} idle_closed={} offloaded={} stalls={} cpu_us={}",
        s.accepted,
        s.refused,
        s.closed,
        s.resets,
        s.accept_errors,
        s.bytes_in,
        s.bytes_out,
        s.recv_calls,
        s.send_calls,
        s.wait_calls,
        s.ctl_calls,
        s.pending_output,
        s.peak_conn_output,
        s.idle_closed,
        s.offloaded,
        s.stalls,
        cpu_us
    )
}

/// Parses a `stats` answer line into its fields.
pub fn parse_stats(line: &str) -> Result<HashMap<String, u64>> {
    let mut words = line.split_whitespace();
    if words.next() != Some("stats") {
        return Err(anyhow!("not a stats line: {line:?}"));
    }
    words
        .map(|w| {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| anyhow!("bad field {w:?}"))?;
            Ok((k.to_string(), v.parse()?))
        })
        .collect()
}

/// Serves the control channel on stdin/stdout until stdin closes, then
/// gives `stop`. Runs on its own thread.
pub fn run(counters: Arc<Counters>, stop: Stop) {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "stats" {
            let _ = writeln!(stdout, "{}", format_stats(&counters));
            let _ = stdout.flush();
        }
    }
    stop.stop();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_line_round_trips() {
        let c = Counters::default();
        Counters::add(&c.accepted, 3);
        Counters::add(&c.bytes_out, 1234);
        let parsed = parse_stats(&format_stats(&c)).unwrap();
        assert_eq!(parsed["accepted"], 3);
        assert_eq!(parsed["bytes_out"], 1234);
        assert!(parsed.contains_key("cpu_us"));
        assert!(parse_stats("nonsense a=1").is_err());
    }
}
