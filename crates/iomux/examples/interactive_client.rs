//! The interactive client: type a line, get it back upper-cased.
//!
//! From `seeds/000_74c4d99125a95c23.txt`, section "客户端" after the epoll
//! server (`q` quits, empty lines are skipped); every lesson has one like it.
//! It works with any of the servers here, or `iomux serve`. With stdin piped
//! it answers each line and exits at the end of the input:
//! `printf 'hello\n' | cargo run --example interactive_client` prints `HELLO`.
//!
//! Bugs fixed:
//! * One `recv(1024)` per line: a reply that arrives in two pieces (or is
//!   longer than 1024 bytes) is printed in part, and its rest is printed as
//!   the reply to the next line: the conversation falls out of step. The
//!   server answers byte for byte, so here the client reads exactly as many
//!   bytes as it sent.
//! * A server that closes makes `recv` return `b''` at once, forever: the
//!   lesson prints empty replies in a loop. Here the client says so and stops.
//! * The end of the input (Ctrl-D, or a pipe) raised `EOFError`; here it ends
//!   the session, and closing the socket tells the server.
//! * `send` may take only part of the line; `write_all` sends the rest.
//!
//! ```sh
//! cargo run --example interactive_client [ADDR]   # default 127.0.0.1:1688
//! ```

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::TcpStream;

fn main() -> io::Result<()> {
    let addr = std::env::args().nth(1);
    let mut server = TcpStream::connect(addr.as_deref().unwrap_or("127.0.0.1:1688"))?;
    let stdin = io::stdin();
    let prompt = stdin.is_terminal();
    let mut line = String::new();
    loop {
        if prompt {
            eprint!("msg: ");
        }
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(()); // end of input
        }
        let msg = line.trim_end_matches(['\r', '\n']);
        if msg == "q" {
            return Ok(());
        }
        if msg.is_empty() {
            continue;
        }
        server.write_all(msg.as_bytes())?;
        let mut reply = vec![0; msg.len()];
        match server.read_exact(&mut reply) {
            Ok(()) => println!("{}", String::from_utf8_lossy(&reply)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                eprintln!("the server closed the connection");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}
