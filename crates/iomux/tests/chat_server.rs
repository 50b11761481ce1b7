//! `examples/chat_server.rs`, the framework's push and lifecycle hooks
//! used as a user would, run on every model that serves clients at once: the line of
//! one client reaches every other one whole, joins and leaves are
//! announced, a thousand clients share a room, and a client that never
//! reads neither slows the others nor grows the server's memory.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use iomux::server::Model;
use util::examples::Served;
use util::GENEROUS;

/// Every model that serves several clients at once (iterative `blocking`
/// serves one, so a room of several cannot be held there), that runs here.
fn push_models() -> Vec<Model> {
    Model::ALL
        .into_iter()
        .filter(|m| m.is_concurrent())
        .filter(|&m| {
            if m == Model::Uring {
                if let Err(why) = iomux::uring::probe() {
                    eprintln!("skipped uring: {why}");
                    return false;
                }
            }
            true
        })
        .collect()
}

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    id: String,
}

impl Client {
    fn join(served: &Served) -> Client {
        let s = served.connect();
        let mut c = Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            id: String::new(),
        };
        let hello = c.line();
        c.id = hello
            .strip_prefix("* you are ")
            .unwrap_or_else(|| panic!("greeting {hello:?}"))
            .to_string();
        c
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.reader.read_line(&mut l).unwrap();
        assert!(l.ends_with('\n'), "a whole line, got {l:?}");
        l.pop();
        l
    }

    /// The next line that is not a join announcement.
    fn next_message(&mut self) -> String {
        loop {
            let l = self.line();
            if !l.ends_with(" joined") {
                return l;
            }
        }
    }
}

fn three_clients(model: Model) {
    let served = Served::start("chat_server", &["--model", model.name()]);
    let mut a = Client::join(&served);
    let mut b = Client::join(&served);
    assert_eq!(a.line(), format!("* {} joined", b.id));
    let mut c = Client::join(&served);
    assert_eq!(a.line(), format!("* {} joined", c.id));
    assert_eq!(b.line(), format!("* {} joined", c.id));
    // A line sent in pieces arrives whole, once, at each of the others.
    for piece in ["hel", "lo, ", "wor", "ld\nand a second", " line\n"] {
        a.writer.write_all(piece.as_bytes()).unwrap();
        thread::sleep(Duration::from_millis(20));
    }
    for other in [&mut b, &mut c] {
        assert_eq!(other.line(), format!("[{}] hello, world", a.id));
        assert_eq!(other.line(), format!("[{}] and a second line", a.id));
    }
    // A leaves: the others hear it; B's next line reaches C only.
    drop(a.writer);
    drop(a.reader);
    assert_eq!(b.line(), format!("* {} left", a.id));
    assert_eq!(c.line(), format!("* {} left", a.id));
    b.writer.write_all(b"still here\n").unwrap();
    assert_eq!(c.line(), format!("[{}] still here", b.id));
}

fn a_thousand_in_one_room(model: Model) {
    let served = Served::start("chat_server", &["--model", model.name()]);
    let mut clients: Vec<Client> = (0..1000).map(|_| Client::join(&served)).collect();
    let first = clients[0].id.clone();
    clients[0].writer.write_all(b"hello, everyone\n").unwrap();
    for c in &mut clients[1..] {
        assert_eq!(c.next_message(), format!("[{first}] hello, everyone"));
    }
}

/// One client never reads while three others chat, paced, for about two
/// seconds (18 MB offered to the silent one, past what the kernel's
/// buffers take): the others get every line of each other, in order; the
/// silent one is ended once its output is full; the server's memory stays
/// within 16 MiB of where it started (its bound: 256 KiB of output per
/// client, plus the kernel's buffers, which are not the server's memory).
fn a_client_that_never_reads(model: Model) {
    let served = Served::start("chat_server", &["--model", model.name()]);
    let pid = served.child.id();
    let hwm = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let silent = served.connect();
    let mut talkers: Vec<Client> = (0..3).map(|_| Client::join(&served)).collect();
    // Everyone has heard every join before the chat starts.
    for (i, t) in talkers.iter_mut().enumerate() {
        for _ in i + 1..3 {
            t.line();
        }
    }
    let base = hwm();
    let ids: Vec<String> = talkers.iter().map(|t| t.id.clone()).collect();
    const LINES: usize = 6_000;
    let filler = "x".repeat(1000);
    let mut handles = Vec::new();
    for mut t in talkers {
        let filler = filler.clone();
        let ids = ids.clone();
        handles.push(thread::spawn(move || {
            let mut w = t.writer.try_clone().unwrap();
            let writer = thread::spawn(move || {
                let t0 = Instant::now();
                for n in 0..LINES {
                    w.write_all(format!("{n} {filler}\n").as_bytes()).unwrap();
                    // Paced: 3,000 lines (3 MB) a second.
                    let due = Duration::from_micros(333 * n as u64);
                    if let Some(wait) = due.checked_sub(t0.elapsed()) {
                        thread::sleep(wait);
                    }
                }
            });
            // Every line of each other talker, in order.
            let mut next: Vec<usize> = vec![0; ids.len()];
            let want = LINES * (ids.len() - 1);
            let mut got = 0;
            while got < want {
                let l = t.line();
                if l.ends_with(" left") || l.ends_with(" joined") {
                    continue;
                }
                let (from, rest) = l
                    .split_once("] ")
                    .unwrap_or_else(|| panic!("{model}: not a chat line: {l:?}"));
                let from = &from[1..];
                let k = ids.iter().position(|i| i == from).expect("a talker");
                let n: usize = rest
                    .split(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("{model}: not a chat line: {l:?}"));
                assert_eq!(n, next[k], "line {n} from {from}: out of order or lost");
                next[k] += 1;
                got += 1;
            }
            writer.join().unwrap();
            got
        }));
    }
    for h in handles {
        assert_eq!(h.join().unwrap(), 2 * LINES);
    }
    let growth_kib = hwm().saturating_sub(base);
    eprintln!("{model}: 3 clients chatted {LINES} lines each past a silent one; peak RSS grew {growth_kib} KiB");
    assert!(
        growth_kib < 16 * 1024,
        "{model}: peak RSS grew {growth_kib} KiB"
    );
    // The silent client was ended: what was queued for it, then the end.
    let mut silent = silent;
    silent.set_read_timeout(Some(GENEROUS)).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let t0 = Instant::now();
    loop {
        match silent.read(&mut buf) {
            Ok(0) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("{model}: the silent client was never ended")
            }
            Err(_) => break, // reset: ended with its output unsent
            Ok(_) => assert!(
                t0.elapsed() < GENEROUS,
                "{model}: the silent client was never ended"
            ),
        }
    }
}

#[test]
fn three_clients_on_every_push_model() {
    for model in push_models() {
        three_clients(model);
    }
}

/// The heavy tests run one at a time: on two shared cores, a thousand
/// clients beside a paced chat could starve a reader long enough for the
/// room to end it as a client that does not read.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_thousand_clients_in_one_room_on_every_push_model() {
    let _one = HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A pool serves `workers` (4) clients at a time: a room of a thousand
    // is for the models without such a ceiling.
    for model in push_models().into_iter().filter(|&m| m != Model::Pool) {
        a_thousand_in_one_room(model);
    }
}

#[test]
fn a_client_that_never_reads_on_every_push_model() {
    let _one = HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for model in push_models() {
        a_client_that_never_reads(model);
    }
}
