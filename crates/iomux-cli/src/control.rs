//! The control channel of `iomux serve --control`: how the bench reads a
//! server's counters from the server itself.
//!
//! After its address line, the server reads its stdin line by line. For each
//! `stats` line it prints one line, `stats name=value name=value ...`, with
//! every [`Counters`](iomux::server::Counters) field summed over the
//! server's loops, `cpu_us`, the process's CPU time in microseconds, `vcsw`, its voluntary
//! context switches (sleeps), `loops`,
//! and each loop's `accepted` as `loop0_accepted`, `loop1_accepted`, ...
//! When its stdin closes (the bench is done, or died), it stops.

use std::collections::HashMap;
use std::io::{BufRead, Write};

use anyhow::{anyhow, Result};
use iomux::server::{ServerCounters, Stop};

/// One `stats` answer line (without the newline).
pub fn format_stats(counters: &ServerCounters) -> String {
    let s = counters.snapshot();
    let usage = iomux::sys::process_usage().unwrap_or_default();
    let mut line = format!(
        "stats accepted={} refused={} closed={} resets={} accept_errors={} bytes_in={} bytes_out={} \
         recv_calls={} send_calls={} wait_calls={} ctl_calls={} pending_output={} peak_conn_output={} idle_closed={} offloaded={} stalls={} cpu_us={} vcsw={}",
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
        usage.cpu.as_micros() as u64,
        usage.voluntary_switches
    );
    let loops = counters.loops();
    line += &format!(" loops={}", loops.len());
    for (i, c) in loops.iter().enumerate() {
        let accepted = c.accepted.load(std::sync::atomic::Ordering::Relaxed);
        line += &format!(" loop{i}_accepted={accepted}");
    }
    line
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
pub fn run(counters: ServerCounters, stop: Stop) {
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
    use iomux::server::Counters;

    #[test]
    fn stats_line_round_trips() {
        let c = ServerCounters::new(2);
        Counters::add(&c.loops()[0].accepted, 3);
        Counters::add(&c.loops()[1].accepted, 4);
        Counters::add(&c.loops()[1].bytes_out, 1234);
        let parsed = parse_stats(&format_stats(&c)).unwrap();
        assert_eq!(parsed["accepted"], 7);
        assert_eq!(parsed["bytes_out"], 1234);
        assert_eq!(parsed["loops"], 2);
        assert_eq!(parsed["loop0_accepted"], 3);
        assert_eq!(parsed["loop1_accepted"], 4);
        assert!(parsed.contains_key("cpu_us"));
        assert!(parse_stats("nonsense a=1").is_err());
    }
}
