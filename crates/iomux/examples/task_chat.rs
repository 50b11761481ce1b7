//! A chat room on coroutines: one task per client, and a channel per client
//! for the lines it is sent, the lessons' coroutine remedy (协程) written as
//! a user writes it on `iomux::reactor::task`, with `futures-util`'s line
//! reader and `futures-channel`'s bounded `mpsc`.
//!
//! Every line a client sends goes to every other client as `[ID] line`;
//! a newcomer is told `* you are ID`, the others `* ID joined`, and
//! `* ID left` when it goes. Lines longer than 4 KiB are cut into 4 KiB
//! pieces.
//!
//! **A client that does not read.** A sender never writes into another
//! client's socket: it puts the line (one shared allocation) into each
//! other client's channel with `try_send`, which never waits, and each
//! client's own task writes its channel out to its socket. So a client that
//! stops reading holds up nobody: once the kernel's buffers for it are full,
//! its task waits, and its channel fills. The channel is bounded
//! (`BACKLOG` lines); a client that falls that far behind is disconnected
//! (its task aborted, its socket closed, `* ID left` announced), as IRC
//! servers do ("SendQ exceeded"). Dropping lines instead would keep it
//! connected but show it a different conversation from the others', and
//! nothing would tell it. Memory per client is thus bounded: `BACKLOG` lines
//! of at most 4 KiB, plus an 8 KiB read buffer.
//!
//! ```sh
//! cargo run --release --example task_chat [ADDR]   # default 127.0.0.1:0; prints the bound address
//! nc 127.0.0.1 PORT                                 # in two terminals, and type
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use futures_channel::mpsc;
use futures_util::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use futures_util::{future, StreamExt};
use iomux::reactor::task::{self, Async, JoinHandle, Runtime};
use iomux::reactor::Options;

/// Lines that may wait for one client before it is disconnected.
const BACKLOG: usize = 256;
/// The longest line relayed whole.
const MAX_LINE: usize = 4096;

/// A line as sent: one allocation shared by every recipient's channel.
type Line = Rc<[u8]>;

struct Member {
    outbox: mpsc::Sender<Line>,
    /// The client's task, to end it if it falls `BACKLOG` lines behind.
    task: Option<JoinHandle<()>>,
}

type Room = Rc<RefCell<BTreeMap<u64, Member>>>;

fn main() {
    if let Err(e) = run() {
        eprintln!("task_chat: {e}");
        std::process::exit(1);
    }
}

fn run() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let listener = TcpListener::bind(&addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    println!("listening on {}", listener.local_addr()?);
    let mut rt = Runtime::new(Options::default())?;
    rt.block_on(accept_loop(listener))?
}

async fn accept_loop(listener: TcpListener) -> io::Result<()> {
    let listener = Async::new(listener)?;
    let room = Room::default();
    let mut next_id = 0;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like fail again at once: pause, not spin.
                eprintln!("task_chat: accept: {e}");
                task::sleep(Duration::from_millis(100)).await?;
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        let (mut outbox, lines) = mpsc::channel(BACKLOG);
        let welcome: Line = format!("* you are {id}\n").into_bytes().into();
        let _ = outbox.try_send(welcome); // a new channel has room
        relay(&room, None, format!("* {id} joined\n").into_bytes().into());
        room.borrow_mut().insert(id, Member { outbox, task: None });
        // The task starts at the next turn: its handle is in place first.
        let handle = task::spawn(client(id, stream, lines, room.clone()));
        if let Some(member) = room.borrow_mut().get_mut(&id) {
            member.task = Some(handle);
        }
    }
}

/// Puts `line` in the channel of every member but `from`. A member whose
/// channel is full is disconnected: its task is aborted (at the executor's
/// next turn), and its [`Leave`] guard announces it.
fn relay(room: &Room, from: Option<u64>, line: Line) {
    for (&id, member) in room.borrow_mut().iter_mut() {
        if Some(id) == from {
            continue;
        }
        if let Err(e) = member.outbox.try_send(line.clone()) {
            if e.is_full() {
                if let Some(task) = &member.task {
                    eprintln!("task_chat: {id} is {BACKLOG} lines behind: disconnected");
                    task.abort();
                }
            }
        }
    }
}

/// Takes a client out of the room, however its task ends (EOF, error,
/// aborted), and tells the others.
struct Leave {
    id: u64,
    room: Room,
}

impl Drop for Leave {
    fn drop(&mut self) {
        if self.room.borrow_mut().remove(&self.id).is_some() {
            let line = format!("* {} left\n", self.id).into_bytes().into();
            relay(&self.room, None, line);
        }
    }
}

/// One client: its lines to the room, and the room's lines (its channel)
/// to it, until it hangs up, fails, or is disconnected.
async fn client(id: u64, stream: TcpStream, mut lines: mpsc::Receiver<Line>, room: Room) {
    let _leave = Leave {
        id,
        room: room.clone(),
    };
    let Ok(socket) = Async::new(stream) else {
        return;
    };
    let socket = &socket;
    let reading = async {
        let mut reader = BufReader::new(socket);
        let mut line = Vec::with_capacity(MAX_LINE);
        loop {
            line.clear();
            line.extend_from_slice(format!("[{id}] ").as_bytes());
            let n = (&mut reader)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut line)
                .await?;
            if n == 0 {
                return io::Result::Ok(()); // EOF: the client left
            }
            if line.last() != Some(&b'\n') {
                line.push(b'\n'); // a 4 KiB piece, or the last line before EOF
            }
            relay(&room, Some(id), line.as_slice().into());
        }
    };
    let writing = async {
        while let Some(line) = lines.next().await {
            socket.write_all(&line).await?;
        }
        io::Result::Ok(())
    };
    // Whichever ends first ends the client: its EOF, or a write error.
    let _ = future::select(pin!(reading), pin!(writing)).await;
}
