//! The thread-pool server: a fixed number of blocking workers.
//!
//! From `seeds/002_95d98e0d3de7a165.txt`, section 3: the `data_handler(conn)`
//! that the lesson writes beside `from concurrent.futures import
//! ThreadPoolExecutor` (the pool the lessons offer against one thread per
//! client, see `seeds/004_6a1d07252f018853.txt` section 二, "线程池").
//! The accept loop hands each connection to a queue; `WORKERS` threads take
//! them one at a time and serve each with blocking calls. The pool bounds the
//! threads, but it is still blocking I/O: a worker held by a client that says
//! nothing is lost to everyone else, and once every worker is held, new
//! clients wait in the queue; once the queue is full they are refused.
//!
//! Bug fixed: `data_handler` never checks for EOF. When a client leaves,
//! `recv` returns `b''` at once, every time: the worker sends `b''` back and
//! receives again forever, at 100% of a core, and that pool slot never serves
//! anyone again. Here a read of 0 bytes ends the connection and frees the
//! worker; a reset ends that connection only; `write_all` sends replies that
//! `send` would have cut short.
//!
//! ```sh
//! cargo run --example pool_server [ADDR]         # default 127.0.0.1:1688
//! ```

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{self, Receiver, TrySendError};
use std::sync::{Arc, Mutex};

use iomux::protocol::{Action, Handler, Upper};

/// Threads serving connections.
const WORKERS: usize = 4;
/// Connections that may wait for a free worker; more are refused.
const QUEUE: usize = 64;

fn main() -> io::Result<()> {
    let listener = common::listen()?;
    let (queue, jobs) = mpsc::sync_channel::<TcpStream>(QUEUE);
    let jobs = Arc::new(Mutex::new(jobs));
    for _ in 0..WORKERS {
        let jobs = Arc::clone(&jobs);
        std::thread::spawn(move || worker(&jobs));
    }

    loop {
        let Some(stream) = common::accept(&listener) else {
            continue;
        };
        match queue.try_send(stream) {
            Ok(()) => {}
            // Dropping the stream closes it: the client sees EOF at once
            // instead of waiting in a queue that will not move.
            Err(TrySendError::Full(_)) => eprintln!("every worker busy, queue full: refused"),
            Err(TrySendError::Disconnected(_)) => unreachable!("workers never stop"),
        }
    }
}

/// One pool thread: takes the next connection and serves it to the end.
fn worker(jobs: &Mutex<Receiver<TcpStream>>) {
    let mut buf = [0; 4096];
    loop {
        // The lock is held only while waiting for the next connection.
        let Ok(stream) = jobs.lock().expect("no worker panics").recv() else {
            return;
        };
        if let Err(e) = data_handler(stream, &mut Upper, &mut buf) {
            eprintln!("connection ended: {e}");
        }
    }
}

/// The lesson's `data_handler`, ending at EOF; dropping `conn` closes it.
fn data_handler(mut conn: TcpStream, handler: &mut impl Handler, buf: &mut [u8]) -> io::Result<()> {
    let mut reply = Vec::new();
    loop {
        reply.clear();
        match conn.read(buf)? {
            0 => {
                handler.on_eof(&mut reply);
                return conn.write_all(&reply);
            }
            n => {
                let action = handler.on_data(&buf[..n], &mut reply);
                conn.write_all(&reply)?;
                if action == Action::Close {
                    return Ok(());
                }
            }
        }
    }
}
