//! A key-value server: your own protocol, served by the framework on any
//! I/O model.
//!
//! Everything the other examples write by hand (accepting, reading, sending
//! what the kernel did not take, closing) is the framework's here. What is
//! left is the protocol, a [`Handler`]: it is given the bytes that arrived
//! and appends its replies. One handler serves one connection; the factory
//! closure given to [`serve`] makes one per connection, and the map all
//! connections share is the `Arc` that closure captures.
//!
//! The protocol is one command per line (in any case; `\r\n` ends a line
//! too), one reply line per command:
//!
//! | command | reply |
//! |---|---|
//! | `SET k v` (the value may hold spaces) | `OK` |
//! | `GET k` | the value, or `NIL` |
//! | `DEL k` | `1` if `k` was there, else `0` |
//! | anything else | `ERR` and what is wrong; the connection stays open |
//!
//! Input arrives in arbitrary pieces: a line may come split over many reads,
//! or several lines in one. So the handler keeps the unfinished line, and
//! bounds it: a line longer than [`MAX_LINE`] gets `ERR line too long` and
//! the connection is closed, so that no peer can grow the server's memory.
//!
//! ```sh
//! cargo run --release --example kv_server -- --model epoll [ADDR]   # default 127.0.0.1:0
//! printf 'SET greeting hello world\nGET greeting\n' | nc -q1 127.0.0.1 PORT
//! ```

mod common;

use std::collections::HashMap;
use std::error::Error;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use iomux::protocol::{Action, Handler};
use iomux::server::{serve, Config, Counters, Stop};

/// The longest line a client may send, newline excluded.
const MAX_LINE: usize = 64 * 1024;

/// The map every connection reads and writes.
type Store = Arc<Mutex<HashMap<String, String>>>;

/// One connection's handler: the shared map, and the line read so far.
struct Kv {
    store: Store,
    line: Vec<u8>,
}

impl Handler for Kv {
    fn on_data(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Action {
        while !input.is_empty() {
            // The rest of the current line, and whether its newline came.
            let (part, complete) = match input.iter().position(|&b| b == b'\n') {
                Some(end) => (&input[..end], true),
                None => (input, false),
            };
            input = &input[(part.len() + usize::from(complete))..];
            if self.line.len() + part.len() > MAX_LINE {
                out.extend_from_slice(b"ERR line too long\n");
                return Action::Close; // the framework sends the reply first
            }
            self.line.extend_from_slice(part);
            if complete {
                let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
                let reply = execute(&self.store, line).unwrap_or_else(|e| format!("ERR {e}"));
                out.extend_from_slice(reply.as_bytes());
                out.push(b'\n');
                self.line.clear();
            }
        }
        Action::Continue
    }
}

/// The reply to one command line, or what is wrong with it.
fn execute(store: &Mutex<HashMap<String, String>>, line: &[u8]) -> Result<String, String> {
    let line = std::str::from_utf8(line).map_err(|_| "line is not UTF-8")?;
    let (command, args) = line.split_once(' ').unwrap_or((line, ""));
    let map = || store.lock().expect("no handler panics holding the map");
    match command.to_ascii_uppercase().as_str() {
        "SET" => match args.split_once(' ') {
            Some((key, value)) if !key.is_empty() => {
                map().insert(key.into(), value.into());
                Ok("OK".into())
            }
            _ => Err("SET needs a key and a value: SET k v".into()),
        },
        "GET" => {
            let key = one_key("GET", args)?;
            Ok(map().get(key).cloned().unwrap_or_else(|| "NIL".into()))
        }
        "DEL" => {
            let key = one_key("DEL", args)?;
            let deleted = map().remove(key).is_some();
            Ok(if deleted { "1" } else { "0" }.into())
        }
        "" => Err("empty line; expected SET k v, GET k or DEL k".into()),
        _ => Err(format!(
            "unknown command {command:?}; expected SET, GET or DEL"
        )),
    }
}

/// The key of a command that takes exactly one.
fn one_key<'a>(command: &str, args: &'a str) -> Result<&'a str, String> {
    if args.is_empty() || args.contains(' ') {
        return Err(format!("{command} takes one key: {command} k"));
    }
    Ok(args)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("kv_server: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    const USAGE: &str = "usage: kv_server [--model MODEL] [ADDR]   (MODEL: auto, blocking, threaded, pool, busy-poll, select, poll, epoll, coroutine, uring)";
    let Some((model, addr)) = common::model_and_addr(USAGE)? else {
        return Ok(());
    };

    let listener = TcpListener::bind(&addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!(
        "kv_server ({model}) listening on {}",
        listener.local_addr()?
    );

    let store = Store::default();
    let factory = move || Kv {
        store: Arc::clone(&store),
        line: Vec::new(),
    };
    // Serves on this thread until the process ends; another thread could
    // end it with `stop.stop()`, and read what it did in `counters`.
    let (stop, counters) = (Stop::new()?, Arc::new(Counters::default()));
    serve(
        model,
        listener,
        &Config::default(),
        &stop,
        &counters,
        factory,
    )?;
    Ok(())
}
