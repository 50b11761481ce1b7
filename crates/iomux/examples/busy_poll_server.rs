//! The non-blocking, busy-polling server with a pending-send list.
//!
//! From `seeds/000_74c4d99125a95c23.txt`, section "非阻塞IO模型": the server
//! with `setblocking(False)`, a `clients` list and a `msgs` list of replies
//! waiting to be sent (`seeds/002_95d98e0d3de7a165.txt` section 3 has the
//! same server with separate lists for sends and closes). Every call returns
//! at once: `accept` and `read` with `WouldBlock` when there is nothing, so
//! nobody waits for data; the loop just asks every socket, again and again.
//!
//! Each client's pending-send list is an [`Outbox`]: the bytes of its replies
//! that the kernel has not taken yet, oldest first.
//!
//! Bugs fixed:
//! * Partial sends: the lesson removes a reply from `msgs` once `send`
//!   returns, though `send` may have taken only part of it; the rest was
//!   lost. The outbox keeps what the kernel did not take.
//! * EOF: the lesson closes the socket on `b''` but still queues `(c, b'')`;
//!   the next pass sends on the closed socket, which raises an `OSError` that
//!   nothing catches, and the server dies. Here EOF only stops reading; the
//!   client is dropped once its replies are sent.
//! * Resets: a `ConnectionResetError` from `send` was not caught either; here
//!   any error ends that client only.
//! * A client that sends without reading could grow its list without bound:
//!   it is not read while `MAX_PENDING` bytes wait for it.
//! * The spin: with nothing to do, the lesson's loop asks every socket again
//!   at once and burns a whole core (`iomux bench` shows 99% of a core with
//!   100 idle clients). Here a pass that found nothing naps `IDLE_NAP`: at
//!   most ~1000 passes a second, at the price the lessons name, up to that
//!   much latency added. Still no readiness API: that is the select server.
//!
//! ```sh
//! cargo run --example busy_poll_server [ADDR]    # default 127.0.0.1:1688
//! ```

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use iomux::conn::Outbox;
use iomux::protocol::{Handler, Upper};

/// How long a pass that found nothing to do sleeps before the next.
const IDLE_NAP: Duration = Duration::from_millis(1);
/// A client whose pending replies reach this many bytes is not read.
const MAX_PENDING: usize = 256 * 1024;

struct Client {
    stream: TcpStream,
    /// Reply bytes the kernel has not taken yet: the lesson's `msgs`.
    pending: Outbox,
    /// The client closed its side: read no more.
    eof: bool,
}

fn main() -> io::Result<()> {
    let listener = common::listen()?;
    listener.set_nonblocking(true)?;
    let mut clients = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let mut busy = false;
        // `accept` says `WouldBlock` at once when nobody is waiting.
        while let Some(stream) = common::accept(&listener) {
            match stream.set_nonblocking(true) {
                Ok(()) => clients.push(Client {
                    stream,
                    pending: Outbox::new(),
                    eof: false,
                }),
                Err(e) => eprintln!("connection dropped: {e}"),
            }
            busy = true;
        }
        clients.retain_mut(|c| match poll_client(c, &mut buf) {
            Ok(moved) => {
                busy |= moved;
                // Finished once it closed and every reply is sent.
                !(c.eof && c.pending.pending() == 0)
            }
            Err(e) => {
                eprintln!("client dropped: {e}");
                false // dropping it closes the socket
            }
        });
        if !busy {
            std::thread::sleep(IDLE_NAP);
        }
    }
}

/// One try to read from `c` and one to send its pending replies; whether
/// any byte moved.
fn poll_client(c: &mut Client, buf: &mut [u8]) -> io::Result<bool> {
    let mut moved = false;
    if !c.eof && c.pending.pending() < MAX_PENDING {
        match c.stream.read(buf) {
            Ok(0) => {
                c.eof = true;
                moved = true;
            }
            Ok(n) => {
                let mut reply = Vec::with_capacity(n);
                Upper.on_data(&buf[..n], &mut reply);
                // Sent at once if nothing waits before it; the rest is kept.
                c.pending.offer(&reply, |b| try_write(&c.stream, b))?;
                moved = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    moved |= c.pending.flush(|b| try_write(&c.stream, b))? > 0;
    Ok(moved)
}

/// One non-blocking write: the bytes the kernel took, 0 if its buffer is full.
fn try_write(mut stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    match stream.write(bytes) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        res => res,
    }
}
