//! `iomux client`: the lessons' client.
//!
//! * On a terminal it is interactive: it reads a line, sends it, and prints
//!   the reply (as many bytes as were sent: the built-in protocols answer
//!   byte for byte).
//! * With stdin piped it streams: one thread copies stdin to the socket and
//!   then shuts down the write side; the main thread copies the socket to
//!   stdout until the server closes. `printf 'hello\n' | iomux client` prints
//!   `HELLO` and exits.
//! * With `--repeat N` it is the bulk client: N sequential round trips of
//!   `--message`, each reply checked, then round trips per second.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use iomux::protocol::Protocol;

/// Flags of `iomux client`.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:1688")]
    pub addr: SocketAddr,
    /// Bulk mode: this many sequential round trips of --message.
    #[arg(long)]
    pub repeat: Option<u64>,
    /// The message of bulk mode.
    #[arg(long, default_value = "hello")]
    pub message: String,
    /// The protocol the server speaks, to check bulk replies against.
    #[arg(long, default_value = "upper")]
    pub protocol: Protocol,
}

/// Connects, turning "nothing is listening" into advice.
pub fn connect(addr: SocketAddr) -> Result<TcpStream> {
    match TcpStream::connect(addr) {
        Ok(s) => {
            s.set_nodelay(true)?;
            Ok(s)
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Err(anyhow!(
            "nothing is listening on {addr} (connection refused); start a server with `iomux serve --addr {addr}`"
        )),
        Err(e) => Err(e).with_context(|| format!("connecting to {addr}")),
    }
}

/// Reads exactly `n` bytes, or fewer if the server closes first.
fn read_reply(stream: &mut TcpStream, n: usize) -> io::Result<Vec<u8>> {
    let mut reply = Vec::with_capacity(n);
    stream.take(n as u64).read_to_end(&mut reply)?;
    Ok(reply)
}

fn interactive(mut stream: TcpStream) -> Result<()> {
    let stdin = io::stdin();
    let mut stdout = io::stdout();
    let addr = stream.peer_addr()?;
    eprintln!("connected to {addr}; type a line, Ctrl-D to quit");
    let mut line = String::new();
    loop {
        write!(stdout, "> ")?;
        stdout.flush()?;
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        stream.write_all(line.as_bytes())?;
        let reply = read_reply(&mut stream, line.len())?;
        stdout.write_all(&reply)?;
        if reply.len() < line.len() {
            eprintln!("\nthe server closed the connection");
            return Ok(());
        }
    }
    stream.shutdown(Shutdown::Write)?;
    // Whatever the server sends at EOF, then its close.
    io::copy(&mut stream, &mut stdout)?;
    Ok(())
}

fn piped(stream: TcpStream) -> Result<()> {
    let mut writer = stream.try_clone()?;
    let sender = std::thread::spawn(move || -> io::Result<u64> {
        let n = io::copy(&mut io::stdin().lock(), &mut writer)?;
        writer.shutdown(Shutdown::Write)?;
        Ok(n)
    });
    let mut reader = stream;
    let mut stdout = io::stdout().lock();
    let received = io::copy(&mut reader, &mut stdout)?;
    stdout.flush()?;
    let sent = sender
        .join()
        .map_err(|_| anyhow!("the stdin thread panicked"))?
        .context("sending stdin")?;
    if received < sent {
        bail!("the server closed after {received} of {sent} bytes");
    }
    Ok(())
}

fn bulk(mut stream: TcpStream, args: &ClientArgs, n: u64) -> Result<()> {
    let message = args.message.as_bytes();
    if message.is_empty() {
        bail!("--message must not be empty");
    }
    let expected = args.protocol.expected(message);
    let start = Instant::now();
    for i in 0..n {
        stream.write_all(message)?;
        let reply = read_reply(&mut stream, expected.len())?;
        if reply != expected {
            bail!(
                "round trip {} of {n}: expected {:?}, got {:?}",
                i + 1,
                String::from_utf8_lossy(&expected),
                String::from_utf8_lossy(&reply)
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{n} round trips in {secs:.3} s: {:.0} round trips/s",
        n as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Runs `iomux client`.
pub fn run(args: &ClientArgs) -> Result<()> {
    iomux::sys::ignore_sigpipe().context("ignoring SIGPIPE")?;
    let stream = connect(args.addr)?;
    match args.repeat {
        Some(0) => bail!("--repeat must be at least 1"),
        Some(n) => bulk(stream, args, n),
        None if io::stdin().is_terminal() => interactive(stream),
        None => piped(stream),
    }
}
