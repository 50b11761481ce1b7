//! Run-time detection: is io_uring usable here, and with which features?
//!
//! [`probe`] sets up a small ring the way the driver would and asks the
//! kernel what it offers. When io_uring cannot be used it says why, as an
//! [`Unavailable`] whose `Display` is the one line the CLI prints.

use std::fmt;
use std::io;

/// The kernel release this process runs on (`uname -r`), as text and as
/// `(major, minor)` when it parses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelVersion {
    /// The release string, e.g. `6.8.0-45-generic`.
    pub release: String,
    /// Major and minor number, when the release starts with them.
    pub version: Option<(u32, u32)>,
}

impl KernelVersion {
    /// The running kernel's release, read from `/proc/sys/kernel/osrelease`.
    pub fn current() -> KernelVersion {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        KernelVersion::parse(&release)
    }

    /// Parses a release string such as `5.19.0-rc1` or `6.18.44-fc-v669`.
    pub fn parse(release: &str) -> KernelVersion {
        let mut nums = release
            .split(|c: char| !c.is_ascii_digit())
            .map(str::parse::<u32>);
        let version = match (nums.next(), nums.next()) {
            (Some(Ok(a)), Some(Ok(b))) => Some((a, b)),
            _ => None,
        };
        KernelVersion {
            release: release.to_string(),
            version,
        }
    }

    /// Whether the kernel is at least `major.minor` (unknown counts as no).
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        self.version.is_some_and(|v| v >= (major, minor))
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.release.is_empty() {
            f.write_str("unknown")
        } else {
            f.write_str(&self.release)
        }
    }
}

/// Why io_uring cannot serve here. `Display` gives one line that names the
/// cause and suggests `--model epoll`.
#[derive(Debug)]
pub enum Unavailable {
    /// Not Linux, or iomux was built without its `uring` feature.
    NotBuilt,
    /// `kernel.io_uring_disabled` is 2: io_uring is off for everyone.
    DisabledBySysctl,
    /// `kernel.io_uring_disabled` is 1 and this process is not in
    /// `kernel.io_uring_group` (nor privileged).
    RestrictedBySysctl,
    /// A seccomp filter refuses `io_uring_setup` (containers often do).
    Seccomp {
        /// The error the filter returned.
        errno: i32,
    },
    /// The kernel has no `io_uring_setup` (before 5.1, or built without
    /// `CONFIG_IO_URING`).
    NoSyscall,
    /// The ring's memory is over `RLIMIT_MEMLOCK` (kernels before 5.12
    /// account it there).
    Memlock,
    /// The kernel has io_uring but lacks what the driver needs.
    TooOld {
        /// What is missing, and the kernel that brings it.
        missing: &'static str,
        /// The running kernel.
        kernel: String,
    },
    /// Anything else `io_uring_setup` or `io_uring_register` said.
    Other(io::Error),
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::NotBuilt => f.write_str(
                "io_uring is not available: iomux was built without its `uring` feature or not for Linux",
            ),
            Unavailable::DisabledBySysctl => {
                f.write_str("io_uring is disabled by sysctl kernel.io_uring_disabled=2")
            }
            Unavailable::RestrictedBySysctl => f.write_str(
                "io_uring is restricted by sysctl kernel.io_uring_disabled=1 and this user is not in kernel.io_uring_group",
            ),
            Unavailable::Seccomp { errno } => write!(
                f,
                "io_uring is blocked by a seccomp filter (io_uring_setup failed: {})",
                io::Error::from_raw_os_error(*errno)
            ),
            Unavailable::NoSyscall => f.write_str(
                "io_uring is not in this kernel (io_uring_setup: function not implemented)",
            ),
            Unavailable::Memlock => f.write_str(
                "io_uring ring memory exceeds RLIMIT_MEMLOCK (raise it with ulimit -l)",
            ),
            Unavailable::TooOld { missing, kernel } => {
                write!(f, "io_uring on kernel {kernel} lacks {missing}")
            }
            Unavailable::Other(e) => write!(f, "io_uring cannot be set up: {e}"),
        }?;
        f.write_str("; use --model epoll")
    }
}

impl std::error::Error for Unavailable {}

impl From<Unavailable> for io::Error {
    fn from(u: Unavailable) -> io::Error {
        io::Error::new(io::ErrorKind::Unsupported, u.to_string())
    }
}

/// What the kernel's io_uring offers that the driver uses. Each field names
/// the kernel release that brought it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// `IORING_OP_ACCEPT` (5.5).
    pub op_accept: bool,
    /// `IORING_OP_RECV` and `IORING_OP_SEND` (5.6).
    pub op_recv_send: bool,
    /// `IORING_OP_POLL_ADD` (5.1): how the ring hears the stop signal.
    pub op_poll_add: bool,
    /// `IORING_OP_TIMEOUT` (5.4): the accept back-off.
    pub op_timeout: bool,
    /// `IORING_OP_ASYNC_CANCEL` (5.5): pausing and closing connections.
    pub op_async_cancel: bool,
    /// Provided-buffer rings, `IORING_REGISTER_PBUF_RING` (5.19): a recv
    /// takes a buffer only when data arrives, so idle connections hold none.
    pub buf_ring: bool,
    /// Multishot accept, `IORING_ACCEPT_MULTISHOT` (5.19): one submission
    /// accepts every connection that comes.
    pub multishot_accept: bool,
    /// Multishot recv, `IORING_RECV_MULTISHOT` (6.0): one submission
    /// receives until the peer closes, paused or cancelled.
    pub multishot_recv: bool,
    /// `IORING_SETUP_COOP_TASKRUN` (5.19): completions are not forced on the
    /// thread with an interrupt.
    pub coop_taskrun: bool,
    /// `IORING_SETUP_SINGLE_ISSUER` (6.0) with `IORING_SETUP_DEFER_TASKRUN`
    /// (6.1): completion work runs only when the loop enters the kernel to
    /// wait, batched.
    pub defer_taskrun: bool,
    /// `IORING_FEAT_FAST_POLL` (5.7): a recv or send that would block waits
    /// on the socket's poll queue, not in a kernel worker thread.
    pub fast_poll: bool,
    /// `IORING_FEAT_NODROP` (5.5): completions are never dropped when the
    /// completion queue is full.
    pub nodrop: bool,
    /// `IORING_FEAT_EXT_ARG` (5.11): waits with a timeout.
    pub ext_arg: bool,
    /// `IORING_FEAT_MIN_TIMEOUT` (6.12): a wait for several completions
    /// that gives up after a minimum time once one is in, which
    /// [`Config::uring_batch_wait`](crate::server::Config::uring_batch_wait)
    /// needs.
    pub min_timeout: bool,
}

impl Features {
    /// What the driver cannot do without, as the name of the first missing
    /// piece and the kernel that brings it.
    pub fn missing(&self) -> Option<&'static str> {
        if !self.op_accept {
            Some("IORING_OP_ACCEPT (Linux 5.5)")
        } else if !self.op_recv_send {
            Some("IORING_OP_RECV/SEND (Linux 5.6)")
        } else if !self.op_poll_add || !self.op_timeout || !self.op_async_cancel {
            Some("IORING_OP_POLL_ADD/TIMEOUT/ASYNC_CANCEL (Linux 5.5)")
        } else if !self.buf_ring {
            Some("provided-buffer rings (Linux 5.19)")
        } else {
            None
        }
    }
}

/// What [`probe`] found on a machine where io_uring works.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The running kernel.
    pub kernel: KernelVersion,
    /// The features the driver will use.
    pub features: Features,
    /// Names of the probed opcodes the driver cares about, each with whether
    /// the kernel supports it.
    pub opcodes: Vec<(&'static str, bool)>,
}

/// The value of `kernel.io_uring_disabled` (0 enabled, 1 restricted to a
/// group, 2 disabled), or `None` where the sysctl does not exist (before 6.6).
pub fn sysctl_disabled() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// This process's seccomp mode from `/proc/self/status`: 0 none, 1 strict,
/// 2 filter; `None` if the kernel does not say.
pub fn seccomp_mode() -> Option<u8> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Names the cause of a failed `io_uring_setup`, from its error, the sysctl
/// and the seccomp mode.
pub fn classify_setup_error(e: io::Error, sysctl: Option<u8>, seccomp: Option<u8>) -> Unavailable {
    let filtered = seccomp.is_some_and(|m| m > 0);
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => match sysctl {
            Some(2) => Unavailable::DisabledBySysctl,
            Some(1) => Unavailable::RestrictedBySysctl,
            _ if filtered => Unavailable::Seccomp {
                errno: e.raw_os_error().unwrap_or(libc::EPERM),
            },
            _ => Unavailable::Other(e),
        },
        Some(libc::ENOSYS) if filtered => Unavailable::Seccomp {
            errno: libc::ENOSYS,
        },
        Some(libc::ENOSYS) => Unavailable::NoSyscall,
        Some(libc::ENOMEM) => Unavailable::Memlock,
        _ => Unavailable::Other(e),
    }
}

/// Sets up a small ring and asks the kernel what it offers.
///
/// # Errors
/// Why io_uring cannot be used here (see [`Unavailable`]).
///
/// # Examples
///
/// ```
/// match iomux::uring::probe() {
///     Ok(p) => println!("io_uring on {}: {:?}", p.kernel, p.features),
///     Err(why) => println!("{why}"),
/// }
/// ```
pub fn probe() -> Result<Probe, Unavailable> {
    #[cfg(all(target_os = "linux", feature = "uring"))]
    {
        imp::probe()
    }
    #[cfg(not(all(target_os = "linux", feature = "uring")))]
    {
        Err(Unavailable::NotBuilt)
    }
}

#[cfg(all(target_os = "linux", feature = "uring"))]
mod imp {
    use super::*;
    use io_uring::opcode;

    pub(super) fn probe() -> Result<Probe, Unavailable> {
        let kernel = KernelVersion::current();
        let (ring, coop_taskrun, defer_taskrun) = crate::uring::ring::build_ring(8)
            .map_err(|e| classify_setup_error(e, sysctl_disabled(), seccomp_mode()))?;
        let mut p = io_uring::Probe::new();
        ring.submitter()
            .register_probe(&mut p)
            .map_err(Unavailable::Other)?;
        let op = |code: u8| p.is_supported(code);
        let opcodes = vec![
            ("ACCEPT", op(opcode::Accept::CODE)),
            ("RECV", op(opcode::Recv::CODE)),
            ("SEND", op(opcode::Send::CODE)),
            ("POLL_ADD", op(opcode::PollAdd::CODE)),
            ("TIMEOUT", op(opcode::Timeout::CODE)),
            ("ASYNC_CANCEL", op(opcode::AsyncCancel::CODE)),
            ("PROVIDE_BUFFERS", op(opcode::ProvideBuffers::CODE)),
            ("CLOSE", op(opcode::Close::CODE)),
            ("SEND_ZC", op(opcode::SendZc::CODE)),
        ];
        let params = ring.params();
        let buf_ring = crate::uring::ring::BufRing::new(&ring, 2, 64, 0)
            .map(|b| b.release(&ring))
            .is_ok();
        let features = Features {
            op_accept: op(opcode::Accept::CODE),
            op_recv_send: op(opcode::Recv::CODE) && op(opcode::Send::CODE),
            op_poll_add: op(opcode::PollAdd::CODE),
            op_timeout: op(opcode::Timeout::CODE),
            op_async_cancel: op(opcode::AsyncCancel::CODE),
            buf_ring,
            // Multishot accept came with buffer rings in 5.19, multishot
            // recv in 6.0. The opcode probe cannot see flags, so the kernel
            // release decides (and the driver needs buffer rings anyway).
            multishot_accept: buf_ring && kernel.at_least(5, 19),
            multishot_recv: buf_ring && kernel.at_least(6, 0),
            coop_taskrun,
            defer_taskrun,
            fast_poll: params.is_feature_fast_poll(),
            nodrop: params.is_feature_nodrop(),
            ext_arg: params.is_feature_ext_arg(),
            min_timeout: params.is_feature_min_timeout(),
        };
        if let Some(missing) = features.missing() {
            return Err(Unavailable::TooOld {
                missing,
                kernel: kernel.release,
            });
        }
        Ok(Probe {
            kernel,
            features,
            opcodes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        let k = KernelVersion::parse("6.18.44-fc-v669");
        assert_eq!(k.version, Some((6, 18)));
        assert!(k.at_least(6, 1) && k.at_least(5, 19) && !k.at_least(6, 19));
        assert_eq!(KernelVersion::parse("5.19.0-rc1").version, Some((5, 19)));
        assert_eq!(KernelVersion::parse("").version, None);
        assert!(!KernelVersion::parse("garbage").at_least(0, 0));
    }

    #[test]
    fn setup_errors_name_their_cause() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert!(matches!(
            classify_setup_error(e(libc::EPERM), Some(2), Some(0)),
            Unavailable::DisabledBySysctl
        ));
        assert!(matches!(
            classify_setup_error(e(libc::EPERM), Some(1), Some(0)),
            Unavailable::RestrictedBySysctl
        ));
        assert!(matches!(
            classify_setup_error(e(libc::EPERM), Some(0), Some(2)),
            Unavailable::Seccomp { .. }
        ));
        assert!(matches!(
            classify_setup_error(e(libc::ENOSYS), None, Some(2)),
            Unavailable::Seccomp { .. }
        ));
        assert!(matches!(
            classify_setup_error(e(libc::ENOSYS), None, Some(0)),
            Unavailable::NoSyscall
        ));
        assert!(matches!(
            classify_setup_error(e(libc::ENOMEM), None, None),
            Unavailable::Memlock
        ));
    }

    #[test]
    fn every_reason_is_one_line_that_suggests_epoll() {
        let reasons = [
            Unavailable::NotBuilt,
            Unavailable::DisabledBySysctl,
            Unavailable::RestrictedBySysctl,
            Unavailable::Seccomp { errno: libc::EPERM },
            Unavailable::NoSyscall,
            Unavailable::Memlock,
            Unavailable::TooOld {
                missing: "provided-buffer rings (Linux 5.19)",
                kernel: "5.15.0".into(),
            },
            Unavailable::Other(io::Error::from_raw_os_error(libc::EINVAL)),
        ];
        for r in reasons {
            let s = r.to_string();
            assert_eq!(s.lines().count(), 1, "{s}");
            assert!(s.starts_with("io_uring "), "{s}");
            assert!(s.ends_with("; use --model epoll"), "{s}");
        }
        assert_eq!(
            Unavailable::DisabledBySysctl.to_string(),
            "io_uring is disabled by sysctl kernel.io_uring_disabled=2; use --model epoll"
        );
    }

    #[test]
    fn missing_features_are_named_in_order() {
        assert!(Features::default().missing().unwrap().contains("ACCEPT"));
        let all = Features {
            op_accept: true,
            op_recv_send: true,
            op_poll_add: true,
            op_timeout: true,
            op_async_cancel: true,
            buf_ring: true,
            ..Features::default()
        };
        assert_eq!(all.missing(), None);
        let no_ring = Features {
            buf_ring: false,
            ..all
        };
        assert!(no_ring.missing().unwrap().contains("5.19"));
    }

    /// Where io_uring is usable the probe agrees with the kernel release
    /// (features appear with the versions the docs name); elsewhere it names
    /// a reason. Either way it never panics.
    #[test]
    fn probe_is_consistent_with_the_kernel() {
        match probe() {
            Ok(p) => {
                let f = p.features;
                assert_eq!(f.missing(), None);
                if p.kernel.at_least(6, 0) {
                    assert!(f.multishot_recv && f.multishot_accept);
                }
                if f.multishot_recv {
                    assert!(f.multishot_accept && f.buf_ring);
                }
                assert!(p.opcodes.iter().any(|(n, ok)| *n == "RECV" && *ok));
            }
            Err(why) => eprintln!("skipped: {why}"),
        }
    }
}
