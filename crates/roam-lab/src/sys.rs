//! The few system calls the lab makes itself, behind safe wrappers: entering a network
//! namespace, AF_PACKET sockets (the link emulator and captures), `ppoll` with a
//! nanosecond timeout, process signals. Everything `unsafe` in the crate is here.

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// `sll_pkttype` of a frame this host sent (linux/if_packet.h).
pub(crate) const PACKET_OUTGOING: u8 = 4;
/// Socket option: do not loop our own transmissions back to us (Linux ≥ 4.20).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// Moves the calling thread (only it: network namespaces are per thread) into the named
/// namespace, as `ip netns exec` does for a process. Sockets it opens afterwards belong to
/// that namespace for their whole life, whichever thread uses them later.
pub(crate) fn enter_netns(name: &str) -> io::Result<()> {
    let file = std::fs::File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns on a valid fd we own; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks for 1 µs timer slack on this thread (default 50 µs): the link emulator releases
/// frames when they are due, and a 100 Mbit/s frame lasts 120 µs.
pub(crate) fn tight_timer_slack() {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

pub(crate) fn is_root() -> bool {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a process with this pid exists (a zombie counts).
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// SIGKILL to a whole process group (children are spawned as group leaders, so this
/// reaches whatever they forked too).
pub(crate) fn kill_group(pgid: u32) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid)
        && pgid > 1
    {
        // SAFETY: plain signal delivery; an already-gone group gives ESRCH, ignored.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Sends `signal` to one process (SIGSTOP and SIGCONT to stand a daemon still).
pub(crate) fn signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    if pid <= 1 {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    // SAFETY: plain signal delivery to a process we spawned; no memory is shared.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SIGKILL to one process.
pub(crate) fn kill_pid(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid)
        && pid > 1
    {
        // SAFETY: plain signal delivery.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// A pidfd (Linux ≥ 5.3): readable when the process exits, so a wait can sit in `poll`
/// with a timeout next to the process's output pipes.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: raw syscall with integer arguments; on success it returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits until one of `fds` is ready or `timeout` passes. `ppoll` takes a timespec, so
/// the timeout is honoured to the nanosecond (plus timer slack), not rounded to a
/// millisecond as `poll` would. EINTR counts as a timeout.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: fds is a valid slice of pollfd, ts lives across the call, no signal mask.
    let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &ts, std::ptr::null()) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(rc as usize)
}

pub(crate) fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// The index of a network interface in the calling thread's namespace.
pub(crate) fn if_index(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

/// One frame read from a packet socket.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Received {
    /// The frame's real length (may exceed the buffer: then it was truncated).
    pub len: usize,
    /// `sll_pkttype`: host, broadcast, other host, outgoing...
    pub pkttype: u8,
    /// The kernel's receive timestamp (CLOCK_REALTIME) when asked for.
    pub timestamp: Option<Duration>,
}

/// An AF_PACKET raw socket bound to one interface, non-blocking.
#[derive(Debug)]
pub(crate) struct PacketSocket {
    fd: OwnedFd,
}

pub(crate) struct PacketOptions {
    pub ignore_outgoing: bool,
    pub timestamps: bool,
    pub receive_buffer: usize,
}

impl PacketSocket {
    /// Opens and binds the socket in the calling thread's namespace.
    pub(crate) fn open(interface: &str, options: &PacketOptions) -> io::Result<PacketSocket> {
        let ifindex = if_index(interface)?;
        // Protocol 0 at creation: the socket receives nothing until bound to the
        // interface below, so no frame from another interface slips in between.
        // SAFETY: plain socket creation; the fd is owned right after.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let socket = PacketSocket { fd };
        // A burst of a TCP window arrives faster than one thread drains it; the default
        // 208 KiB holds ~90 frames. FORCE (root) bypasses rmem_max.
        let size = options.receive_buffer.min(i32::MAX as usize) as libc::c_int;
        if socket
            .setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size)
            .is_err()
        {
            socket.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, size)?;
        }
        if options.ignore_outgoing {
            socket.setsockopt(libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)?;
        }
        if options.timestamps {
            socket.setsockopt(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
        }
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(socket)
    }

    fn setsockopt(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
        // SAFETY: value is a c_int that lives across the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one frame into `buf`; `None` when nothing is waiting.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Received>> {
        // SAFETY: all of these are plain data; zeroed is valid.
        let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
        // Room for one SCM_TIMESTAMPNS (a timespec) with its header, aligned.
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 8]>() as _;
        // MSG_TRUNC: return the frame's real length even when it did not fit.
        // SAFETY: every pointer in msg refers to a live local or to buf.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock || err.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(err);
        }
        let mut timestamp = None;
        // SAFETY: walking the control messages the kernel wrote into `control`, with the
        // libc macros that bound every step by msg_controllen.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    timestamp = Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Ok(Some(Received {
            len: n as usize,
            pkttype: addr.sll_pkttype,
            timestamp,
        }))
    }

    /// Puts one complete Ethernet frame on the bound interface.
    pub(crate) fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is a valid slice for the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Frames the kernel dropped because this socket's buffer was full, since the last
    /// call (PACKET_STATISTICS resets on read).
    pub(crate) fn take_drops(&self) -> io::Result<u64> {
        // SAFETY: tpacket_stats is plain data.
        let mut stats: libc::tpacket_stats = unsafe { zeroed() };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: stats and len are valid for writing.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut stats as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(u64::from(stats.tp_drops))
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
