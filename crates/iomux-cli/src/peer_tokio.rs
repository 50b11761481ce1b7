//! The tokio peer: what a Rust user would write instead of iomux.
//!
//! A `current_thread` runtime (one thread, like our readiness loops), a
//! `TcpListener`, and a task per connection that reads, hands the bytes to
//! the same sans-IO [`Handler`] the iomux models serve, and writes the reply
//! with `write_all`. The bench runs it exactly like a model (child process,
//! pinned, control channel on stdin) so every model also shows as a ratio to
//! it. It counts what it can (accepted, closed, bytes); syscall counters stay
//! zero, since tokio does not expose them.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Args;
use iomux::protocol::{Action, Handler, Protocol};
use iomux::server::{Counters, ServerCounters, Stop};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Flags of `iomux peer-tokio`.
#[derive(Args, Debug, Clone)]
pub struct PeerArgs {
    /// Address to bind; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:1688")]
    pub addr: SocketAddr,
    /// Protocol to speak.
    #[arg(long, default_value = "upper")]
    pub protocol: Protocol,
    /// Pin the server to this CPU.
    #[arg(long)]
    pub pin_cpu: Option<usize>,
    /// Answer `stats` lines on stdin; stop when stdin closes.
    #[arg(long)]
    pub control: bool,
}

/// Runs the peer until stopped (stdin closed with `--control`, or forever).
pub fn run(args: &PeerArgs) -> Result<()> {
    if let Some(cpu) = args.pin_cpu {
        iomux::sys::pin_to_cpus(&[cpu]).with_context(|| format!("pinning to CPU {cpu}"))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("building the tokio runtime")?;
    let all = ServerCounters::new(1);
    let counters = all.loops()[0].clone();
    let stop = Stop::new()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("binding {}", args.addr))?;
        println!(
            "iomux: serving {} with peer tokio on {}",
            args.protocol,
            listener.local_addr()?
        );
        if args.control {
            let (c, s) = (all.clone(), stop.clone());
            std::thread::spawn(move || crate::control::run(c, s));
        }
        let (tx, mut stopped) = tokio::sync::mpsc::channel::<()>(1);
        {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // Wait for the stop pipe without polling a flag.
                let _ = stop.wait_readable(stop.fd());
                let _ = tx.blocking_send(());
            });
        }
        loop {
            tokio::select! {
                _ = stopped.recv() => return Ok(()),
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else {
                        // EMFILE and the like: back off instead of spinning.
                        Counters::add(&counters.accept_errors, 1);
                        tokio::time::sleep(iomux::server::ACCEPT_BACKOFF).await;
                        continue;
                    };
                    Counters::add(&counters.accepted, 1);
                    let _ = stream.set_nodelay(true);
                    let counters = counters.clone();
                    let handler = args.protocol.handler();
                    tokio::spawn(async move {
                        let _ = serve_conn(stream, handler, &counters).await;
                        Counters::add(&counters.closed, 1);
                    });
                }
            }
        }
    })
}

async fn serve_conn(
    mut stream: tokio::net::TcpStream,
    mut handler: impl Handler,
    counters: &Counters,
) -> std::io::Result<()> {
    // A per-task buffer, as tokio's own echo example has (it uses 1 KiB).
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    loop {
        let n = stream.read(&mut buf).await?;
        out.clear();
        if n == 0 {
            handler.on_eof(&mut out);
            stream.write_all(&out).await?;
            return Ok(());
        }
        Counters::add(&counters.bytes_in, n as u64);
        let action = handler.on_data(&buf[..n], &mut out);
        stream.write_all(&out).await?;
        Counters::add(&counters.bytes_out, out.len() as u64);
        if action == Action::Close {
            return Ok(());
        }
    }
}
