//! Every program in `examples/`, run as a user runs it (see
//! [`util::examples`]): each server as a child process on `127.0.0.1:0`,
//! answering clients here; the two clients against a server. Each child is
//! killed by its own PID once its test is done, or fails. The key-value
//! server has its own file, `kv_server.rs`.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use util::examples::{example, Served};
use util::{set_linger_zero, Rng, GENEROUS};

/// How long a client that sends before it reads waits for its sends to
/// finish before it reads anyway (the server stopped reading it).
const STUCK: Duration = Duration::from_millis(200);

/// A connection whose receive buffer is a few KiB: set before connecting,
/// which also keeps the kernel from growing it.
fn connect_with_small_window(addr: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect(&addr.into())
        .expect("connecting to the example");
    let stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(GENEROUS)).unwrap();
    stream.set_write_timeout(Some(GENEROUS)).unwrap();
    stream
}

/// One message and its reply on a fresh connection.
fn round_trip(server: &Served) {
    let mut stream = server.connect();
    stream.write_all(b"hello, World 1").unwrap();
    let mut reply = [0; 14];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"HELLO, WORLD 1");
}

/// Runs the checks every server must pass.
fn check_server(name: &str, concurrent: bool) {
    let server = Served::start(name, &["127.0.0.1:0"]);

    // A connected client that says nothing must not hold up the others
    // (the blocking server serves one client at a time, by design).
    let idle = concurrent.then(|| server.connect());
    round_trip(&server);

    // A client that resets its connection ends that connection only.
    let reset = server.connect();
    (&reset).write_all(b"about to reset").unwrap();
    set_linger_zero(&reset);
    drop(reset);

    // A client that sends 8 MiB before it reads anything, with a receive
    // buffer of a few KiB: the server's send buffer (4 MiB at most, Linux's
    // default `tcp_wmem`) cannot hold the reply, so its sends come back short
    // or with `WouldBlock`, and it must keep the rest (a mutant that drops
    // what the kernel refused fails here). The client starts reading once it
    // has sent everything, or once the server has stopped reading it
    // (backpressure) for STUCK. The reply must come back whole and in order,
    // and the server must close after the client's EOF.
    let input = Rng::new(8).bytes(8 << 20);
    let mut stream = connect_with_small_window(server.addr);
    let (sent_tx, sent) = mpsc::channel();
    let writer = {
        let (mut stream, input) = (stream.try_clone().unwrap(), input.clone());
        std::thread::spawn(move || {
            let res = stream
                .write_all(&input)
                .and_then(|()| stream.shutdown(Shutdown::Write));
            let _ = sent_tx.send(());
            res
        })
    };
    let _ = sent.recv_timeout(STUCK);
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("the reply, then EOF");
    writer.join().unwrap().expect("sending 8 MiB");
    assert!(reply == input.to_ascii_uppercase(), "{name}: wrong reply");

    round_trip(&server);
    drop(idle);
}

#[test]
fn blocking_server() {
    check_server("blocking_server", false);
}

#[test]
fn pool_server() {
    check_server("pool_server", true);
}

#[test]
fn busy_poll_server() {
    check_server("busy_poll_server", true);
}

#[test]
fn select_server() {
    check_server("select_server", true);
}

#[test]
fn epoll_server() {
    check_server("epoll_server", true);
}

#[test]
fn selectors_server() {
    check_server("selectors_server", true);
}

#[test]
fn event_driven_server() {
    check_server("event_driven_server", true);
}

/// Runs a client example to completion with `input` on its stdin; killed
/// if it takes longer than `GENEROUS`.
fn run_client(name: &str, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(example(name))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap(); // closed here: EOF
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).map(|_| buf)
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).map(|_| buf)
    });
    let deadline = Instant::now() + GENEROUS;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap().unwrap(),
        stderr: err.join().unwrap().unwrap(),
    }
}

#[test]
fn interactive_client_answers_each_line_until_the_input_ends() {
    let server = Served::start("epoll_server", &["127.0.0.1:0"]);
    let addr = server.addr.to_string();
    let out = run_client(
        "interactive_client",
        &[&addr],
        b"hello\n\nSome Words 2\nq\nnot sent\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "HELLO\nSOME WORDS 2\n"
    );
}

#[test]
fn bulk_client_reports_its_rate() {
    let server = Served::start("selectors_server", &["127.0.0.1:0"]);
    let addr = server.addr.to_string();
    let out = run_client("bulk_client", &[&addr, "2000"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("2000 round trips in "), "{stdout}");
    assert!(stdout.trim_end().ends_with(" round trips/s"), "{stdout}");
}

/// A chat client: its id, and its lines as they come.
struct Chatter {
    id: u64,
    lines: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Chatter {
    /// Connects and reads the welcome line, `* you are ID`.
    fn join(server: &Served) -> Chatter {
        Chatter::join_on(server.connect())
    }

    fn join_on(stream: TcpStream) -> Chatter {
        let mut c = Chatter {
            id: 0,
            lines: BufReader::new(stream.try_clone().unwrap()),
            stream,
        };
        let welcome = c.line();
        c.id = welcome
            .strip_prefix("* you are ")
            .and_then(|id| id.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("no welcome: {welcome:?}"));
        c
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.lines
            .read_line(&mut line)
            .expect("a line from the chat");
        line
    }

    fn say(&self, line: &str) {
        (&self.stream).write_all(line.as_bytes()).unwrap();
    }
}

#[test]
fn task_chat_relays_each_line_to_the_others_and_announces_joins_and_leaves() {
    let server = Served::start("task_chat", &["127.0.0.1:0"]);
    let mut a = Chatter::join(&server);
    let mut b = Chatter::join(&server);
    assert_eq!(a.line(), format!("* {} joined\n", b.id));
    let mut c = Chatter::join(&server);
    assert_eq!(a.line(), format!("* {} joined\n", c.id));
    assert_eq!(b.line(), format!("* {} joined\n", c.id));

    // A line sent in pieces reaches the two others whole, once; not the
    // sender (its next line is the next event, not its own echo).
    let long = "x".repeat(3000);
    a.say("hello ");
    a.say(&format!("from a {long}"));
    a.say("\n");
    let expected = format!("[{}] hello from a {long}\n", a.id);
    assert_eq!(b.line(), expected);
    assert_eq!(c.line(), expected);
    b.say("hi\n");
    assert_eq!(a.line(), format!("[{}] hi\n", b.id));
    assert_eq!(c.line(), format!("[{}] hi\n", b.id));

    let c_id = c.id;
    drop(c);
    assert_eq!(a.line(), format!("* {c_id} left\n"));
    assert_eq!(b.line(), format!("* {c_id} left\n"));
}

/// The server's peak resident memory, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// The most a socket's send buffer can grow to (`tcp_wmem`'s maximum).
fn max_send_buffer() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

/// One client never reads while two others chat: they receive every line,
/// in order; the silent one is disconnected once its backlog is full; and
/// the server's memory stays bounded (it would grow with every line if the
/// per-client channels were unbounded).
#[test]
fn task_chat_disconnects_a_client_that_never_reads_and_stays_bounded() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// The server's peak RSS must stay under this: a few MiB of binary and
    /// heap, plus at most 257 lines of 1 KiB queued for the silent client.
    const RSS_BOUND_KIB: u64 = 24 << 10;
    /// Lines the talker may be ahead of the listener: far less than the
    /// kernel's buffers, so the listener is never the one cut.
    const WINDOW: usize = 64;

    let server = Served::start("task_chat", &["127.0.0.1:0"]);
    let a = Chatter::join(&server);
    let mut b = Chatter::join(&server);
    let silent = Chatter::join_on(connect_with_small_window(server.addr));
    let silent_id = silent.id;
    // `silent` never reads again; `a` and `b` saw the joins.
    let mut a_lines = a.lines;
    for _ in 0..2 {
        let mut l = String::new();
        a_lines.read_line(&mut l).unwrap();
    }
    b.line();

    // Enough 1 KiB lines to fill the kernel's buffers for the silent
    // client several times over, and the server's memory past the bound if
    // they were all queued for it.
    let body = "y".repeat(1000);
    let most = (max_send_buffer() + (RSS_BOUND_KIB as usize) * 1024) / body.len() * 2;
    let received = Arc::new(AtomicUsize::new(0));
    let left_seen = Arc::new(AtomicBool::new(false));
    let talker = {
        let (received, left_seen) = (received.clone(), left_seen.clone());
        let mut stream = a.stream;
        let body = body.clone();
        std::thread::spawn(move || {
            let mut after_left = 0;
            let mut sent = 0;
            while sent < most && after_left < 100 {
                while sent >= received.load(Ordering::Acquire) + WINDOW {
                    std::thread::sleep(Duration::from_micros(100));
                }
                stream
                    .write_all(format!("{sent} {body}\n").as_bytes())
                    .unwrap();
                sent += 1;
                if left_seen.load(Ordering::Acquire) {
                    after_left += 1;
                }
            }
            stream.write_all(b"end\n").unwrap();
            (stream, a_lines, sent)
        })
    };
    let mut next = 0;
    loop {
        let line = b.line();
        if line == format!("* {silent_id} left\n") {
            left_seen.store(true, Ordering::Release);
            continue;
        }
        if line == format!("[{}] end\n", a.id) {
            break;
        }
        assert_eq!(
            line,
            format!("[{}] {next} {body}\n", a.id),
            "lost or out of order"
        );
        next += 1;
        received.store(next, Ordering::Release);
    }
    let (_a_stream, _a_lines, sent) = talker.join().unwrap();
    assert_eq!(next, sent, "every line reached the listener");
    assert!(
        left_seen.load(Ordering::Acquire),
        "the client that never reads was not disconnected after {sent} lines"
    );
    let rss = peak_rss_kib(server.child.id());
    assert!(
        rss < RSS_BOUND_KIB,
        "the server's peak RSS is {rss} KiB, over the {RSS_BOUND_KIB} KiB bound"
    );
    eprintln!("task_chat: {sent} lines relayed, silent client cut, server peak RSS {rss} KiB");
    drop(silent);
}
