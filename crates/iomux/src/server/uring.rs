//! The completion model: io_uring (see [`crate::uring`] for the features it
//! uses and the kernels that bring them).
//!
//! One thread, one ring. Accept, recv and send are submissions; the loop's
//! only system call on the data path is `io_uring_enter`: each turn one
//! enter hands the kernel every submission queued since the last turn
//! (replies, re-armed recvs, cancels) and waits for a completion, and a
//! second one is needed only when the first returned at once with the
//! completions of its own sends. Completions drive each connection:
//!
//! * the listener has one multishot accept armed (one accept per
//!   connection on kernels before 5.19); an accept error other than
//!   `ECONNABORTED` stops accepting and arms a timeout of
//!   [`ACCEPT_BACKOFF`], so `EMFILE` cannot make the loop spin (the
//!   kernel's accept takes the fd first, so out of fds it fails even with
//!   nobody waiting); before the pause, [`FdExhaustion::ReserveFd`] turns
//!   the waiting clients away and [`FdExhaustion::Shed`] closes as many
//!   idle connections as clients wait (at most [`SHED_BATCH`]);
//! * every connection has a recv armed that takes a buffer from the shared
//!   provided-buffer ring only when data arrives (an idle connection holds
//!   no buffer): multishot (one per message before 6.0) while its output is
//!   below half of [`Config::max_output`], single-shot above that, none at
//!   the bound;
//! * received bytes go straight from the kernel's buffer to the
//!   connection's [`Core`] (the same core as every non-blocking model):
//!   the handler's reply is queued there and sent with one send
//!   submission; bytes produced while a send is in flight wait and go in
//!   the next one. The bytes of the send in flight count against the
//!   bound;
//! * bytes a recv delivers once the output is full (a multishot recv in
//!   flight when the bound was crossed) are parked by the core,
//!   unprocessed, and fed to the handler as output drains: the handler
//!   never runs with the bound exceeded, and the peer's EOF reaches it
//!   after them;
//! * a connection is freed, and its fd closed, only once none of its
//!   operations is in flight (closing cancels them and waits for their
//!   completions), since the kernel may use their buffers until then;
//! * stopping is a completion too: a poll on the [`Stop`] fd. The loop then
//!   drains as the readiness models do: no more accepts, no more input
//!   handled, the output produced sent, and each connection closed once
//!   nothing can be lost (its output acknowledged, no input unread; a
//!   lingering close otherwise, checked every [`LINGER_CHECK`]), until
//!   [`Config::drain_timeout`]. Then it cancels every operation left and
//!   drains the ring before it frees anything.
//!
//! With [`Config::uring_batch_wait`] each wait lasts that long unless
//! 1,024 completions come first (`IORING_FEAT_MIN_TIMEOUT`, Linux 6.12):
//! fewer, bigger batches per wake-up, for that much more latency.
//! With [`Config::latency_budget`] the minimum wait is instead the delay
//! the budget's policy ([`crate::budget`]) picks after each turn: none
//! under light load, more as load grows.
//!
//! Counters: `recv_calls` and `send_calls` count recv and send
//! *submissions* (a multishot recv counts once however many messages it
//! delivers); `wait_calls` counts every `io_uring_enter`, the loop's only
//! syscall on the data path.

use std::io;
use std::mem;
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

use super::readiness::Slab;
use super::{
    is_peer_gone, Accepted, Acceptor, Config, Counters, FdExhaustion, Stop, ACCEPT_BACKOFF,
};
use crate::budget::LatencyBudget;
use crate::conn::{close_now, Core, Linger, Phase};
use crate::protocol::{CloseReason, Factory, Handler};
use crate::push::Pusher;
use crate::uring::ring::{build_ring, BufRing};
use crate::uring::Features;

/// Most connections shed per accept pause: their fds close only once
/// their cancelled recvs complete, so the loop cannot shed one and retry at
/// once as the readiness loop does.
const SHED_BATCH: u32 = 64;
/// Submission queue slots (completion queue: four times as many).
const SQ_ENTRIES: u32 = 1024;
/// Buffers in the provided-buffer ring, shared by every connection.
const BUFFERS: u16 = 256;
/// Largest buffer of the ring; `Config::read_chunk` if smaller.
const MAX_BUFFER: usize = 16 * 1024;
/// The ring's buffer group id.
const BGID: u16 = 0;
/// Buffer sets kept for reuse, and the largest buffer kept in one.
const SPARE_BUFFERS: usize = 64;
const SPARE_MAX: usize = 16 * 1024;
/// With [`Config::uring_batch_wait`]: how many completions end a wait
/// before its time is up.
const BATCH_WANT: usize = 1024;
/// With [`Config::uring_batch_wait`]: the overall timeout of a wait.
const BATCH_IDLE: Duration = Duration::from_secs(1);
/// How often lingering connections are checked for nothing left to lose
/// (no completion tells when the peer's acknowledgement arrives).
const LINGER_CHECK: Duration = Duration::from_millis(5);
/// How long stopping waits for cancelled operations to complete.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// What a completion is for: the top byte of its user data.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Op {
    Accept = 1,
    Stop = 2,
    Timer = 3,
    /// The lingering connections' check ([`LINGER_CHECK`]).
    Linger = 7,
    /// A poll on the eventfd that pushes write to ([`crate::push`]).
    Push = 8,
    Cancel = 4,
    Recv = 5,
    Send = 6,
}

/// User data: op in bits 56..64, the slot's generation in 32..56, its key
/// in 0..32. The generation makes a cancel name exactly one operation even
/// after the key is reused.
fn user_data(op: Op, gen: u32, key: usize) -> u64 {
    ((op as u64) << 56) | (u64::from(gen & 0xff_ffff) << 32) | (key as u64 & 0xffff_ffff)
}

fn decode(ud: u64) -> (u64, u32, usize) {
    (
        ud >> 56,
        ((ud >> 32) & 0xff_ffff) as u32,
        (ud & 0xffff_ffff) as usize,
    )
}

/// The buffer of a send in flight, `buf[sent..]` unsent.
#[derive(Default)]
struct Sending {
    buf: Vec<u8>,
    sent: usize,
}

impl Sending {
    fn done(&self) -> bool {
        self.sent >= self.buf.len()
    }
}

/// Emptied send buffers kept for reuse. Boxed on purpose: a connection
/// holds one only while it sends, through one pointer.
#[allow(clippy::vec_box)]
type Spare = Vec<Box<Sending>>;

struct Slot<H> {
    stream: TcpStream,
    /// The connection core: handler, phase, parked input, bounded output.
    core: Core<H>,
    gen: u32,
    /// The buffer of the send in flight. Never touched, moved out or freed
    /// while the send is in flight; `None` while no send is.
    sending: Option<Box<Sending>>,
    recv_armed: bool,
    /// The armed recv is multishot (it stays armed until cancelled).
    recv_multishot: bool,
    recv_cancelled: bool,
    send_inflight: bool,
    send_cancelled: bool,
    /// Closing, and why: waiting for in-flight operations, then freed
    /// (the handler hears the reason then).
    dead: Option<CloseReason>,
    /// The loop's turn when a byte last moved either way: picks the
    /// connection idle longest under [`FdExhaustion::Shed`].
    last_active: u64,
    /// A lingering close, for this reason, until this deadline: the FIN is
    /// sent, whatever the peer still sends is dropped, and the connection
    /// ends at its EOF or once nothing can be lost.
    lingering: Option<Box<Linger>>,
    /// The pushers' side, for a handler that pushes.
    push: Option<Pusher>,
}

/// Gives an emptied send buffer back for reuse.
fn give_back(spare: &mut Spare, sending: Option<Box<Sending>>) {
    let Some(mut s) = sending else { return };
    if spare.len() < SPARE_BUFFERS && s.buf.capacity() <= SPARE_MAX {
        s.buf.clear();
        s.sent = 0;
        spare.push(s);
    }
}

/// Completion drivers queue replies: nothing is sent from inside the core.
fn queue_only(_: &[u8]) -> io::Result<usize> {
    Ok(0)
}

struct Loop<'a, F: Factory> {
    config: &'a Config,
    factory: F,
    counters: &'a Counters,
    features: Features,
    ring: IoUring,
    /// `None` once released or leaked at shutdown.
    bufs: Option<BufRing>,
    listener: TcpListener,
    stop_fd: i32,
    conns: Slab<Slot<F::Handler>>,
    next_gen: u32,
    accept_armed: bool,
    accept_cancelled: bool,
    /// An accept error asked for a pause; the timer re-arms accept.
    accept_backoff: bool,
    timer_armed: bool,
    /// The back-off timeout's duration; the kernel reads it at submission.
    backoff: Timespec,
    stopping: bool,
    /// Draining since the stop, until this deadline.
    draining: Option<Instant>,
    /// The linger check's timeout is armed.
    linger_armed: bool,
    /// [`LINGER_CHECK`] for the kernel.
    linger_ts: Timespec,
    /// For handlers that push: the eventfd a push writes to wake the loop,
    /// and the connections (key, generation) that have pushed since.
    push_fd: Option<Arc<OwnedFd>>,
    pushed: Arc<Mutex<Vec<(usize, u32)>>>,
    push_armed: bool,
    completions: Vec<cqueue::Entry>,
    spare: Spare,
    /// The handlers' replies are built here, then queued in the core.
    scratch: Vec<u8>,
    acceptor: Acceptor,
    /// Turns of the loop so far: the clock of `Slot::last_active`, which
    /// costs no syscall.
    turn: u64,
    /// [`Config::uring_batch_wait`] in microseconds.
    batch_wait: Option<u32>,
    /// [`BATCH_IDLE`] for the kernel.
    batch_idle: Timespec,
    /// [`Config::latency_budget`]'s policy: its delay is the minimum wait.
    budget: Option<LatencyBudget>,
}

pub(super) fn serve<F: Factory>(
    listener: TcpListener,
    config: &Config,
    stop: &Stop,
    counters: &Arc<Counters>,
    factory: F,
) -> io::Result<()> {
    let probe = crate::uring::probe()?;
    serve_with(probe.features, listener, config, stop, counters, factory)
}

/// [`serve`] with the features given rather than probed: the tests turn
/// multishot off to run the older kernels' path.
pub(super) fn serve_with<F: Factory>(
    features: Features,
    listener: TcpListener,
    config: &Config,
    stop: &Stop,
    counters: &Counters,
    factory: F,
) -> io::Result<()> {
    if config.uring_batch_wait.is_some() && !features.min_timeout {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "--uring-batch-wait needs IORING_FEAT_MIN_TIMEOUT (Linux 6.12), which this kernel lacks; leave it off",
        ));
    }
    if config.latency_budget.is_some() && !features.min_timeout {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "--latency-budget on uring needs IORING_FEAT_MIN_TIMEOUT (Linux 6.12), which this kernel lacks; use it with epoll",
        ));
    }
    let batch_wait = config
        .uring_batch_wait
        .map(|d| u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1));
    let (ring, _, _) = build_ring(SQ_ENTRIES)?;
    let size = config.read_chunk.clamp(1, MAX_BUFFER) as u32;
    let bufs = BufRing::new(&ring, BUFFERS, size, BGID)?;
    let mut lp = Loop {
        config,
        factory,
        counters,
        features,
        ring,
        bufs: Some(bufs),
        listener,
        stop_fd: stop.fd(),
        conns: Slab::default(),
        next_gen: 0,
        accept_armed: false,
        accept_cancelled: false,
        accept_backoff: false,
        timer_armed: false,
        backoff: Timespec::new()
            .sec(ACCEPT_BACKOFF.as_secs())
            .nsec(ACCEPT_BACKOFF.subsec_nanos()),
        stopping: false,
        draining: None,
        linger_armed: false,
        linger_ts: Timespec::new().nsec(LINGER_CHECK.subsec_nanos()),
        push_fd: None,
        pushed: Arc::default(),
        push_armed: false,
        completions: Vec::with_capacity(1024),
        spare: Vec::new(),
        scratch: Vec::with_capacity(MAX_BUFFER),
        acceptor: Acceptor::new(config)?,
        turn: 0,
        batch_wait,
        batch_idle: Timespec::new().sec(BATCH_IDLE.as_secs()),
        budget: config.latency_budget.map(LatencyBudget::new),
    };
    lp.run()
}

impl<F: Factory> Loop<'_, F> {
    /// The loop: one `io_uring_enter` per turn, then every completion.
    fn run(&mut self) -> io::Result<()> {
        let poll = opcode::PollAdd::new(Fd(self.stop_fd), libc::POLLIN as u32)
            .build()
            .user_data(user_data(Op::Stop, 0, 0));
        // SAFETY: a poll references no memory of ours.
        unsafe { self.push(&poll)? };
        if F::Handler::PUSH {
            self.push_fd = Some(Arc::new(crate::sys::eventfd()?));
            self.arm_push_poll()?;
        }
        self.arm_accept()?;
        while !self.stopping {
            if let Some(b) = &self.bufs {
                b.publish();
            }
            self.enter(1)?;
            let woke = self.budget.is_some().then(Instant::now);
            self.turn += 1;
            let n = self.reap()?;
            if let (Some(budget), Some(woke)) = (&mut self.budget, woke) {
                budget.record(n, woke, Instant::now());
            }
            if let Some(deadline) = self.draining {
                // Drained: every connection ended; or out of time.
                self.stopping = self.conns.len() == 0 || Instant::now() >= deadline;
            }
        }
        self.shutdown()
    }

    /// Queues `entry`, submitting first if the queue is full.
    ///
    /// # Safety
    /// Every buffer `entry` points to must stay valid, and unmoved, until
    /// its completion has been reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller vouches for the entry's buffers.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.enter(0)?;
        }
    }

    /// One `io_uring_enter`: submits what is queued, waits for `want`
    /// completions.
    ///
    /// The loop waits for one completion. A send that fits the socket
    /// buffer completes during the enter that submits it, so a busy turn
    /// often takes two enters: one that submits and returns with those
    /// completions, one that sleeps. Asking for one more completion than
    /// the sends submitted saves that enter but needs a timeout (a send to
    /// a full socket does not complete at once, and the others must not
    /// wait for it); on the VM this was measured on, arming that timer on
    /// every wait cost more CPU than the enter it saved (see the README).
    ///
    /// With [`Config::uring_batch_wait`], a wait for one completion instead
    /// waits for [`BATCH_WANT`] with the kernel's minimum timeout: it
    /// returns when that many are in, or once the batch time is up and at
    /// least one is (whichever comes first), so one wake-up handles a
    /// bigger batch. With [`Config::latency_budget`] the batch time is the
    /// delay its policy chose (none under light load).
    fn enter(&mut self, want: usize) -> io::Result<()> {
        Counters::add(&self.counters.wait_calls, 1);
        let budget = self.budget.as_ref().map(|b| b.delay().as_micros() as u32);
        if let (1, Some(usec @ 1..)) = (want, self.batch_wait.or(budget)) {
            // Wait up to the batch time for BATCH_WANT completions, then
            // for the first one if none came. The kernel needs an overall
            // timeout for that second part, or it ends the wait when the
            // batch time is up even with nothing in (an idle loop would
            // then wake every batch time); a long one costs an idle loop
            // one wake-up per BATCH_IDLE.
            let args = SubmitArgs::new()
                .min_wait_usec(usec)
                .timespec(&self.batch_idle);
            return settled(self.ring.submitter().submit_with_args(BATCH_WANT, &args));
        }
        settled(self.ring.submit_and_wait(want))
    }

    /// Handles every completion in; returns how many brought work from
    /// peers (recvs and accepts). The latency budget counts those alone: a
    /// send's completion is the loop's own doing, and counting it would
    /// let a delay breed the batches that keep it up (a lone closed-loop
    /// client's next message lands while the loop waits after the reply).
    fn reap(&mut self) -> io::Result<usize> {
        let mut batch = mem::take(&mut self.completions);
        batch.extend(self.ring.completion());
        let mut n = 0;
        for cqe in &batch {
            let ud = cqe.user_data();
            let (op, _, _) = decode(ud);
            n += usize::from(op == Op::Recv as u64 || op == Op::Accept as u64);
            self.complete(ud, cqe.result(), cqe.flags())?;
        }
        batch.clear();
        self.completions = batch;
        Ok(n)
    }

    fn complete(&mut self, ud: u64, res: i32, flags: u32) -> io::Result<()> {
        let (op, gen, key) = decode(ud);
        match op {
            x if x == Op::Accept as u64 => self.on_accept(res, flags),
            x if x == Op::Stop as u64 => self.begin_drain(),
            x if x == Op::Push as u64 => {
                self.push_armed = false;
                self.take_pushed()
            }
            x if x == Op::Linger as u64 => {
                self.linger_armed = false;
                self.check_lingering()
            }
            x if x == Op::Timer as u64 => {
                self.timer_armed = false;
                self.accept_backoff = false;
                if !self.stopping && self.draining.is_none() && !self.accept_armed {
                    self.arm_accept()?;
                }
                Ok(())
            }
            x if x == Op::Recv as u64 => self.on_recv(key, gen, res, flags),
            x if x == Op::Send as u64 => self.on_send(key, gen, res),
            _ => Ok(()), // cancels: their targets complete on their own
        }
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        let fd = Fd(self.listener.as_raw_fd());
        let entry = if self.features.multishot_accept {
            opcode::AcceptMulti::new(fd)
                .flags(libc::SOCK_CLOEXEC)
                .build()
        } else {
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        }
        .user_data(user_data(Op::Accept, 0, 0));
        // SAFETY: null address pointers: the accept writes no memory of ours.
        unsafe { self.push(&entry)? };
        self.accept_armed = true;
        self.accept_cancelled = false;
        Ok(())
    }

    fn cancel(&mut self, target: u64) -> io::Result<()> {
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data(Op::Cancel, 0, 0));
        // SAFETY: a cancel references no memory of ours.
        unsafe { self.push(&entry) }
    }

    fn on_accept(&mut self, res: i32, flags: u32) -> io::Result<()> {
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if res >= 0 {
            // SAFETY: the completion hands us a new connected socket fd
            // that nothing else owns.
            let stream = unsafe { TcpStream::from_raw_fd(res) };
            // Stopping: over the limit too (closed, counted in `refused`).
            let live = if self.stopping || self.draining.is_some() {
                usize::MAX
            } else {
                self.conns.len()
            };
            if let Some(stream) = self.acceptor.admit(stream, live, self.counters) {
                self.next_gen = self.next_gen.wrapping_add(1);
                let mut handler = self.factory.new_handler();
                let push = match &self.push_fd {
                    Some(fd) => {
                        let (fd, list) = (fd.clone(), self.pushed.clone());
                        let (key, gen) = (self.conns.vacant_key(), self.next_gen);
                        let (pusher, push) = Pusher::new(self.config.max_output, move || {
                            let mut list = list.lock().unwrap_or_else(PoisonError::into_inner);
                            list.push((key, gen));
                            if list.len() == 1 {
                                let _ = crate::sys::write(&*fd, &1u64.to_ne_bytes());
                            }
                        });
                        handler.attach(push);
                        Some(pusher)
                    }
                    None => None,
                };
                let mut core = Core::new(handler);
                let greeted = core.open(&mut self.scratch, self.counters, queue_only);
                debug_assert!(greeted.is_ok(), "queueing cannot fail");
                let key = self.conns.insert(Slot {
                    stream,
                    core,
                    gen: self.next_gen,
                    sending: None,
                    recv_armed: false,
                    recv_multishot: false,
                    recv_cancelled: false,
                    send_inflight: false,
                    send_cancelled: false,
                    dead: None,
                    last_active: self.turn,
                    lingering: None,
                    push,
                });
                self.pump(key)?;
            }
        } else if !matches!(-res, libc::ECANCELED | libc::EAGAIN | libc::EINTR) {
            let e = io::Error::from_raw_os_error(-res);
            let lfd = self.listener.as_raw_fd();
            match self.acceptor.failed(e, lfd, self.counters) {
                Accepted::Again | Accepted::Conn(_) => {}
                // Out of fds (the waiting clients maybe turned away first):
                // the kernel's accept takes the fd before it looks for a
                // connection, so it fails at once even with nobody waiting,
                // and a re-armed accept would spin: always pause.
                Accepted::Empty | Accepted::TurnedAway | Accepted::Exhausted(_) => {
                    let exhausted =
                        crate::sys::is_resource_exhaustion(&io::Error::from_raw_os_error(-res));
                    if self.acceptor.policy() == FdExhaustion::Shed && exhausted {
                        // Room for every client waiting (victims close
                        // within the pause, once their recvs are
                        // cancelled), at most SHED_BATCH per pause.
                        let waiting = crate::sys::accept_queue_len(lfd).unwrap_or(1);
                        for _ in 0..waiting.clamp(1, SHED_BATCH) {
                            if !self.shed_idle()? {
                                break;
                            }
                        }
                    }
                    self.accept_backoff = true;
                    if self.accept_armed && !self.accept_cancelled {
                        self.accept_cancelled = true;
                        self.cancel(user_data(Op::Accept, 0, 0))?;
                    }
                }
            }
        }
        self.rearm_accept()
    }

    /// [`FdExhaustion::Shed`]: closes the connection idle longest that has
    /// nothing pending in either direction (no output unsent or in flight,
    /// no input parked, no EOF to hand on), counted in `idle_closed`. Its
    /// fd closes once its recv is cancelled. `false` if none qualifies.
    fn shed_idle(&mut self) -> io::Result<bool> {
        let mut victim: Option<(u64, usize)> = None;
        for key in 0..self.conns.capacity() {
            let Some(slot) = self.conns.get_mut(key) else {
                continue;
            };
            let busy = slot.dead.is_some()
                || slot.core.phase() != Phase::Open
                || slot.send_inflight
                || slot.core.pending() > 0
                || slot.core.parked() > 0;
            if !busy && victim.is_none_or(|(t, _)| slot.last_active < t) {
                victim = Some((slot.last_active, key));
            }
        }
        let Some((_, key)) = victim else {
            return Ok(false);
        };
        Counters::add(&self.counters.idle_closed, 1);
        self.conns.get_mut(key).expect("victim present").dead = Some(CloseReason::Shed);
        self.pump(key)?;
        Ok(true)
    }

    /// Arms accept again if it ended, or the back-off timer if paused.
    fn rearm_accept(&mut self) -> io::Result<()> {
        if !self.accept_armed && !self.stopping && self.draining.is_none() {
            if !self.accept_backoff {
                self.arm_accept()?;
            } else if !self.timer_armed {
                let entry = opcode::Timeout::new(&self.backoff)
                    .build()
                    .user_data(user_data(Op::Timer, 0, 0));
                // SAFETY: the timespec lives in `self` for the whole loop
                // (the kernel copies it at submission anyway).
                unsafe { self.push(&entry)? };
                self.timer_armed = true;
            }
        }
        Ok(())
    }

    fn on_recv(&mut self, key: usize, gen: u32, res: i32, flags: u32) -> io::Result<()> {
        let max_output = self.config.max_output;
        let Loop {
            conns,
            bufs,
            counters,
            scratch,
            ..
        } = self;
        let Some(slot) = conns.get_mut(key).filter(|s| s.gen == gen) else {
            debug_assert!(false, "recv completion for a freed slot");
            return Ok(());
        };
        if !cqueue::more(flags) {
            slot.recv_armed = false;
        }
        if res > 0 {
            let bufs = bufs.as_mut().expect("buffer ring lives while serving");
            let bid = cqueue::buffer_select(flags).expect("a recv with data names its buffer");
            let n = res as usize;
            slot.last_active = self.turn;
            Counters::add(&counters.bytes_in, n as u64);
            if slot.dead.is_none() && slot.lingering.is_none() {
                // Handled now, or parked if the output is full: the core
                // never runs the handler past the bound.
                let data = bufs.data(bid, n);
                slot.core
                    .input(data, max_output, scratch, counters, queue_only)?;
            }
            bufs.recycle(bid);
        } else if res == 0 {
            if let Some(reason) = slot.lingering.as_deref().map(|l| l.reason) {
                slot.dead.get_or_insert(reason);
            } else if slot.dead.is_none() {
                slot.core.eof(scratch, counters, queue_only)?;
            }
        } else {
            match -res {
                // The ring ran out of buffers, or we cancelled: pump re-arms
                // if reading is still wanted.
                libc::ENOBUFS | libc::ECANCELED | libc::EINTR | libc::EAGAIN => {}
                errno => {
                    let e = io::Error::from_raw_os_error(errno);
                    if slot.dead.is_none() && is_peer_gone(&e) {
                        Counters::add(&counters.resets, 1);
                    }
                    slot.dead.get_or_insert(CloseReason::of_error(&e));
                }
            }
        }
        self.pump(key)
    }

    fn on_send(&mut self, key: usize, gen: u32, res: i32) -> io::Result<()> {
        let Some(slot) = self.conns.get_mut(key).filter(|s| s.gen == gen) else {
            debug_assert!(false, "send completion for a freed slot");
            return Ok(());
        };
        slot.send_inflight = false;
        if res >= 0 {
            let n = res as usize;
            slot.last_active = self.turn;
            Counters::add(&self.counters.bytes_out, n as u64);
            slot.core.sent(n, self.counters);
            if let Some(sending) = slot.sending.as_mut() {
                sending.sent += n;
                if sending.done() {
                    give_back(&mut self.spare, slot.sending.take());
                }
            }
        } else {
            match -res {
                libc::ECANCELED | libc::EINTR | libc::EAGAIN => {}
                errno => {
                    let e = io::Error::from_raw_os_error(errno);
                    if slot.dead.is_none() && is_peer_gone(&e) {
                        Counters::add(&self.counters.resets, 1);
                    }
                    slot.dead.get_or_insert(CloseReason::of_error(&e));
                }
            }
        }
        self.pump(key)
    }

    /// Moves one connection forward after a completion: parked input and
    /// EOF (in the core), the next send, recv armed or cancelled, close.
    fn pump(&mut self, key: usize) -> io::Result<()> {
        let max_output = self.config.max_output;
        let chunk = self.bufs.as_ref().map_or(MAX_BUFFER, |b| b.size() as usize);
        let multishot = self.features.multishot_recv;
        let Loop {
            conns,
            spare,
            counters,
            scratch,
            ..
        } = self;
        let Some(slot) = conns.get_mut(key) else {
            return Ok(());
        };
        if slot.dead.is_none() {
            // Parked input, a buffer's worth at a time while output has
            // room; then a parked EOF.
            slot.core
                .resume(max_output, chunk, scratch, counters, queue_only)?;
            if slot.lingering.is_none() {
                if let Some(reason) = slot.core.done() {
                    if close_now(slot.stream.as_raw_fd(), reason)
                        || slot.stream.shutdown(std::net::Shutdown::Write).is_err()
                    {
                        slot.dead = Some(reason);
                    } else {
                        // A FIN after everything produced; then drop what
                        // the peer still sends until its EOF, or until
                        // nothing can be lost (checked by the linger timer).
                        let limit = self.config.drain_timeout;
                        slot.lingering = Some(Box::new(Linger::new(reason, limit, Instant::now())));
                    }
                }
            }
        }
        let (fd, gen) = (slot.stream.as_raw_fd(), slot.gen);
        if let Some(reason) = slot.dead {
            let cancel_recv = slot.recv_armed && !slot.recv_cancelled;
            let cancel_send = slot.send_inflight && !slot.send_cancelled;
            slot.recv_cancelled |= cancel_recv;
            slot.send_cancelled |= cancel_send;
            if !slot.recv_armed && !slot.send_inflight {
                // Nothing of ours is in flight: free the slot, close the fd.
                let mut slot = self.conns.remove(key).expect("slot present");
                slot.core.close(self.counters, reason);
                give_back(&mut self.spare, slot.sending);
                Counters::add(&self.counters.closed, 1);
                return Ok(());
            }
            if cancel_recv {
                self.cancel(user_data(Op::Recv, gen, key))?;
            }
            if cancel_send {
                self.cancel(user_data(Op::Send, gen, key))?;
            }
            return Ok(());
        }
        // The next send: the rest of a partial one, else everything queued.
        let mut send = None;
        if !slot.send_inflight {
            if slot.sending.as_ref().is_none_or(|s| s.done()) && slot.core.queued() > 0 {
                let sending = slot
                    .sending
                    .get_or_insert_with(|| spare.pop().unwrap_or_default());
                sending.buf.clear();
                sending.sent = 0;
                slot.core.take_output(&mut sending.buf);
            }
            if let Some(sending) = slot.sending.as_ref().filter(|s| !s.done()) {
                let rest = &sending.buf[sending.sent..];
                let len = rest.len().min(u32::MAX as usize) as u32;
                send = Some(
                    opcode::Send::new(Fd(fd), rest.as_ptr(), len)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                        .user_data(user_data(Op::Send, gen, key)),
                );
                slot.send_inflight = true;
                slot.send_cancelled = false;
            }
        }
        // Reading: a multishot recv while the output is below half the
        // bound (it keeps delivering until cancelled, so it must stop well
        // before the bound), one buffer at a time above that, none at the
        // bound. Bytes a recv delivers past the bound are parked by the
        // core, unprocessed.
        // Lingering: a recv stays armed to see the peer's EOF (and drop
        // what it sends before).
        let wants_read = slot.core.wants_read(max_output) || slot.lingering.is_some();
        let low = slot.core.pending() < max_output / 2;
        let lingering = slot.lingering.is_some();
        if let Some(p) = &slot.push {
            p.set_pending(slot.core.pending());
        }
        let mut recv = None;
        let mut cancel_recv = false;
        if wants_read && !slot.recv_armed {
            let bufs = self.bufs.as_ref().expect("buffer ring lives while serving");
            let multi = multishot && low;
            let entry = if multi {
                opcode::RecvMulti::new(Fd(fd), bufs.bgid()).build()
            } else {
                opcode::Recv::new(Fd(fd), std::ptr::null_mut(), bufs.size())
                    .buf_group(bufs.bgid())
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
            };
            recv = Some(entry.user_data(user_data(Op::Recv, gen, key)));
            slot.recv_armed = true;
            slot.recv_multishot = multi;
            slot.recv_cancelled = false;
        } else if slot.recv_armed
            && slot.recv_multishot
            && !slot.recv_cancelled
            && (!wants_read || !low)
        {
            // Backpressure (or the handler closed): stop the multishot
            // recv. A single-shot recv just is not re-armed.
            slot.recv_cancelled = true;
            cancel_recv = true;
        }
        if let Some(entry) = send {
            Counters::add(&self.counters.send_calls, 1);
            // SAFETY: the entry points into the heap buffer of the slot's
            // `sending`, which is neither touched, moved out nor freed
            // while `send_inflight` is set (`on_send` clears it before it
            // gives the buffer back), and the slot is not freed before
            // that completion either. Moving the Slot (or the Box) does not
            // move the Vec's buffer.
            unsafe { self.push(&entry)? };
        }
        if lingering {
            self.arm_linger_check()?;
        }
        if let Some(entry) = recv {
            Counters::add(&self.counters.recv_calls, 1);
            // SAFETY: the recv selects a buffer from the registered ring,
            // which lives until every operation has completed (shutdown
            // drains the ring first, or leaks the buffers).
            unsafe { self.push(&entry)? };
        }
        if cancel_recv {
            self.cancel(user_data(Op::Recv, gen, key))?;
        }
        Ok(())
    }

    /// Arms the poll on the push eventfd.
    fn arm_push_poll(&mut self) -> io::Result<()> {
        let Some(fd) = &self.push_fd else {
            return Ok(());
        };
        let poll = opcode::PollAdd::new(Fd(fd.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(user_data(Op::Push, 0, 0));
        // SAFETY: a poll references no memory of ours.
        unsafe { self.push(&poll)? };
        self.push_armed = true;
        Ok(())
    }

    /// Moves what was pushed into each connection's output, in order
    /// behind its replies; a close asked for by a pusher ends it.
    fn take_pushed(&mut self) -> io::Result<()> {
        if let Some(fd) = &self.push_fd {
            let mut buf = [0u8; 8];
            let _ = crate::sys::read(&**fd, &mut buf);
        }
        let list = std::mem::take(&mut *self.pushed.lock().unwrap_or_else(PoisonError::into_inner));
        for (key, gen) in list {
            let Some(slot) = self.conns.get_mut(key).filter(|s| s.gen == gen) else {
                continue;
            };
            let Some(pusher) = &slot.push else {
                continue;
            };
            let pushed = pusher.take();
            if slot.dead.is_some() || slot.lingering.is_some() {
                continue;
            }
            match pushed.action() {
                None => slot.dead = Some(CloseReason::HandlerClosed),
                Some(action) => {
                    slot.core
                        .respond(&pushed.bytes, action, self.counters, queue_only)?
                }
            }
            self.pump(key)?;
        }
        if !self.stopping {
            self.arm_push_poll()?;
        }
        Ok(())
    }

    /// The stop: no more accepts; every connection stops reading, sends
    /// what it produced, and ends once nothing can be lost, until
    /// [`Config::drain_timeout`]; then [`shutdown`](Self::shutdown) cuts
    /// what is left.
    fn begin_drain(&mut self) -> io::Result<()> {
        if self.draining.is_some() {
            return Ok(());
        }
        self.draining = Some(Instant::now() + self.config.drain_timeout);
        if self.accept_armed && !self.accept_cancelled {
            self.accept_cancelled = true;
            self.cancel(user_data(Op::Accept, 0, 0))?;
        }
        self.accept_backoff = true; // never re-armed
        for key in 0..self.conns.capacity() {
            if let Some(slot) = self.conns.get_mut(key) {
                slot.core.drain();
                self.pump(key)?;
            }
        }
        // The loop must wake to see the deadline even if nothing completes.
        self.arm_linger_check()
    }

    /// Arms the linger check's timeout, if it is not armed.
    fn arm_linger_check(&mut self) -> io::Result<()> {
        if self.linger_armed {
            return Ok(());
        }
        let entry = opcode::Timeout::new(&self.linger_ts)
            .build()
            .user_data(user_data(Op::Linger, 0, 0));
        // SAFETY: the timespec lives in `self` for the whole loop (the
        // kernel copies it at submission anyway).
        unsafe { self.push(&entry)? };
        self.linger_armed = true;
        Ok(())
    }

    /// Ends each lingering connection that can lose nothing now, or whose
    /// deadline passed; checks again while any lingers, or while draining.
    fn check_lingering(&mut self) -> io::Result<()> {
        let now = Instant::now();
        let mut left = false;
        for key in 0..self.conns.capacity() {
            let Some(slot) = self.conns.get_mut(key) else {
                continue;
            };
            let Some(linger) = slot.lingering.as_deref() else {
                continue;
            };
            let over = linger.over(slot.stream.as_raw_fd(), now);
            if let (None, Some(reason)) = (slot.dead, over) {
                slot.dead = Some(reason);
                self.pump(key)?;
            } else {
                left = true;
            }
        }
        if left || (self.draining.is_some() && !self.stopping) {
            self.arm_linger_check()?;
        }
        Ok(())
    }

    /// Cancels every operation, waits for their completions, then frees
    /// the buffers. Connections are closed as their operations end.
    fn shutdown(&mut self) -> io::Result<()> {
        self.stopping = true;
        for key in 0..self.conns.capacity() {
            if let Some(slot) = self.conns.get_mut(key) {
                slot.dead.get_or_insert(CloseReason::ServerStop);
                self.pump(key)?;
            }
        }
        if self.accept_armed && !self.accept_cancelled {
            self.accept_cancelled = true;
            self.cancel(user_data(Op::Accept, 0, 0))?;
        }
        if self.timer_armed {
            self.cancel(user_data(Op::Timer, 0, 0))?;
        }
        if self.linger_armed {
            self.cancel(user_data(Op::Linger, 0, 0))?;
        }
        if self.push_armed {
            self.cancel(user_data(Op::Push, 0, 0))?;
        }
        let deadline = Instant::now() + DRAIN_LIMIT;
        let ts = Timespec::new().nsec(100_000_000);
        while (self.conns.len() > 0
            || self.accept_armed
            || self.timer_armed
            || self.linger_armed
            || self.push_armed)
            && Instant::now() < deadline
        {
            if self.features.ext_arg {
                Counters::add(&self.counters.wait_calls, 1);
                let args = SubmitArgs::new().timespec(&ts);
                settled(self.ring.submitter().submit_with_args(1, &args))?;
            } else {
                self.enter(1)?;
            }
            self.reap()?;
        }
        let drained = self.conns.len() == 0
            && !self.accept_armed
            && !self.timer_armed
            && !self.linger_armed
            && !self.push_armed;
        if drained {
            if let Some(b) = self.bufs.take() {
                b.release(&self.ring);
            }
        } else {
            // The kernel still owns operations that may write into these
            // buffers: leaking them is the only safe choice.
            log::error!(
                "uring: {} connections still had operations in flight after {DRAIN_LIMIT:?}; their buffers are leaked",
                self.conns.len()
            );
            mem::forget(self.bufs.take());
            mem::forget(mem::take(&mut self.conns));
        }
        Ok(())
    }
}

/// An `io_uring_enter` result, with the errors that only mean "not now"
/// taken as success: interrupted, the completion queue is full (reap, then
/// enter again), or a timed wait ended. The loop reaps either way.
fn settled(res: io::Result<usize>) -> io::Result<()> {
    match res {
        Err(e)
            if !matches!(
                e.raw_os_error(),
                Some(libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::ETIME)
            ) =>
        {
            Err(e)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::Shutdown;

    #[test]
    fn user_data_round_trips() {
        let ud = user_data(Op::Send, 0x12_3456, 987_654);
        assert_eq!(decode(ud), (Op::Send as u64, 0x12_3456, 987_654));
        assert_eq!(decode(user_data(Op::Recv, 0xffff_ffff, 1)).1, 0xff_ffff);
    }

    /// The path of kernels without multishot (single accept and recv per
    /// submission) serves the same bytes, half-close included.
    #[test]
    fn single_shot_path_serves_and_stops() {
        let Ok(probe) = crate::uring::probe() else {
            eprintln!("skipped: io_uring unavailable");
            return;
        };
        let features = Features {
            multishot_accept: false,
            multishot_recv: false,
            ..probe.features
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Stop::new().unwrap();
        let counters = Arc::new(Counters::default());
        let config = Config {
            read_chunk: 4096,
            max_output: 64 * 1024,
            ..Config::default()
        };
        let server = {
            let (stop, counters) = (stop.clone(), counters.clone());
            let upper = crate::protocol::Protocol::Upper;
            std::thread::spawn(move || {
                serve_with(features, listener, &config, &stop, &counters, upper)
            })
        };
        for _ in 0..3 {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let input: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            let mut w = s.try_clone().unwrap();
            let sent = input.clone();
            let writer = std::thread::spawn(move || {
                w.write_all(&sent).unwrap();
                w.shutdown(Shutdown::Write).unwrap();
            });
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            writer.join().unwrap();
            assert!(out == crate::protocol::Protocol::Upper.expected(&input));
        }
        stop.stop();
        server.join().unwrap().unwrap();
        let s = counters.snapshot();
        assert_eq!((s.accepted, s.closed, s.pending_output), (3, 3, 0));
        assert!(s.peak_conn_output as usize <= config.max_output + config.read_chunk);
    }
}
