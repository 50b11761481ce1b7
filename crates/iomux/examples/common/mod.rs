//! What the example servers do the same way, so that each example file holds
//! only its own lesson. Not an example itself: Cargo builds
//! `examples/*.rs` and `examples/*/main.rs`, and this folder has no `main.rs`.
#![allow(dead_code)] // each example uses some of these

use std::io;
use std::net::{TcpListener, TcpStream};

use iomux::selector::Interest;
use iomux::server::{Counters, Model, ACCEPT_BACKOFF};

/// Binds the address given as the first argument, `127.0.0.1:1688` (the
/// lessons' port) by default, and prints the bound address as the first
/// line of stdout: with `127.0.0.1:0` the OS picks the port, and the tests
/// read it there. Like the lessons' `SO_REUSEADDR`: std sets it on every
/// Unix listener.
pub fn listen() -> io::Result<TcpListener> {
    let addr = std::env::args().nth(1);
    let listener = TcpListener::bind(addr.as_deref().unwrap_or("127.0.0.1:1688"))?;
    println!("listening on {}", listener.local_addr()?);
    Ok(listener)
}

/// The next connection, or `None` when none is waiting (on a non-blocking
/// listener) or `accept` failed. A failure such as `EMFILE` (out of fds)
/// would fail again at once and the loop would spin, so it is reported and
/// followed by a pause instead.
pub fn accept(listener: &TcpListener) -> Option<TcpStream> {
    match listener.accept() {
        Ok((stream, _)) => Some(stream),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => {
            eprintln!("accept: {e}");
            std::thread::sleep(ACCEPT_BACKOFF);
            None
        }
    }
}

/// What a connection must be watched for next: readable while it may be
/// read, writable only while output waits (a socket watched for writing
/// with nothing to write is reported at every wait, and the loop spins);
/// `None` when neither: it is finished.
pub fn interest(read: bool, write: bool) -> Option<Interest> {
    match (read, write) {
        (true, true) => Some(Interest::BOTH),
        (true, false) => Some(Interest::READABLE),
        (false, true) => Some(Interest::WRITABLE),
        (false, false) => None,
    }
}

/// What the servers built on [`iomux::conn::Conn`] share across their
/// connections: one buffer to read into, one to build replies in (only the
/// part the kernel does not take is copied into the connection), and the
/// counters `Conn` keeps (the examples never read them).
pub struct Scratch {
    pub input: Vec<u8>,
    pub output: Vec<u8>,
    pub counters: Counters,
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch {
            input: vec![0; 64 * 1024],
            output: Vec::new(),
            counters: Counters::default(),
        }
    }
}

/// For the framework's examples: `[--model MODEL] [ADDR]` from the command
/// line (`auto` and `127.0.0.1:0` by default). `None` after `--help`, which
/// prints `usage`; an error names what is wrong and gives `usage`. For
/// uring, the probe says why not before anything is bound.
pub fn model_and_addr(usage: &str) -> Result<Option<(Model, String)>, Box<dyn std::error::Error>> {
    let (mut model, mut addr) = (Model::auto(), "127.0.0.1:0".to_string());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--model" => {
                let name = args
                    .next()
                    .ok_or_else(|| format!("--model needs a name; {usage}"))?;
                model = name.parse()?;
            }
            "-h" | "--help" => {
                println!("{usage}");
                return Ok(None);
            }
            flag if flag.starts_with('-') => {
                return Err(format!("unknown option {flag}; {usage}").into())
            }
            _ => addr = arg,
        }
    }
    if model == Model::Uring {
        iomux::uring::probe()?; // say why not, before printing an address
    }
    Ok(Some((model, addr)))
}
