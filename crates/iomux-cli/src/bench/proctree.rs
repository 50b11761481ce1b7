//! A process and its descendants, read from `/proc`: how the bench measures
//! a server that has no control channel (`bench --server`, a forking one
//! as a whole; `bench --addr ...,pid=PID`, each process named alone).
//!
//! CPU is, for every living process of the tree, the run time of each of
//! its threads (`/proc/PID/task/TID/schedstat`, in nanoseconds; `utime +
//! stime` in clock ticks where that file is missing) plus its `cutime +
//! cstime`: a descendant that exited and was reaped has its time in its
//! parent's, so it is counted once, whether alive or gone (only a thread
//! that ended inside a living process is lost, to within a tick). Ticks
//! alone would not do: a forking server's many small processes each round
//! down to a tick of 10 ms.
//!
//! Memory is the sum of `Pss` (`/proc/PID/smaps_rollup`: each shared page
//! divided among its sharers, so a forking server's children do not count
//! the same libraries each) and the sum of each process's peak `VmHWM`
//! (which does count shared pages in each).

use std::collections::HashSet;

use anyhow::{anyhow, Context, Result};

/// CPU and memory of a process tree.
#[derive(Clone, Copy, Debug, Default)]
pub struct TreeUsage {
    /// CPU time of the tree, microseconds.
    pub cpu_us: u64,
    /// Proportional resident bytes (Pss), summed.
    pub rss: u64,
    /// Peak resident bytes, summed over the processes.
    pub peak_rss: u64,
}

/// One process: its id, its parent's, its own CPU ticks (utime, stime)
/// and its reaped children's (cutime, cstime).
#[derive(Clone, Copy)]
struct Proc {
    pid: u32,
    ppid: u32,
    own_ticks: u64,
    child_ticks: u64,
}

fn stat(pid: u32) -> Option<Proc> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: fields follow the
    // last ')'. After it: state(3) ppid(4) ... utime(14) stime(15)
    // cutime(16) cstime(17), 1-based as in proc(5).
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Proc {
        pid,
        ppid: num(4)? as u32,
        own_ticks: num(14)? + num(15)?,
        child_ticks: num(16)? + num(17)?,
    })
}

/// The time `pid`'s living threads spent on a CPU and waiting in a run
/// queue for one (runnable, another task on the CPU), in nanoseconds, if
/// the kernel keeps it (`/proc/PID/task/TID/schedstat`).
pub fn sched_ns(pid: u32) -> Option<(u64, u64)> {
    let (mut run, mut wait) = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
        run += f.next()??;
        wait += f.next()??;
    }
    Some((run, wait))
}

/// `root` and every living descendant.
fn tree(root: u32) -> Vec<Proc> {
    let all: Vec<Proc> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .collect();
    let mut members: Vec<Proc> = all.iter().filter(|p| p.pid == root).copied().collect();
    let mut i = 0;
    while i < members.len() {
        let parent = members[i].pid;
        members.extend(all.iter().filter(|p| p.ppid == parent));
        i += 1;
    }
    members
}

/// A `kB` field of `/proc/PID/status` (or `smaps_rollup`), in bytes, if
/// present (a zombie has none).
fn status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// Microseconds of `ticks` clock ticks.
fn ticks_us(ticks: u64) -> u64 {
    // SAFETY: sysconf has no preconditions; _SC_CLK_TCK is a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000 / hz
}

/// The CPU time of `p`'s own living threads, microseconds.
fn own_cpu_us(p: &Proc) -> u64 {
    sched_ns(p.pid).map_or(ticks_us(p.own_ticks), |(ns, _)| ns / 1000)
}

/// The CPU time of process `pid` alone (its threads, not its children),
/// microseconds: how the bench reads a server it did not start (`--addr
/// ...,pid=PID`).
pub fn cpu_us(pid: u32) -> Result<u64> {
    let p = stat(pid)
        .ok_or_else(|| anyhow!("cannot read /proc/{pid}/stat: is process {pid} running?"))?;
    Ok(own_cpu_us(&p))
}

/// Resident and peak resident memory of process `pid` alone (VmRSS,
/// VmHWM), in bytes.
pub fn memory(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field =
        |name: &str| status_kib(&status, name).ok_or_else(|| anyhow!("no {name} in {path}"));
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU and memory of `root` and its descendants.
pub fn usage(root: u32) -> Result<TreeUsage> {
    let members = tree(root);
    if members.is_empty() {
        return Err(anyhow!("process {root} is gone"));
    }
    let mut u = TreeUsage::default();
    for p in members {
        u.cpu_us += own_cpu_us(&p) + ticks_us(p.child_ticks);
        let pid = p.pid;
        let (Ok(status), Ok(rollup)) = (
            std::fs::read_to_string(format!("/proc/{pid}/status")),
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")),
        ) else {
            continue; // exited meanwhile
        };
        u.rss += status_kib(&rollup, "Pss:").unwrap_or(0);
        u.peak_rss += status_kib(&status, "VmHWM:").unwrap_or(0);
    }
    Ok(u)
}

/// Distinct sockets the tree holds open (by inode, so one inherited by a
/// forked child counts once).
pub fn sockets(root: u32) -> usize {
    let mut inodes = HashSet::new();
    for pid in tree(root).into_iter().map(|p| p.pid) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if t.starts_with("socket:") {
                    inodes.insert(t.into_owned());
                }
            }
        }
    }
    inodes.len()
}

/// Sends `sig` to the process group `pgid` (a server the bench started in
/// a group of its own); a group already gone is no error.
pub fn signal_group(pgid: u32, sig: i32) {
    if let Ok(pgid) = i32::try_from(pgid) {
        kill(-pgid, sig);
    }
}

/// Sends `sig` to process `pid` (a child the bench started and has not
/// reaped); one already gone is no error.
pub fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        kill(pid, sig);
    }
}

fn kill(target: i32, sig: i32) {
    // SAFETY: kill has no memory preconditions; `target` names a process
    // or group this bench started.
    unsafe { libc::kill(target, sig) };
}

/// Whether `pid` has exited: gone, or a zombie waiting to be reaped.
pub fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => text
            .rfind(')')
            .and_then(|i| text[i + 1..].split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// The number of threads of one process (`Threads:` of its status).
pub fn threads(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no Threads: line in /proc/{pid}/status"))
}
