//! The key-value example (`examples/kv_server.rs`), a protocol the
//! library has never seen, served through the framework on every model:
//! one example process per model, every check against it, in order.
//!
//! Iterative `blocking` serves one client at a time, by design: there each
//! check closes its connection before the next one opens, and the clients
//! that run at once elsewhere run one after another.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;

use iomux::server::Model;
use util::examples::Served;
use util::GENEROUS;

/// The example's `MAX_LINE`: the longest line it takes, newline excluded.
const MAX_LINE: usize = 64 * 1024;

/// A connection that sends lines and reads reply lines.
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connecting to kv_server");
        stream.set_read_timeout(Some(GENEROUS)).unwrap();
        stream.set_write_timeout(Some(GENEROUS)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// The next reply line, without its newline; `None` at EOF.
    fn reply(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("a reply in time");
        if n == 0 {
            return None;
        }
        assert!(line.ends_with('\n'), "a reply cut short: {line:?}");
        line.pop();
        Some(line)
    }

    /// Sends one command line and returns its reply.
    fn ask(&mut self, command: &str) -> String {
        self.send(format!("{command}\n").as_bytes());
        self.reply().expect("a reply, not EOF")
    }
}

/// A command split into one-byte sends (`TCP_NODELAY`: each its own
/// segment) is answered once, whole.
fn split_command(addr: SocketAddr) {
    let mut c = Client::connect(addr);
    for &b in b"SET split hello, split world\nGET split\n" {
        c.send(&[b]);
    }
    assert_eq!(c.reply().as_deref(), Some("OK"));
    assert_eq!(c.reply().as_deref(), Some("hello, split world"));
}

/// Commands pipelined in one write get their replies in order.
fn pipelined(addr: SocketAddr) {
    let mut c = Client::connect(addr);
    c.send(b"SET p1 one\nSET p2 two 2\r\nGET p1\nGET p2\nDEL p1\nDEL p1\nGET p1\nget p2\nGET nothing\n");
    for expected in ["OK", "OK", "one", "two 2", "1", "0", "NIL", "two 2", "NIL"] {
        assert_eq!(c.reply().as_deref(), Some(expected));
    }
}

/// One map for every connection: what one sets, another reads.
fn shared_between_connections(addr: SocketAddr, concurrent: bool) {
    let mut a = Client::connect(addr);
    assert_eq!(a.ask("SET shared from a"), "OK");
    if !concurrent {
        drop(a); // the next client is served once this one has left
        assert_eq!(Client::connect(addr).ask("GET shared"), "from a");
        return;
    }
    let mut b = Client::connect(addr);
    assert_eq!(b.ask("GET shared"), "from a");
    assert_eq!(b.ask("SET shared from b"), "OK");
    assert_eq!(a.ask("GET shared"), "from b");
}

/// 8 clients, each setting, reading and deleting its own keys: at once
/// where the model serves several clients, else one after another.
fn eight_clients(addr: SocketAddr, concurrent: bool) {
    let client = move |id: usize, start: Option<Arc<Barrier>>| {
        let mut c = Client::connect(addr);
        if let Some(start) = start {
            start.wait(); // all 8 connected before any sends
        }
        for i in 0..20 {
            let (key, value) = (format!("client{id}-{i}"), format!("value {id} {i}"));
            assert_eq!(c.ask(&format!("SET {key} {value}")), "OK");
            assert_eq!(c.ask(&format!("GET {key}")), value);
        }
        for i in 0..20 {
            assert_eq!(c.ask(&format!("DEL client{id}-{i}")), "1");
        }
        assert_eq!(c.ask(&format!("GET client{id}-0")), "NIL");
    };
    if concurrent {
        let start = Arc::new(Barrier::new(8));
        let clients: Vec<_> = (0..8)
            .map(|id| {
                let start = Arc::clone(&start);
                thread::spawn(move || client(id, Some(start)))
            })
            .collect();
        for c in clients {
            c.join().expect("a client's checks failed");
        }
    } else {
        (0..8).for_each(|id| client(id, None));
    }
}

/// A malformed line gets one `ERR` line saying what is wrong, and the
/// connection goes on serving.
fn malformed_lines(addr: SocketAddr) {
    let mut c = Client::connect(addr);
    let cases: [(&[u8], &str); 7] = [
        (b"FROB k\n", "unknown command"),
        (b"GET\n", "GET takes one key"),
        (b"GET a b\n", "GET takes one key"),
        (b"DEL\n", "DEL takes one key"),
        (b"SET lonely\n", "SET needs a key and a value"),
        (b"\n", "empty line"),
        (b"SET k caf\xc3\n", "not UTF-8"),
    ];
    for (line, what) in cases {
        c.send(line);
        let reply = c.reply().expect("a reply, not EOF");
        assert!(
            reply.starts_with("ERR ") && reply.contains(what),
            "{line:?} got {reply:?}, expected ERR ... {what} ..."
        );
    }
    assert_eq!(c.ask("SET after the errors"), "OK");
    assert_eq!(c.ask("GET after"), "the errors");
}

/// A line of `MAX_LINE` bytes is served; one byte more gets
/// `ERR line too long` and the connection is closed.
fn line_bound(addr: SocketAddr) {
    let mut c = Client::connect(addr);
    let value = "v".repeat(MAX_LINE - "SET big ".len());
    assert_eq!(c.ask(&format!("SET big {value}")), "OK");
    assert_eq!(c.ask("GET big"), value);
    // No newline, and nothing after: every byte sent is read before the
    // server closes, so its close is a FIN, not a reset that could
    // destroy the reply.
    c.send(&vec![b'x'; MAX_LINE + 1]);
    assert_eq!(c.reply().as_deref(), Some("ERR line too long"));
    assert_eq!(c.reply(), None, "closed after the reply");
}

/// Every check, on one `kv_server` process serving `model`.
fn check(model: Model) {
    if model == Model::Uring {
        if let Err(why) = iomux::uring::probe() {
            eprintln!("skipped: {why}");
            return;
        }
    }
    let server = Served::start("kv_server", &["--model", model.name(), "127.0.0.1:0"]);
    let concurrent = model.is_concurrent();
    split_command(server.addr);
    pipelined(server.addr);
    shared_between_connections(server.addr, concurrent);
    eight_clients(server.addr, concurrent);
    malformed_lines(server.addr);
    line_bound(server.addr);
}

macro_rules! every_model {
    ($($name:ident => $model:expr;)*) => {$(
        #[test]
        fn $name() {
            check($model);
        }
    )*};
}

every_model! {
    blocking => Model::Blocking;
    threaded => Model::Threaded;
    pool => Model::Pool;
    busy_poll => Model::BusyPoll;
    select => Model::Select;
    poll => Model::Poll;
    epoll => Model::Epoll;
    coroutine => Model::Coroutine;
    uring => Model::Uring;
}
