//! The bulk client: a million round trips, one after another.
//!
//! From `seeds/001_28b4c579cadf7b37.txt`, the client after the select server:
//! `for i in range(1000000): sk.send(b'hello'); print(sk.recv(1024))`. Each
//! round trip waits for its reply before the next is sent, so the rate is
//! one over the latency of a round trip: run it against each server to see
//! what a model costs per message.
//!
//! Bugs fixed:
//! * One `recv(1024)` per round trip: it may return part of `HELLO`; the
//!   round trip is counted before its reply has arrived, and the rest is read
//!   as the next reply. Here each reply is read in full and checked.
//! * Printing every reply: a million lines measure the terminal, not the
//!   server. Here one line at the end gives the rate.
//! * The lesson's first bulk client (after the non-blocking server) receives
//!   before it sends: against a server that only answers, both sides wait
//!   for ever. This one sends first.
//!
//! ```sh
//! cargo run --release --example bulk_client [ADDR [ROUND_TRIPS]]
//! # default 127.0.0.1:1688, 1000000 round trips
//! ```

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:1688".to_string());
    let rounds: u64 = match args.next() {
        Some(n) => n
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{n:?}: {e}")))?,
        None => 1_000_000,
    };
    let mut server = TcpStream::connect(&addr)?;
    // Send each small message at once rather than wait to fill a segment.
    server.set_nodelay(true)?;

    let mut reply = [0; 5];
    let start = Instant::now();
    for i in 0..rounds {
        server.write_all(b"hello")?;
        server.read_exact(&mut reply)?;
        if &reply != b"HELLO" {
            let got = String::from_utf8_lossy(&reply);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("round trip {i}: expected \"HELLO\", got {got:?}"),
            ));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{rounds} round trips in {secs:.2} s: {:.0} round trips/s",
        rounds as f64 / secs
    );
    Ok(())
}
