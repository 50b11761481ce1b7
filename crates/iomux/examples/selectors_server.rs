//! The selectors-style server: callbacks registered with an event loop.
//!
//! From `seeds/004_6a1d07252f018853.txt`, section 七 "selectors模块": the
//! server built on `selectors.DefaultSelector()`, where
//! `sel.register(server, EVENT_READ, accept)` ties a callback to a socket and
//! the loop calls whichever callback's socket is ready. Here the loop is
//! iomux's [`Reactor`], on the platform's best backend as `DefaultSelector`
//! picks one (epoll on Linux); `add_io` is `register`, `modify_io` is
//! `modify`, `remove_io` is `unregister`.
//!
//! Bugs fixed:
//! * A send that stalls every client: the lesson's `read` callback calls
//!   `conn.send(...)` on a socket from `accept()`, which is blocking. A client
//!   that does not read fills its socket buffer, `send` blocks, and the whole
//!   loop with it. And `send` may take only part of the reply, the rest
//!   silently dropped. Here sockets are non-blocking; [`Conn`] keeps what the
//!   kernel did not take, and the callback watches for writable only while
//!   something waits.
//! * A client that sends without reading is not read while `MAX_OUTPUT`
//!   bytes wait for it, instead of growing the server's memory.
//! * The lesson appends `b'_SB'` to every reply; this server speaks the
//!   project's protocol, upper-case only.
//!
//! ```sh
//! cargo run --example selectors_server [ADDR]   # default 127.0.0.1:1688
//! ```

mod common;

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};

use iomux::conn::Conn;
use iomux::protocol::Upper;
use iomux::reactor::{IoId, Options, Reactor};
use iomux::selector::{Event, Interest, Mode};

/// A client whose unsent output reaches this many bytes is not read.
const MAX_OUTPUT: usize = 256 * 1024;

/// What the callbacks share: each connection by fd (the callback knows its
/// socket, as the lesson's `read(conn, mask)` does), and the loop's buffers.
#[derive(Default)]
struct Server {
    clients: HashMap<RawFd, (IoId, Conn<Upper>)>,
    scratch: common::Scratch,
}

fn main() -> io::Result<()> {
    let listener = common::listen()?;
    listener.set_nonblocking(true)?;
    let mut sel: Reactor<Server> = Reactor::new(Options::default())?;
    eprintln!("event loop on {}", sel.backend());
    let fd = listener.as_raw_fd();
    // `sel.register(server, EVENT_READ, accept)`
    let on_ready = move |sel: &mut Reactor<Server>, server: &mut Server, _| {
        accept(sel, server, &listener);
    };
    sel.add_io(fd, Interest::READABLE, Mode::Level, on_ready)?;
    sel.run(&mut Server::default())
}

/// The listener's callback: registers each new connection with `read`.
fn accept(sel: &mut Reactor<Server>, server: &mut Server, listener: &TcpListener) {
    while let Some(stream) = common::accept(listener) {
        let fd = stream.as_raw_fd();
        // `sel.register(conn, EVENT_READ, read)`
        let on_ready = move |sel: &mut Reactor<Server>, server: &mut Server, event| {
            read(sel, server, fd, event);
        };
        let registered = stream
            .set_nonblocking(true)
            .and_then(|()| sel.add_io(fd, Interest::READABLE, Mode::Level, on_ready));
        match registered {
            Ok(io) => {
                server.clients.insert(fd, (io, Conn::new(stream, Upper)));
            }
            Err(e) => eprintln!("connection refused: {e}"),
        }
    }
}

/// A connection's callback: read and reply, send what waits, then watch for
/// what it needs next, or unregister and close it.
fn read(sel: &mut Reactor<Server>, server: &mut Server, fd: RawFd, event: Event) {
    let Some((io, conn)) = server.clients.get_mut(&fd) else {
        return;
    };
    let io = *io;
    let mut res = Ok(());
    // An error or hang-up is reported by the read that meets it.
    if (event.is_readable() || event.is_read_closed() || event.is_error())
        && conn.wants_read(MAX_OUTPUT)
    {
        let s = &mut server.scratch;
        res = conn
            .on_readable(&mut s.input, &mut s.output, &s.counters, MAX_OUTPUT)
            .map(drop);
    }
    if res.is_ok() && (event.is_writable() || event.is_error()) {
        res = conn.on_writable(&server.scratch.counters);
    }
    let next = common::interest(conn.wants_read(MAX_OUTPUT), conn.wants_write());
    match (res, next) {
        // Costs no system call when the interest is unchanged.
        (Ok(()), Some(interest)) if sel.modify_io(io, interest).is_ok() => return,
        (Err(e), _) => eprintln!("connection closed: {e}"),
        _ => {} // the client closed and everything is sent
    }
    let _ = sel.remove_io(io); // unregister, then close by dropping
    server.clients.remove(&fd);
}
