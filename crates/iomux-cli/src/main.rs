//! `iomux`: serve every I/O model, talk to it, and benchmark them side by side.
//!
//! * `iomux serve --model epoll` serves the default protocol (every byte back,
//!   ASCII letters upper-cased) with one model;
//! * `iomux client` is the lessons' client: interactive, piped, or bulk;
//! * `iomux bench` starts every model in turn and measures them in one run;
//! * `iomux doctor` says what this machine offers and what iomux does with it.
//!
//! Errors are one line on stderr, `iomux: error: ...`, and a non-zero exit.

mod bench;
mod client;
mod control;
mod doctor;
mod peer_tokio;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Every classic network I/O model behind one protocol handler, served and
/// measured side by side.
#[derive(Parser, Debug)]
#[command(name = "iomux", version, about, long_about = None)]
struct Cli {
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
    /// The tokio peer server the bench compares against (used by `bench --peers`).
    #[command(hide = true)]
    PeerTokio(peer_tokio::PeerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The library reports through the `log` facade; warnings and errors
    // show by default, as `iomux: ...` lines on stderr (RUST_LOG overrides).
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|f, record| {
            use std::io::Write;
            writeln!(f, "iomux: {}", record.args())
        })
        .init();
    let result = match &cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Client(args) => client::run(args),
        Command::Bench(args) => bench::run(args).map(|_| ()),
        Command::Doctor(args) => doctor::run(args),
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
