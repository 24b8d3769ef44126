//! Who is on the other end of a Unix socket, for `lmx info` and the logs: `pid N uid U`.
//!
//! Why per OS: Linux answers both with `SO_PEERCRED`; macOS and FreeBSD have no `SO_PEERCRED`
//! but `getpeereid` for the uid, and the pid through `LOCAL_PEERPID` (macOS) or the `cr_pid`
//! of `LOCAL_PEERCRED` (FreeBSD 13 and later). Other systems say "unix socket".

use std::os::fd::{AsRawFd, RawFd};

/// The peer of a Unix socket as the broker names it.
pub(super) fn unix_peer(s: &impl AsRawFd) -> String {
    match peer_cred(s.as_raw_fd()) {
        Some((Some(pid), uid)) => format!("pid {pid} uid {uid}"),
        Some((None, uid)) => format!("uid {uid}"),
        None => "unix socket".to_string(),
    }
}

/// `getsockopt` of a plain value; `None` on any error.
#[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
fn getsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, mut v: T) -> Option<T> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes of the sizes given; the descriptor is open.
    let r = unsafe { libc::getsockopt(fd, level, name, (&raw mut v).cast(), &mut len) };
    (r == 0).then_some(v)
}

#[cfg(target_os = "linux")]
fn peer_cred(fd: RawFd) -> Option<(Option<libc::pid_t>, libc::uid_t)> {
    let empty = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let c = getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, empty)?;
    Some((Some(c.pid), c.uid))
}

#[cfg(any(target_os = "macos", target_os = "freebsd"))]
fn peer_cred(fd: RawFd) -> Option<(Option<libc::pid_t>, libc::uid_t)> {
    let (mut uid, mut gid) = (0, 0);
    // SAFETY: two valid out-pointers; the descriptor is open.
    if unsafe { libc::getpeereid(fd, &mut uid, &mut gid) } != 0 {
        return None;
    }
    Some((peer_pid(fd), uid))
}

#[cfg(target_os = "macos")]
fn peer_pid(fd: RawFd) -> Option<libc::pid_t> {
    getsockopt::<libc::pid_t>(fd, libc::SOL_LOCAL, libc::LOCAL_PEERPID, 0)
}

#[cfg(target_os = "freebsd")]
fn peer_pid(fd: RawFd) -> Option<libc::pid_t> {
    // SAFETY: xucred is plain data; all zeroes is a valid value of it.
    let mut cred: libc::xucred = unsafe { std::mem::zeroed() };
    cred.cr_version = libc::XUCRED_VERSION;
    let cred = getsockopt(fd, libc::SOL_LOCAL, libc::LOCAL_PEERCRED, cred)?;
    // SAFETY: the kernel fills `cr_pid` (FreeBSD 13+; zero before, which means unknown).
    let pid = unsafe { cred.cr_pid__c_anonymous_union.cr_pid };
    (pid > 0).then_some(pid)
}

#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "freebsd")))]
fn peer_cred(_: RawFd) -> Option<(Option<libc::pid_t>, libc::uid_t)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends of a socket pair belong to this process: the peer is our own pid and uid.
    #[test]
    fn names_the_peer_by_pid_and_uid() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        // SAFETY: no preconditions.
        let uid = unsafe { libc::geteuid() };
        assert_eq!(
            unix_peer(&a),
            format!("pid {} uid {uid}", std::process::id())
        );
    }
}
