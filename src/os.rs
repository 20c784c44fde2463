//! What QProxy asks of the operating system beyond sockets: the open file
//! limit, transparent huge pages, the record writer's scheduling, a
//! filesystem's free space, the clock tick, and socket options on sockets a
//! library opened (rumqttd's listener, rumqttc's connection). Every `unsafe`
//! call of the crate lives here, each where the OS offers no safe call,
//! with its SAFETY comment; the rest of the crate calls these safe
//! functions.

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

/// Turns transparent huge pages off for this process (Linux; elsewhere
/// nothing). See `main` for why.
pub fn disable_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes
    // nothing but this process's huge page policy.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Makes the calling thread batch work (`SCHED_BATCH`, no privilege
/// needed) or normal work again; false when the OS refuses or has no such
/// policy.
pub fn set_batch_scheduling(batch: bool) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let policy = if batch {
            libc::SCHED_BATCH
        } else {
            libc::SCHED_OTHER
        };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` outlives the call.
        if unsafe { libc::sched_setscheduler(0, policy, &param) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = batch;
        Err(io::Error::other("no batch scheduling here"))
    }
}

/// Whether the calling thread runs as batch work.
pub fn is_batch_scheduled() -> bool {
    #[cfg(target_os = "linux")]
    // SAFETY: pid 0 is the calling thread; the call only reads.
    return unsafe { libc::sched_getscheduler(0) } == libc::SCHED_BATCH;
    #[cfg(not(target_os = "linux"))]
    false
}

/// This process's open descriptors with their `/proc/self/fd` paths (none
/// where there is no `/proc`).
#[cfg(unix)]
fn open_descriptors() -> impl Iterator<Item = (i32, std::path::PathBuf)> {
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse::<i32>().ok()?;
            Some((fd, entry.path()))
        })
}

/// Sets `TCP_NODELAY` on this process's listening socket bound to `addr`,
/// found among its open descriptors (for a listener a library opened and
/// does not expose). False when there is none.
pub fn set_nodelay_on_listener(addr: std::net::SocketAddr) -> bool {
    #[cfg(unix)]
    {
        use std::os::fd::BorrowedFd;
        for (fd, _) in open_descriptors() {
            // SAFETY: the descriptor is open (listed just now) and only
            // borrowed for the calls below; the library never closes its
            // listener.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let socket = socket2::SockRef::from(&fd);
            let ours = socket.is_listener().unwrap_or(false)
                && socket.local_addr().ok().and_then(|a| a.as_socket()) == Some(addr);
            if ours {
                return socket.set_tcp_nodelay(true).is_ok();
            }
        }
        false
    }
    #[cfg(not(unix))]
    {
        let _ = addr;
        false
    }
}

/// Size and free space of the filesystem holding `path` (`statvfs`), in
/// bytes: (size, free, available to unprivileged users).
pub fn filesystem_space(path: &std::path::Path) -> io::Result<(u64, u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
        // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is NUL-terminated and `stat` is ours; both outlive the call.
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let unit = stat.f_frsize as u64;
        Ok((
            stat.f_blocks as u64 * unit,
            stat.f_bfree as u64 * unit,
            stat.f_bavail as u64 * unit,
        ))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Err(io::Error::other("no statvfs here"))
    }
}

/// Clock ticks a second, the unit of the CPU times in `/proc` (100 on
/// every Linux seen, but the kernel says).
pub fn clock_ticks_per_second() -> u64 {
    #[cfg(unix)]
    {
        // SAFETY: sysconf takes an integer and only reads.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks > 0 {
            return ticks as u64;
        }
    }
    100
}
/// A TCP socket of this process that a library opened and does not
/// expose (the MQTT client's), known by its descriptor and its inode, so a
/// descriptor closed and reused for something else is never touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForeignSocket {
    fd: i32,
    inode: u64,
}

/// This process's TCP sockets connected to one of `peers`, found among its
/// open descriptors.
pub fn sockets_connected_to(peers: &[std::net::SocketAddr]) -> Vec<ForeignSocket> {
    let mut found = Vec::new();
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::BorrowedFd;
        for (fd, path) in open_descriptors() {
            let Some(inode) = std::fs::read_link(path).ok().and_then(|target| {
                target
                    .to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            }) else {
                continue;
            };
            // SAFETY: the descriptor is open (listed just now) and only
            // borrowed for the call below.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            let peer = socket2::SockRef::from(&borrowed)
                .peer_addr()
                .ok()
                .and_then(|a| a.as_socket());
            if peer.is_some_and(|p| peers.contains(&p)) {
                found.push(ForeignSocket { fd, inode });
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = peers;
    found
}

impl ForeignSocket {
    /// Sets `TCP_QUICKACK` (Linux): the ACK of what arrived goes out now
    /// rather than up to 40 ms later, so a peer whose Nagle's algorithm
    /// holds its next small write until that ACK is not held. The kernel
    /// leaves quick-ACK mode by itself, so callers set it after each read.
    /// False when the descriptor no longer holds this socket.
    pub fn quickack(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::BorrowedFd;
            // SAFETY: an all-zero stat is a valid value of this plain C struct.
            let mut stat: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fstat writes one `stat` through a pointer to ours; a
            // closed descriptor is an error, not undefined behaviour.
            if unsafe { libc::fstat(self.fd, &mut stat) } != 0 || stat.st_ino != self.inode {
                return false;
            }
            // SAFETY: the descriptor is open and holds the socket found
            // before (same inode); it is only borrowed for this call.
            let borrowed = unsafe { BorrowedFd::borrow_raw(self.fd) };
            socket2::SockRef::from(&borrowed)
                .set_tcp_quickack(true)
                .is_ok()
        }
        #[cfg(not(target_os = "linux"))]
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_socket_found_by_its_peer_takes_quickack_until_it_is_closed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = std::net::TcpStream::connect(addr).unwrap();
        let _accepted = listener.accept().unwrap();
        let found = sockets_connected_to(&[addr]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].quickack());
        drop(stream);
        // Whatever takes the descriptor next is not touched.
        let _next = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!found[0].quickack());
    }

    #[test]
    fn the_filesystem_of_a_path_has_a_size() {
        let (size, free, available) = filesystem_space(std::path::Path::new("/")).unwrap();
        assert!(
            size > 0 && free <= size && available <= free,
            "{size} {free} {available}"
        );
        assert!(filesystem_space(std::path::Path::new("/no/such/dir")).is_err());
        assert!(clock_ticks_per_second() > 0);
    }
}
