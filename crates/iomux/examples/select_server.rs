//! The select server: a read list, and a write list only while a reply waits.
//!
//! From `seeds/000_74c4d99125a95c23.txt`, section "多路复用IO模型:select模块的应用"
//! (`rlist`, `wlist` and `msgs`; `seeds/002_95d98e0d3de7a165.txt` section 4
//! is the same server with a dict of pending data). One thread blocks in
//! `select(2)` instead of in a socket call, and handles whichever sockets it
//! reports. The two lists are the selector's interest set: every socket is
//! watched for reading (the listener too: a waiting connection reads as
//! ready), and for writing only while it has output pending; a socket always
//! writable would make `select` return at once, forever.
//!
//! [`Conn`] is one client's state: its handler, the reply bytes the kernel has
//! not taken (the lesson's `msgs`), whether it has closed.
//!
//! Bugs fixed:
//! * Closed sockets left in the write list: on EOF the lesson in seed 002
//!   closes the socket, removes it from `rlist` only, and goes on to add it to
//!   `wlist`; the next `select` is given a closed socket and fails. Seed 000's
//!   reset path calls `wlist.remove` on a socket that is not there, which
//!   raises. Here a finished connection leaves the selector (both lists) in
//!   one `deregister`, before it is closed.
//! * Partial sends: the lesson drops a message once `send` returns, whether
//!   or not all of it was taken; `Conn` keeps the rest for the next writable
//!   event. (Seed 000 also never upper-cases, and seed 002 overwrites a
//!   client's unsent data with its next message.)
//! * select cannot watch fd 1024 or above (`FD_SETSIZE`, the limit the lesson
//!   names): such a connection is refused with a message, not a crash.
//!
//! ```sh
//! cargo run --example select_server [ADDR]      # default 127.0.0.1:1688
//! ```

mod common;

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};

use iomux::conn::Conn;
use iomux::protocol::Upper;
use iomux::selector::{Backend, Event, Events, Interest, Selector, Token};

/// A client whose unsent output reaches this many bytes is not read.
const MAX_OUTPUT: usize = 256 * 1024;

fn main() -> io::Result<()> {
    let listener = common::listen()?;
    listener.set_nonblocking(true)?;
    let mut selector = Selector::new(Backend::Select)?;
    // The token of each socket is its fd, as `select` itself names them.
    let server = listener.as_raw_fd();
    selector.register(server, token(server), Interest::READABLE)?;
    let mut clients: HashMap<RawFd, Conn<Upper>> = HashMap::new();
    let mut scratch = common::Scratch::default();
    let mut events = Events::with_capacity(256);
    loop {
        // Blocks until a socket of either list is ready.
        selector.select(&mut events, None)?;
        for event in &events {
            let fd = event.token().0 as RawFd;
            if fd == server {
                accept_all(&listener, &mut selector, &mut clients);
                continue;
            }
            let Some(conn) = clients.get_mut(&fd) else {
                continue;
            };
            match serve(conn, event, &mut scratch) {
                // Still open: in the write list only if a reply waits.
                Ok(Some(interest)) => selector.reregister(fd, token(fd), interest)?,
                Ok(None) | Err(_) => {
                    // Out of both lists first, then closed (by the drop).
                    selector.deregister(fd)?;
                    clients.remove(&fd);
                }
            }
        }
    }
}

fn token(fd: RawFd) -> Token {
    Token(fd as usize)
}

/// Accepts every waiting connection and puts it in the read list.
fn accept_all(
    listener: &TcpListener,
    selector: &mut Selector,
    clients: &mut HashMap<RawFd, Conn<Upper>>,
) {
    while let Some(stream) = common::accept(listener) {
        let fd = stream.as_raw_fd();
        let watched = stream
            .set_nonblocking(true)
            .and_then(|()| selector.register(fd, token(fd), Interest::READABLE));
        match watched {
            Ok(()) => {
                clients.insert(fd, Conn::new(stream, Upper));
            }
            // Such as fd >= FD_SETSIZE; dropping the stream closes it.
            Err(e) => eprintln!("connection refused: {e}"),
        }
    }
}

/// Reads and writes what `event` allows. Returns the lists the connection
/// belongs in next, or `None` once it is finished (EOF read, all sent).
fn serve(
    conn: &mut Conn<Upper>,
    event: &Event,
    s: &mut common::Scratch,
) -> io::Result<Option<Interest>> {
    // select reports EOF, resets and errors as "readable": the read tells.
    if event.is_readable() && conn.wants_read(MAX_OUTPUT) {
        conn.on_readable(&mut s.input, &mut s.output, &s.counters, MAX_OUTPUT)?;
    }
    if event.is_writable() {
        conn.on_writable(&s.counters)?;
    }
    Ok(common::interest(
        conn.wants_read(MAX_OUTPUT),
        conn.wants_write(),
    ))
}
