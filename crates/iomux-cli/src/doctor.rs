//! `iomux doctor`: what this machine offers and what iomux will do with it.
//!
//! Kernel, selector backends, io_uring (sysctl, seccomp, probed opcodes and
//! features, or why it is unavailable), the fd and locked-memory limits, and
//! which model `auto` picks and why.

use anyhow::Result;
use clap::Args;
use iomux::selector::Backend;
use iomux::server::Model;
use iomux::uring::{self, KernelVersion};

/// Flags of `iomux doctor` (none yet).
#[derive(Args, Debug, Clone)]
pub struct DoctorArgs {}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn limit(v: u64) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// The soft and hard limit of `resource`.
fn rlimit(resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    let rc = unsafe { libc::getrlimit(resource, &mut lim) };
    (rc == 0).then_some((lim.rlim_cur, lim.rlim_max))
}

/// The report as text (what `iomux doctor` prints).
pub fn report() -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<26}{v}\n"));
    line("kernel", KernelVersion::current().to_string());
    let backends: Vec<String> = Backend::ALL
        .iter()
        .map(|b| {
            let mut s = b.name().to_string();
            if !b.is_supported() {
                s.push_str(" (unsupported)");
            } else if let Some(n) = b.fd_limit() {
                s.push_str(&format!(" (fds below {n})"));
            }
            s
        })
        .collect();
    line("selector backends", backends.join(", "));
    line(
        "recommended backend",
        Backend::recommended().name().to_string(),
    );
    line(
        "kernel.io_uring_disabled",
        uring::probe::sysctl_disabled().map_or_else(
            || "absent (kernel before 6.6)".into(),
            |v| {
                let what = match v {
                    0 => "enabled",
                    1 => "restricted to kernel.io_uring_group",
                    _ => "disabled",
                };
                format!("{v} ({what})")
            },
        ),
    );
    line(
        "seccomp",
        match uring::probe::seccomp_mode() {
            Some(0) => "none".into(),
            Some(1) => "strict".into(),
            Some(2) => "filter (may block io_uring)".into(),
            Some(m) => format!("mode {m}"),
            None => "unknown".into(),
        },
    );
    let probed = uring::probe();
    match &probed {
        Err(why) => line("io_uring", format!("unavailable: {why}")),
        Ok(p) => {
            let f = &p.features;
            line("io_uring", "available".into());
            let ops: Vec<String> = p
                .opcodes
                .iter()
                .map(|(n, ok)| format!("{n} {}", yes(*ok)))
                .collect();
            line("  opcodes", ops.join(", "));
            line(
                "  multishot accept",
                format!("{} (Linux 5.19)", yes(f.multishot_accept)),
            );
            line(
                "  multishot recv",
                format!("{} (Linux 6.0)", yes(f.multishot_recv)),
            );
            line(
                "  provided-buffer rings",
                format!("{} (Linux 5.19)", yes(f.buf_ring)),
            );
            let setup = if f.defer_taskrun {
                "SINGLE_ISSUER | DEFER_TASKRUN (Linux 6.1)"
            } else if f.coop_taskrun {
                "COOP_TASKRUN (Linux 5.19)"
            } else {
                "default"
            };
            line("  ring setup", setup.into());
            line(
                "  kernel features",
                format!(
                    "FAST_POLL {}, NODROP {}, EXT_ARG {}, MIN_TIMEOUT {} (--uring-batch-wait, Linux 6.12)",
                    yes(f.fast_poll),
                    yes(f.nodrop),
                    yes(f.ext_arg),
                    yes(f.min_timeout)
                ),
            );
            line(
                "  uring model will use",
                format!(
                    "{}, {} with a shared buffer ring, {}",
                    if f.multishot_accept {
                        "multishot accept"
                    } else {
                        "one accept per connection"
                    },
                    if f.multishot_recv {
                        "multishot recv"
                    } else {
                        "one recv per message"
                    },
                    "submissions batched into the io_uring_enter that waits"
                ),
            );
        }
    }
    match rlimit(libc::RLIMIT_NOFILE) {
        Some((s, h)) => line(
            "RLIMIT_NOFILE",
            format!(
                "soft {} hard {} (the bench raises soft to hard)",
                limit(s),
                limit(h)
            ),
        ),
        None => line("RLIMIT_NOFILE", "unknown".into()),
    }
    match rlimit(libc::RLIMIT_MEMLOCK) {
        Some((s, h)) => line(
            "RLIMIT_MEMLOCK",
            format!(
                "soft {} hard {} (io_uring rings count against it before Linux 5.12)",
                limit(s),
                limit(h)
            ),
        ),
        None => line("RLIMIT_MEMLOCK", "unknown".into()),
    }
    let auto = Model::auto();
    let why = match (&probed, auto) {
        (_, Model::Uring) => {
            "io_uring is available and measured cheaper per round trip than epoll here".to_string()
        }
        (Ok(_), _) => "io_uring is available, but did not measure clearly cheaper than epoll on this platform (see the README); use --model uring to choose it".to_string(),
        (Err(why), _) => format!("io_uring unusable: {why}"),
    };
    line("auto picks", format!("{auto} ({why})"));
    out
}

/// Runs `iomux doctor`.
pub fn run(_args: &DoctorArgs) -> Result<()> {
    print!("{}", report());
    Ok(())
}
