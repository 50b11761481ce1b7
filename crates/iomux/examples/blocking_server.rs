//! The blocking server: one client at a time, and every call waits.
//!
//! From `seeds/004_6a1d07252f018853.txt`, section 二 "阻塞IO (blocking IO)":
//! the server that accepts a client, then receives and sends for it until it
//! leaves, and only then accepts the next. A read has two phases, waiting for
//! data and copying it; here the one thread sits in `read` for both, so a
//! second client completes its handshake in the kernel and then waits,
//! unanswered, until the first one leaves.
//!
//! Bug fixed: the lesson's inner loop only ends on an exception, but a client
//! that closes makes `recv` return `b''`, which raises nothing. The loop then
//! sends `b''` and receives again, forever, at 100% of a core, and never
//! accepts anyone else. Here a read of 0 bytes ends the conversation. And
//! `send` may take only part of a reply: `write_all` sends the rest.
//!
//! ```sh
//! cargo run --example blocking_server [ADDR]     # default 127.0.0.1:1688
//! cargo run --example interactive_client         # in another terminal
//! ```

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;

use iomux::protocol::{Action, Handler, Upper};

fn main() -> io::Result<()> {
    let listener = common::listen()?;
    loop {
        // Waits here until a client connects.
        let Some(stream) = common::accept(&listener) else {
            continue;
        };
        eprintln!("a client connected");
        match converse(stream, &mut Upper) {
            Ok(()) => eprintln!("the client left"),
            // A reset ends this client only, never the server.
            Err(e) => eprintln!("the client is gone: {e}"),
        }
    }
}

/// Serves one client until it closes; dropping `stream` closes the socket.
fn converse(mut stream: TcpStream, handler: &mut impl Handler) -> io::Result<()> {
    let mut buf = [0; 4096];
    let mut reply = Vec::new();
    loop {
        reply.clear();
        let n = stream.read(&mut buf)?;
        if n == 0 {
            // EOF: the client closed its side. Send the handler's last
            // words (none for upper) and stop.
            handler.on_eof(&mut reply);
            return stream.write_all(&reply);
        }
        let action = handler.on_data(&buf[..n], &mut reply);
        stream.write_all(&reply)?;
        if action == Action::Close {
            return Ok(());
        }
    }
}
