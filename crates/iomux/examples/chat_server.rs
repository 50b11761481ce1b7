//! A chat room on the framework: handlers that speak first and speak to
//! each other.
//!
//! Every line a client sends goes to every other client, prefixed with the
//! sender's id (`[3] hello`); joins and leaves are announced (`* 3 joined`,
//! `* 3 left`), and a client is greeted with its id (`* you are 3`).
//!
//! What it shows of the framework, beyond a plain request/reply handler:
//!
//! * [`Handler::on_connect`] greets, and [`Handler::on_close`] hears that a
//!   client left, whatever the reason (it closed, reset, was shed, the
//!   server stopped);
//! * [`Handler::PUSH`] asks for the connection's [`Push`] handle
//!   ([`Handler::attach`]), through which any handler sends to that
//!   client: a line is a reply to nobody, it is pushed to everyone else;
//! * the bound: a push to a client whose output is full (it does not read)
//!   is refused with [`PushError::Full`], so a silent client can neither
//!   grow the server's memory nor slow the others. This room then ends that
//!   client ([`Push::abort`]), as IRC servers do with a full send queue;
//!   dropping its lines instead would silently show it another
//!   conversation.
//!
//! ```sh
//! cargo run --release --example chat_server -- --model epoll [ADDR]   # default 127.0.0.1:0
//! nc 127.0.0.1 PORT    # in two terminals, and type
//! ```
//!
//! Every model serves it: the event loops are woken to send pushed
//! output; a thread of the thread models waits for its socket and for
//! pushes together; busy-poll looks at every pass.

mod common;

use std::collections::BTreeMap;
use std::error::Error;
use std::net::TcpListener;
use std::sync::{Arc, Mutex, PoisonError};

use iomux::protocol::{Action, CloseReason, Handler};
use iomux::push::{Push, PushError};
use iomux::server::{serve, Config, Counters, Stop};

/// The longest line a client may send, newline excluded.
const MAX_LINE: usize = 4096;

/// Who is in the room: each member's id and push handle.
#[derive(Default)]
struct Room {
    next_id: u64,
    members: BTreeMap<u64, Push>,
}

impl Room {
    /// Sends `msg` to every member but `from`; ends the ones that do not
    /// read (their output is full).
    fn broadcast(&self, from: u64, msg: &[u8]) {
        for (&id, push) in &self.members {
            if id != from && push.send(msg) == Err(PushError::Full) {
                push.abort();
            }
        }
    }
}

/// One client's connection.
struct Member {
    room: Arc<Mutex<Room>>,
    id: u64,
    push: Option<Push>,
    /// The line being received.
    line: Vec<u8>,
}

impl Member {
    fn room(&self) -> std::sync::MutexGuard<'_, Room> {
        self.room.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Handler for Member {
    const PUSH: bool = true;

    fn attach(&mut self, push: Push) {
        self.push = Some(push);
    }

    fn on_connect(&mut self, out: &mut Vec<u8>) -> Action {
        let push = self.push.clone().expect("attached before on_connect");
        let mut room = self.room();
        let id = room.next_id;
        room.next_id += 1;
        room.broadcast(id, format!("* {id} joined\n").as_bytes());
        room.members.insert(id, push);
        drop(room);
        self.id = id;
        out.extend_from_slice(format!("* you are {id}\n").as_bytes());
        Action::Continue
    }

    fn on_data(&mut self, input: &[u8], out: &mut Vec<u8>) -> Action {
        self.line.extend_from_slice(input);
        let mut start = 0;
        while let Some(end) = self.line[start..].iter().position(|&b| b == b'\n') {
            let line = &self.line[start..start + end + 1];
            let mut msg = format!("[{}] ", self.id).into_bytes();
            msg.extend_from_slice(line);
            self.room().broadcast(self.id, &msg);
            start += end + 1;
        }
        self.line.drain(..start);
        if self.line.len() > MAX_LINE {
            out.extend_from_slice(b"* line too long\n");
            return Action::Close;
        }
        Action::Continue
    }

    fn on_close(&mut self, _reason: CloseReason) {
        let mut room = self.room();
        if room.members.remove(&self.id).is_some() {
            room.broadcast(self.id, format!("* {} left\n", self.id).as_bytes());
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("chat_server: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    const USAGE: &str = "usage: chat_server [--model MODEL] [ADDR]   (MODEL: auto, blocking, threaded, pool, busy-poll, select, poll, epoll, coroutine, uring)";
    let Some((model, addr)) = common::model_and_addr(USAGE)? else {
        return Ok(());
    };
    let room = Arc::new(Mutex::new(Room::default()));
    let factory = move || Member {
        room: room.clone(),
        id: 0,
        push: None,
        line: Vec::new(),
    };
    let listener = TcpListener::bind(&addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!(
        "chat_server ({model}) listening on {}",
        listener.local_addr()?
    );
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
