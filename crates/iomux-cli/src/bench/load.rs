//! The load generator: many client connections on one thread, driven by
//! iomux's own epoll selector, every reply byte checked.
//!
//! Each connection sends a stream of messages of `size` bytes, with up to
//! `depth` of them in flight. Message `k` of connection `c` is variant
//! `(k + c) % 26` of a set of mixed-case texts, so a lost, duplicated or
//! reordered byte shows up as a mismatch against the protocol's expected
//! reply for that variant. Latency is measured per message, from the moment
//! it is sent to the arrival of its last reply byte, and recorded in an HDR
//! histogram.
//!
//! Two load shapes:
//! * closed loop: every connection keeps `depth` messages in flight, so the
//!   server is driven as fast as it answers;
//! * paced (`rate`): `rate` messages per second in total, handed out to the
//!   connections in turn; a message that finds every connection at its
//!   depth is counted as `late` rather than silently skipped.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use iomux::protocol::Protocol;
use iomux::selector::{Events, Interest, Selector, Token};

/// What load to put on a server.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// The server.
    pub addr: SocketAddr,
    /// Connections to open.
    pub conns: usize,
    /// Bytes per message.
    pub size: usize,
    /// Messages in flight per connection.
    pub depth: usize,
    /// Time measured, after the warm-up.
    pub duration: Duration,
    /// Time run before measuring.
    pub warmup: Duration,
    /// Total messages per second, or `None` for a closed loop.
    pub rate: Option<f64>,
    /// The protocol the server speaks, to check replies.
    pub protocol: Protocol,
}

/// What the load generator saw in the measured window.
#[derive(Debug)]
pub struct LoadResult {
    /// Connections that were established.
    pub connected: usize,
    /// Round trips completed in the window.
    pub round_trips: u64,
    /// Reply bytes received in the window.
    pub bytes: u64,
    /// Length of the window.
    pub elapsed: Duration,
    /// Latency of each round trip in the window, in nanoseconds.
    pub latency_ns: Histogram<u64>,
    /// Paced messages that found every connection at its depth.
    pub late: u64,
    /// Errors: wrong bytes, early EOF, resets, connect failures, replies
    /// missing at the end. Each counted; the first few described.
    pub errors: u64,
    /// The first errors, in words.
    pub error_samples: Vec<String>,
}

/// Hooks the bench uses to sample the server at the edges of the window.
pub trait Probe {
    /// Called once when the measured window starts.
    fn window_start(&mut self);
    /// Called once when it ends, before the connections close.
    fn window_end(&mut self);
}

const VARIANTS: usize = 26;
/// Connections opened per loop turn while connecting, so a listen backlog
/// is never overrun by a burst.
const CONNECT_BATCH: usize = 64;
/// How long the end of a run waits for replies still in flight.
const DRAIN: Duration = Duration::from_secs(5);

struct Client {
    stream: TcpStream,
    /// Messages issued so far.
    sent_msgs: u64,
    /// Messages written in full; those between this and `sent_msgs` are the
    /// newest entries of `inflight`, still waiting for the socket.
    written_msgs: u64,
    /// Bytes of the first unwritten message already written.
    out_off: usize,
    /// Messages whose replies are not complete: (variant, due time).
    inflight: VecDeque<(usize, Instant)>,
    /// Bytes of the oldest in-flight reply received so far.
    in_off: usize,
    interest: Interest,
    failed: bool,
}

impl Client {
    fn unwritten(&self) -> usize {
        (self.sent_msgs - self.written_msgs) as usize
    }
}

struct Gen<'a> {
    spec: &'a LoadSpec,
    selector: Selector,
    clients: Vec<Client>,
    msgs: Vec<Vec<u8>>,
    replies: Vec<Vec<u8>>,
    buf: Vec<u8>,
    measuring: bool,
    sending: bool,
    result: LoadResult,
}

/// Runs `spec` against its server, calling `probe` at the window's edges.
///
/// # Errors
/// Setup failures only (no selector, no connection at all); per-connection
/// failures are counted in [`LoadResult::errors`].
pub fn run(spec: &LoadSpec, probe: &mut dyn Probe) -> io::Result<LoadResult> {
    let msgs: Vec<Vec<u8>> = (0..VARIANTS).map(|v| message(v, spec.size)).collect();
    let replies = msgs
        .iter()
        .map(|m| spec.protocol.expected(m))
        .collect::<Vec<_>>();
    if replies.iter().zip(&msgs).any(|(r, m)| r.len() != m.len()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the bench needs a protocol whose reply is as long as the request",
        ));
    }
    let mut g = Gen {
        spec,
        selector: Selector::default_backend()?,
        clients: Vec::with_capacity(spec.conns),
        msgs,
        replies,
        buf: vec![0; 256 * 1024],
        measuring: false,
        sending: true,
        result: LoadResult {
            connected: 0,
            round_trips: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            latency_ns: Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid bounds"),
            late: 0,
            errors: 0,
            error_samples: Vec::new(),
        },
    };
    g.connect_all()?;
    g.drive(probe)?;
    Ok(g.result)
}

/// Variant `v` of a message: mixed-case letters, digits and punctuation,
/// shifted by `v`, ending in a newline.
fn message(v: usize, size: usize) -> Vec<u8> {
    const TEXT: &[u8] = b"Hello, iomux world! the quick brown fox jumps over 13 lazy dogs; ";
    let mut m: Vec<u8> = (0..size).map(|i| TEXT[(i + v * 5) % TEXT.len()]).collect();
    if let Some(last) = m.last_mut() {
        *last = b'\n';
    }
    m
}

impl Gen<'_> {
    fn error(&mut self, what: String) {
        self.result.errors += 1;
        if self.result.error_samples.len() < 5 {
            self.result.error_samples.push(what);
        }
    }

    fn connect_all(&mut self) -> io::Result<()> {
        let mut last_err = None;
        for i in 0..self.spec.conns {
            match TcpStream::connect(self.spec.addr) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_nonblocking(true)?;
                    let token = Token(self.clients.len());
                    self.selector
                        .register(stream.as_raw_fd(), token, Interest::READABLE)?;
                    self.clients.push(Client {
                        stream,
                        sent_msgs: 0,
                        written_msgs: 0,
                        out_off: 0,
                        inflight: VecDeque::with_capacity(self.spec.depth),
                        in_off: 0,
                        interest: Interest::READABLE,
                        failed: false,
                    });
                }
                Err(e) => {
                    self.error(format!("connect #{i}: {e}"));
                    last_err = Some(e);
                }
            }
            if i % CONNECT_BATCH == CONNECT_BATCH - 1 {
                // Let the server drain its accept queue.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.result.connected = self.clients.len();
        match (self.clients.is_empty(), last_err) {
            (true, Some(e)) => Err(io::Error::new(
                e.kind(),
                format!("cannot connect to {}: {e}", self.spec.addr),
            )),
            _ => Ok(()),
        }
    }

    fn drive(&mut self, probe: &mut dyn Probe) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let start = Instant::now();
        let window_start = start + self.spec.warmup;
        let window_end = window_start + self.spec.duration;
        let mut drain_until = None;
        let mut issued: u64 = 0;
        let mut next_rr = 0usize;
        if self.spec.rate.is_none() {
            for c in 0..self.clients.len() {
                for _ in 0..self.spec.depth {
                    self.issue(c, start);
                }
            }
        }
        loop {
            let now = Instant::now();
            if !self.measuring && self.sending && now >= window_start {
                self.measuring = true;
                self.result.round_trips = 0;
                self.result.bytes = 0;
                self.result.latency_ns.reset();
                self.result.late = 0;
                probe.window_start();
            }
            if self.measuring && now >= window_end {
                self.measuring = false;
                self.sending = false;
                self.result.elapsed = now - window_start;
                probe.window_end();
                drain_until = Some(now + DRAIN);
            }
            if let Some(until) = drain_until {
                let left: usize = self.clients.iter().map(|c| c.inflight.len()).sum();
                if left == 0 || now >= until {
                    if left > 0 {
                        self.error(format!(
                            "{left} replies still missing {DRAIN:?} after the run"
                        ));
                    }
                    return Ok(());
                }
            }
            if let (Some(rate), true) = (self.spec.rate, self.sending) {
                let due = (now.duration_since(start).as_secs_f64() * rate) as u64;
                while issued < due {
                    // The loop wakes at least every millisecond, so a message
                    // may go out up to a tick after it was due; its latency
                    // starts when it is sent, so that the generator's own
                    // tick is not charged to the server.
                    if !self.issue_round_robin(&mut next_rr, Instant::now()) && self.measuring {
                        self.result.late += 1;
                    }
                    issued += 1;
                }
            }
            let timeout = if self.spec.rate.is_some() {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(50)
            };
            self.selector.select(&mut events, Some(timeout))?;
            for ev in events.iter() {
                let c = ev.token().0;
                if ev.is_writable() || ev.is_error() {
                    self.write(c);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.read(c);
                }
                self.update_interest(c);
            }
        }
    }

    /// Gives the next due message to the next connection with room.
    fn issue_round_robin(&mut self, next: &mut usize, due_at: Instant) -> bool {
        let n = self.clients.len();
        for _ in 0..n {
            let c = *next;
            *next = (*next + 1) % n;
            let cl = &self.clients[c];
            if !cl.failed && cl.inflight.len() < self.spec.depth && cl.unwritten() == 0 {
                self.issue(c, due_at);
                self.update_interest(c);
                return true;
            }
        }
        false
    }

    /// Starts the next message on connection `c`.
    fn issue(&mut self, c: usize, due_at: Instant) {
        let cl = &mut self.clients[c];
        if cl.failed {
            return;
        }
        let v = (cl.sent_msgs as usize + c) % VARIANTS;
        cl.sent_msgs += 1;
        cl.inflight.push_back((v, due_at));
        if cl.unwritten() == 1 {
            // Nothing ahead of it: write now. Otherwise it follows the
            // partial one when the socket is writable again.
            self.write(c);
        }
    }

    /// Writes unwritten messages until done or the socket is full.
    fn write(&mut self, c: usize) {
        let cl = &mut self.clients[c];
        let mut failure = None;
        while cl.unwritten() > 0 && !cl.failed {
            let v = cl.inflight[cl.inflight.len() - cl.unwritten()].0;
            let msg = &self.msgs[v];
            match iomux::sys::send(cl.stream.as_raw_fd(), &msg[cl.out_off..]) {
                Ok(n) => {
                    cl.out_off += n;
                    if cl.out_off == msg.len() {
                        cl.out_off = 0;
                        cl.written_msgs += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    cl.failed = true;
                    failure = Some(format!("send on connection {c}: {e}"));
                }
            }
        }
        if let Some(what) = failure {
            self.error(what);
        }
    }

    /// Reads once, checks every byte against the expected replies, records
    /// completed round trips and, in a closed loop, issues their successors.
    fn read(&mut self, c: usize) {
        let Gen {
            clients,
            buf,
            replies,
            result,
            ..
        } = self;
        let cl = &mut clients[c];
        if cl.failed {
            return;
        }
        let n = match iomux::sys::recv(cl.stream.as_raw_fd(), buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(e) => {
                cl.failed = true;
                return self.error(format!("recv on connection {c}: {e}"));
            }
        };
        if n == 0 {
            cl.failed = true;
            let left = cl.inflight.len();
            return self.error(format!(
                "connection {c} closed by the server with {left} replies missing"
            ));
        }
        let measuring = self.measuring;
        if measuring {
            result.bytes += n as u64;
        }
        let now = Instant::now();
        let mut got = &buf[..n];
        let mut completed = 0;
        let mut failure = None;
        while !got.is_empty() {
            let Some(&(v, due)) = cl.inflight.front() else {
                failure = Some(format!(
                    "connection {c}: {} bytes nobody asked for",
                    got.len()
                ));
                break;
            };
            let want = &replies[v][cl.in_off..];
            let take = want.len().min(got.len());
            if let Some(at) = (0..take).find(|&i| got[i] != want[i]) {
                failure = Some(format!(
                    "connection {c}: reply byte {} is {:?}, expected {:?}",
                    cl.in_off + at,
                    got[at] as char,
                    want[at] as char
                ));
                break;
            }
            cl.in_off += take;
            got = &got[take..];
            if cl.in_off == replies[v].len() {
                cl.in_off = 0;
                cl.inflight.pop_front();
                completed += 1;
                if measuring {
                    result.round_trips += 1;
                    let ns = now.saturating_duration_since(due).as_nanos() as u64;
                    result.latency_ns.saturating_record(ns.max(1_000));
                }
            }
        }
        if let Some(what) = failure {
            cl.failed = true;
            return self.error(what);
        }
        if self.spec.rate.is_none() && self.sending {
            // Closed loop: each reply frees a slot; fill it.
            for _ in 0..completed {
                self.issue(c, now);
            }
        }
    }

    fn update_interest(&mut self, c: usize) {
        let cl = &mut self.clients[c];
        let want = if cl.unwritten() > 0 {
            Interest::BOTH
        } else {
            Interest::READABLE
        };
        if want != cl.interest
            && !cl.failed
            && self
                .selector
                .reregister(cl.stream.as_raw_fd(), Token(c), want)
                .is_ok()
        {
            cl.interest = want;
        }
    }
}
