//! The epoll server: register, modify, unregister.
//!
//! From `seeds/000_74c4d99125a95c23.txt`, section "epoll案例:服务器". The
//! interest set lives in the kernel: `register` adds a socket once (an
//! `epoll_ctl` call), `modify` changes what it is watched for, `unregister`
//! removes it, and each wait returns only the sockets that are ready, so its
//! cost follows the ready sockets, not the watched ones. Like the lesson's
//! `fd_socket` dict, a map from fd to connection finds the socket an event
//! names.
//!
//! Bugs fixed:
//! * `event == select.EPOLLIN`: an event is a bit mask. A client that sends
//!   and closes arrives as `EPOLLIN | EPOLLHUP` (or with `EPOLLRDHUP`,
//!   `EPOLLERR`), which equals neither `EPOLLIN` nor `EPOLLOUT`: no branch
//!   runs, nothing is read, and level-triggered epoll reports the same event
//!   at once, forever: 100% of a core. Here each bit is tested on its own, and
//!   an error or hang-up is handled by the read or write that reports it.
//! * Partial sends: the lesson ignores what `send` returns, drops the message
//!   and goes back to `EPOLLIN`; `Conn` keeps what the kernel did not take,
//!   and the socket stays watched for writing (and for reading, unless
//!   `MAX_OUTPUT` bytes wait) until it is all sent.
//! * Decoding every read as UTF-8 to print it: a character split between two
//!   reads raises `UnicodeDecodeError`, and the server dies. Bytes stay bytes.
//! * Needless `modify`: each is a system call; it is made only when the
//!   interest changes.
//! * A reset (`ConnectionResetError` from `recv`) killed the lesson's server;
//!   here it closes that connection only.
//!
//! ```sh
//! cargo run --example epoll_server [ADDR]       # default 127.0.0.1:1688
//! ```

mod common;

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};

use iomux::conn::Conn;
use iomux::protocol::Upper;
use iomux::selector::{Backend, Events, Interest, Selector, Token};

/// A client whose unsent output reaches this many bytes is not read.
const MAX_OUTPUT: usize = 256 * 1024;

/// A connection and what epoll watches it for now.
struct Client {
    conn: Conn<Upper>,
    interest: Interest,
}

fn main() -> io::Result<()> {
    let listener = common::listen()?;
    listener.set_nonblocking(true)?;
    let mut epoll = Selector::new(Backend::Epoll)?;
    let server = listener.as_raw_fd();
    epoll.register(server, Token(server as usize), Interest::READABLE)?;
    let mut fd_client: HashMap<RawFd, Client> = HashMap::new();
    let mut s = common::Scratch::default();
    let mut events = Events::with_capacity(256);
    loop {
        epoll.select(&mut events, None)?;
        for event in &events {
            let fd = event.token().0 as RawFd;
            if fd == server {
                accept_all(&listener, &mut epoll, &mut fd_client);
                continue;
            }
            let Some(client) = fd_client.get_mut(&fd) else {
                continue;
            };
            let conn = &mut client.conn;
            let mut res = Ok(());
            // Bits, not `==`: readable, hang-up and error can come together.
            if (event.is_readable() || event.is_read_closed() || event.is_error())
                && conn.wants_read(MAX_OUTPUT)
            {
                res = conn
                    .on_readable(&mut s.input, &mut s.output, &s.counters, MAX_OUTPUT)
                    .map(drop);
            }
            if res.is_ok() && (event.is_writable() || event.is_error()) {
                res = conn.on_writable(&s.counters);
            }
            let next = common::interest(conn.wants_read(MAX_OUTPUT), conn.wants_write());
            match (res, next) {
                (Ok(()), Some(interest)) if interest == client.interest => {}
                (Ok(()), Some(interest)) => {
                    epoll.reregister(fd, Token(fd as usize), interest)?; // modify
                    client.interest = interest;
                }
                // The client closed and everything is sent.
                (Ok(()), None) => close(&mut epoll, &mut fd_client, fd)?,
                (Err(e), _) => {
                    eprintln!("connection closed: {e}");
                    close(&mut epoll, &mut fd_client, fd)?;
                }
            }
        }
    }
}

/// Unregisters, then closes (by dropping the connection).
fn close(epoll: &mut Selector, clients: &mut HashMap<RawFd, Client>, fd: RawFd) -> io::Result<()> {
    epoll.deregister(fd)?;
    clients.remove(&fd);
    Ok(())
}

/// Accepts every waiting connection and registers it for reading.
fn accept_all(listener: &TcpListener, epoll: &mut Selector, clients: &mut HashMap<RawFd, Client>) {
    while let Some(stream) = common::accept(listener) {
        let fd = stream.as_raw_fd();
        let registered = stream
            .set_nonblocking(true)
            .and_then(|()| epoll.register(fd, Token(fd as usize), Interest::READABLE));
        match registered {
            Ok(()) => {
                let conn = Conn::new(stream, Upper);
                let interest = Interest::READABLE;
                clients.insert(fd, Client { conn, interest });
            }
            Err(e) => eprintln!("connection refused: {e}"),
        }
    }
}
