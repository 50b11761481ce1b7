//! The event-driven server class: an event loop that dispatches to handlers.
//!
//! From `seeds/003_f8e0200b405581c1.txt`: the `TCPServer` class with
//! `handler_recever`, `handler_send` and `handler_exception`, a message queue
//! per connection, and `event_loop`, which detects events with `select` and
//! hands each kind to its handler. The lesson ends by naming the remedy for
//! select's cost, libevent and libev, which pick the best mechanism of each
//! OS; so does [`Selector::default_backend`] (epoll on Linux).
//!
//! Bugs fixed:
//! * `sleep(0.8)` in every turn of the event loop: each reply waited up to
//!   0.8 s, and a client got at most one message answered per turn. The loop
//!   here only ever waits in the selector.
//! * Partial sends: `handler_send` dropped a message once `send` returned,
//!   whether or not all of it was taken. Here the unsent tail stays at the
//!   head of the queue.
//! * A reset killed the server: `recv` raising `ConnectionResetError` was
//!   caught nowhere. Here an error closes that connection only.
//! * EOF dropped the queue: replies not yet sent were thrown away with it.
//!   Here the connection stops being read and closes once its queue is empty.
//! * Errors never reached `handler_exception`: select's "exceptional" list
//!   reports urgent (out-of-band) data on Linux, not errors; those arrive as
//!   readable, and `recv` raises. Here the error of any read or write goes to
//!   `handle_exception`, which closes that connection; a closed connection
//!   leaves the map and the selector at once, so no later event of the same
//!   turn can touch its socket (the lesson's `getpeername()` on a socket
//!   closed earlier in the turn raised).
//! * A client that sends without reading is not read while `MAX_QUEUED`
//!   bytes wait for it.
//!
//! ```sh
//! cargo run --example event_driven_server [ADDR]   # default 127.0.0.1:1688
//! ```

mod common;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use iomux::protocol::{Handler, Upper};
use iomux::selector::{Events, Interest, Selector, Token};

/// The listener's token; connections count up from 1.
const SERVER: Token = Token(0);
/// A client with this many reply bytes queued is not read.
const MAX_QUEUED: usize = 256 * 1024;

struct Client {
    stream: TcpStream,
    /// Replies not yet sent, oldest first; the head may be partly sent.
    queue: VecDeque<Vec<u8>>,
    queued: usize,
    /// The client closed its side.
    eof: bool,
    /// What the selector watches it for now.
    watched: Interest,
}

impl Client {
    /// Readable while it may be read, writable while replies wait; `None`
    /// once it has closed and everything is sent.
    fn interest(&self) -> Option<Interest> {
        common::interest(!self.eof && self.queued < MAX_QUEUED, self.queued > 0)
    }
}

struct TcpServer {
    listener: TcpListener,
    selector: Selector,
    clients: HashMap<Token, Client>,
    next_token: usize,
    buf: Vec<u8>,
}

impl TcpServer {
    fn new(listener: TcpListener) -> io::Result<TcpServer> {
        listener.set_nonblocking(true)?;
        let mut selector = Selector::default_backend()?;
        selector.register(listener.as_raw_fd(), SERVER, Interest::READABLE)?;
        Ok(TcpServer {
            listener,
            selector,
            clients: HashMap::new(),
            next_token: 1,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Detects events and dispatches each to its handler, forever.
    fn event_loop(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            self.selector.select(&mut events, None)?;
            for event in &events {
                let token = event.token();
                if token == SERVER {
                    self.handle_accept();
                    continue;
                }
                // An error or hang-up makes the read or write fail, which
                // hands it to `handle_exception`.
                let mut res = Ok(());
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    res = self.handle_receive(token);
                }
                if res.is_ok() && (event.is_writable() || event.is_error()) {
                    res = self.handle_send(token);
                }
                match res {
                    Ok(()) => self.update(token)?,
                    Err(e) => self.handle_exception(token, &e)?,
                }
            }
        }
    }

    fn handle_accept(&mut self) {
        while let Some(stream) = common::accept(&self.listener) {
            let token = Token(self.next_token);
            let fd = stream.as_raw_fd();
            let registered = stream
                .set_nonblocking(true)
                .and_then(|()| self.selector.register(fd, token, Interest::READABLE));
            if let Err(e) = registered {
                eprintln!("connection refused: {e}");
                continue;
            }
            self.next_token += 1;
            let client = Client {
                stream,
                queue: VecDeque::new(),
                queued: 0,
                eof: false,
                watched: Interest::READABLE,
            };
            self.clients.insert(token, client);
        }
    }

    /// One read; its reply joins the client's queue.
    fn handle_receive(&mut self, token: Token) -> io::Result<()> {
        let Some(c) = self.clients.get_mut(&token) else {
            return Ok(());
        };
        if c.eof || c.queued >= MAX_QUEUED {
            return Ok(());
        }
        match c.stream.read(&mut self.buf) {
            Ok(0) => c.eof = true,
            Ok(n) => {
                let mut reply = Vec::with_capacity(n);
                Upper.on_data(&self.buf[..n], &mut reply);
                c.queued += reply.len();
                c.queue.push_back(reply);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Sends queued replies until the queue is empty or the kernel's buffer
    /// is full; a partly sent reply keeps its unsent tail at the head.
    fn handle_send(&mut self, token: Token) -> io::Result<()> {
        let Some(c) = self.clients.get_mut(&token) else {
            return Ok(());
        };
        while let Some(head) = c.queue.front_mut() {
            let n = match c.stream.write(head) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            c.queued -= n;
            if n == head.len() {
                c.queue.pop_front();
            } else {
                head.drain(..n);
                break;
            }
        }
        Ok(())
    }

    /// An error on a connection: close it, and only it.
    fn handle_exception(&mut self, token: Token, e: &io::Error) -> io::Result<()> {
        eprintln!("closing a connection: {e}");
        self.close(token)
    }

    /// Watches the client for what it needs next, or closes it.
    fn update(&mut self, token: Token) -> io::Result<()> {
        let Some(c) = self.clients.get_mut(&token) else {
            return Ok(());
        };
        match c.interest() {
            // Unchanged: no call (with epoll, each change is a system call).
            Some(interest) if interest == c.watched => Ok(()),
            Some(interest) => {
                c.watched = interest;
                self.selector
                    .reregister(c.stream.as_raw_fd(), token, interest)
            }
            None => self.close(token),
        }
    }

    /// Out of the selector first, then closed (by dropping the stream).
    fn close(&mut self, token: Token) -> io::Result<()> {
        if let Some(c) = self.clients.remove(&token) {
            self.selector.deregister(c.stream.as_raw_fd())?;
        }
        Ok(())
    }
}

fn main() -> io::Result<()> {
    let mut server = TcpServer::new(common::listen()?)?;
    eprintln!("event loop on {}", server.selector.backend());
    server.event_loop()
}
