//! What QProxy asks of the operating system beyond sockets: the open file
//! limit. The `unsafe` calls for it live here, one SAFETY comment each.

use std::io;

/// The open file limit as (soft, hard), or `None` where it cannot be read.
pub fn fd_limits() -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one `rlimit` through a pointer to ours,
        // which lives across the call.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
        ok.then_some((limit.rlim_cur, limit.rlim_max))
    }
    #[cfg(not(unix))]
    None
}

/// Raises the soft open file limit to the hard one: every connection is a
/// file, and distributions start processes at 1024 while allowing far
/// more. An unlimited hard limit is taken as the most the kernel gives one
/// process (`fs.nr_open`). Returns the soft limit before and after.
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = fd_limits().ok_or_else(|| io::Error::other("no open file limit here"))?;
    #[cfg(unix)]
    {
        let target = if hard == libc::RLIM_INFINITY {
            std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(1 << 20)
        } else {
            hard
        };
        if soft >= target {
            return Ok((soft, soft));
        }
        let limit = libc::rlimit {
            rlim_cur: target,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads one `rlimit` through a pointer to ours,
        // which lives across the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((soft, target))
    }
    #[cfg(not(unix))]
    Ok((soft, hard))
}
