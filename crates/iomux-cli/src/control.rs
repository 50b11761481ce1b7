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
use iomux::server::{ServerCounters, Snapshot, Stop};

/// What a `stats` line carries: the server's counters (their names come
/// from [`Snapshot`], defined once in the library), its process's CPU time
/// and sleeps, and each loop's accepted connections.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ControlStats {
    /// Every counter, summed over the loops.
    pub counters: Snapshot,
    /// The process's CPU time, microseconds.
    pub cpu_us: u64,
    /// The process's voluntary context switches (sleeps).
    pub vcsw: u64,
    /// Connections each loop accepted, in loop order.
    pub loop_accepted: Vec<u64>,
}

/// One `stats` answer line (without the newline).
pub fn format_stats(counters: &ServerCounters) -> String {
    let usage = iomux::sys::process_usage().unwrap_or_default();
    let mut line = String::from("stats");
    for (name, value) in counters.snapshot().fields() {
        line += &format!(" {name}={value}");
    }
    line += &format!(
        " cpu_us={} vcsw={}",
        usage.cpu.as_micros() as u64,
        usage.voluntary_switches
    );
    let loops = counters.loops();
    line += &format!(" loops={}", loops.len());
    for (i, c) in loops.iter().enumerate() {
        line += &format!(" loop{i}_accepted={}", c.snapshot().accepted);
    }
    line
}

/// Parses a `stats` answer line.
pub fn parse_stats(line: &str) -> Result<ControlStats> {
    let mut words = line.split_whitespace();
    if words.next() != Some("stats") {
        return Err(anyhow!("not a stats line: {line:?}"));
    }
    let fields = words
        .map(|w| {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| anyhow!("bad field {w:?}"))?;
            Ok((k.to_string(), v.parse()?))
        })
        .collect::<Result<HashMap<String, u64>>>()?;
    let get = |k: &str| fields.get(k).copied();
    let loops = get("loops").unwrap_or(1);
    Ok(ControlStats {
        counters: Snapshot::from_fields(get),
        cpu_us: get("cpu_us").unwrap_or(0),
        vcsw: get("vcsw").unwrap_or(0),
        loop_accepted: (0..loops)
            .map(|i| get(&format!("loop{i}_accepted")).unwrap_or(0))
            .collect(),
    })
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
        assert_eq!(parsed.counters, c.snapshot());
        assert_eq!(parsed.counters.accepted, 7);
        assert_eq!(parsed.counters.bytes_out, 1234);
        assert_eq!(parsed.loop_accepted, [3, 4]);
        let line = format_stats(&c);
        for name in Snapshot::NAMES {
            assert!(line.contains(&format!(" {name}=")), "{name} in {line}");
        }
        assert!(line.contains(" cpu_us="));
        assert!(parse_stats("nonsense a=1").is_err());
    }
}
