//! `iomux`: serve every I/O model, talk to it, and benchmark them side by side.
//!
//! * `iomux serve --model epoll` serves the default protocol (every byte back,
//!   ASCII letters upper-cased) with one model;
//! * `iomux client` is the lessons' client: interactive, piped, or bulk;
//! * `iomux bench` starts every model in turn and measures them in one run;
//! * `iomux doctor` says what this machine offers and what iomux does with it;
//! * `iomux lessons` tests every claim of the seed lessons on this machine.
//!
//! Errors are one line on stderr, `iomux: error: ...`, and a non-zero exit.
//! The library's own reports (stalls, accept failures, refusals) come
//! through the `log` facade: warnings and errors by default, more with
//! `-v`, fewer with `-q`, or as `RUST_LOG` says.

mod bench;
mod client;
mod control;
mod doctor;
mod lessons;
mod peer_tokio;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Every classic network I/O model behind one protocol handler, served and
/// measured side by side.
#[derive(Parser, Debug)]
#[command(name = "iomux", version, about, long_about = None)]
struct Cli {
    /// Log more: -v info, -vv debug, -vvv trace (RUST_LOG, if set, decides
    /// instead).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log less: -q errors only, -qq nothing.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve a protocol with one I/O model until interrupted (Ctrl-C).
    Serve(serve::ServeArgs),
    /// Talk to a server: interactive, piped stdin, or bulk (--repeat).
    Client(client::ClientArgs),
    /// Run every model side by side and report throughput, latency, CPU,
    /// syscalls and memory.
    Bench(bench::BenchArgs),
    /// What this machine offers (kernel, backends, io_uring features,
    /// limits) and which model `auto` picks.
    Doctor(doctor::DoctorArgs),
    /// Test every claim of the lessons on this machine: the seed it comes
    /// from, the measurement, the figure and whether it holds.
    Lessons(lessons::LessonsArgs),
    /// The tokio peer server the bench compares against (used by `bench --peers`).
    #[command(hide = true)]
    PeerTokio(peer_tokio::PeerArgs),
}

/// The level `-v`/`-q` ask for; warnings by default.
fn level(verbose: u8, quiet: u8) -> log::LevelFilter {
    use log::LevelFilter::*;
    match (verbose, quiet) {
        (0, 0) => Warn,
        (_, 1) => Error,
        (_, q) if q > 1 => Off,
        (1, _) => Info,
        (2, _) => Debug,
        _ => Trace,
    }
}

/// Installs the logger: the library's reports as `iomux: message` lines on
/// stderr, at the level of `-v`/`-q`, or as `RUST_LOG` says when it is
/// set.
fn init_logger(verbose: u8, quiet: u8) {
    use std::io::Write;
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(level(verbose, quiet))
        .format(|f, record| writeln!(f, "iomux: {}", record.args()));
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder.init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logger(cli.verbose, cli.quiet);
    let result = match &cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Client(args) => client::run(args),
        Command::Bench(args) => bench::run(args).map(|_| ()),
        Command::Doctor(args) => doctor::run(args),
        Command::Lessons(args) => lessons::run(args),
        Command::PeerTokio(args) => peer_tokio::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iomux: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
