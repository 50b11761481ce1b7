//! A fixed pool of worker threads: the seeds' second remedy.
//!
//! [`Config::workers`] threads are created at start. The acceptor thread
//! waits for the listener (and the [`Stop`]), accepts, and puts each
//! connection on a bounded queue; a free worker takes it and serves it with
//! blocking calls until the client closes, then takes the next. Workers are
//! still blocked in **both** phases of a read, waiting for data and copying
//! it, exactly as in the threaded model: a pool changes how many threads
//! there are, not how they wait.
//!
//! Costs: no thread creation per connection, a fixed number of stacks and
//! read buffers, whatever the load. Limits, the lessons' warning about
//! pools: a pool always has a ceiling. A worker is held by its client for
//! the client's whole life, idle or not, so once every worker is held by an
//! idle client, new clients are accepted but get no answer until a worker
//! frees up: they wait in the queue. The queue holds at most
//! [`Config::max_conns`] connections beyond the ones being served; past
//! that a new connection is accepted and closed at once (counted in
//! `refused`), and the acceptor never blocks on a full queue.
//!
//! On stop the acceptor closes the listener and the queue's sending side,
//! and returns without waiting: the detached workers serve their current
//! connections and whatever was already queued, then exit.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};

use super::blocking::{accept, serve_conn};
use super::threaded::STACK_SIZE;
use super::{Acceptor, Config, Counters, Stop};
use crate::protocol::{Factory, Handler};

/// The queue's receiving side, shared by the workers: one of them at a time
/// waits on it, the others wait for the lock. Each connection comes with
/// the handler the acceptor made for it.
type Queue<H> = Arc<Mutex<Receiver<(TcpStream, H)>>>;

pub(super) fn serve<F: Factory>(
    listener: TcpListener,
    config: &Config,
    stop: &Stop,
    counters: &Arc<Counters>,
    factory: F,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let (queue, rx) = mpsc::sync_channel(config.max_conns);
    start_workers(&Arc::new(Mutex::new(rx)), config, counters)?;
    let mut acceptor = Acceptor::new(config)?;
    // The queue bounds what waits: `enqueue` refuses when it is full.
    while let Some(stream) = accept(&listener, stop, counters, &mut acceptor, || 0)? {
        enqueue(&queue, (stream, factory.new_handler()), counters)?;
    }
    Ok(())
}

/// Starts the `workers` threads. If one cannot be created, the ones already
/// started exit (the sending side is dropped by the caller) and the error is
/// returned: a pool without its workers cannot serve.
fn start_workers<H: Handler>(
    queue: &Queue<H>,
    config: &Config,
    counters: &Arc<Counters>,
) -> io::Result<()> {
    for i in 0..config.workers {
        let (queue, config, counters) = (Arc::clone(queue), *config, Arc::clone(counters));
        std::thread::Builder::new()
            .name(format!("iomux-pool-{i}"))
            .stack_size(STACK_SIZE)
            .spawn(move || work(&queue, &config, &counters))?;
    }
    Ok(())
}

/// A worker: serves queued connections one after the other until the queue
/// is closed and empty.
fn work<H: Handler>(queue: &Queue<H>, config: &Config, counters: &Counters) {
    let mut buf = vec![0; config.read_chunk];
    loop {
        // The lock is held only while waiting, released before serving.
        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok((stream, handler)) = next else {
            return;
        };
        serve_conn(stream, handler, config.max_output, counters, &mut buf);
        Counters::add(&counters.closed, 1);
    }
}

/// Queues an accepted connection, or closes it at once if the queue is full.
///
/// # Errors
/// Every worker is gone (only a panic in one ends it while the queue is
/// open): the pool cannot serve any more.
fn enqueue<H>(
    queue: &SyncSender<(TcpStream, H)>,
    conn: (TcpStream, H),
    counters: &Counters,
) -> io::Result<()> {
    match queue.try_send(conn) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(stream)) => {
            drop(stream);
            Counters::add(&counters.refused, 1);
            Ok(())
        }
        Err(TrySendError::Disconnected(stream)) => {
            drop(stream);
            Counters::add(&counters.refused, 1);
            Err(io::Error::other("every pool worker has exited"))
        }
    }
}
