//! Terminals and unix sockets for attach and `exec -t`: the pty master libcontainer sends over
//! a console socket, window sizes, and socket paths of any length.

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A unix socket's path can hold only 107 bytes; container directories can be longer. A path
/// through `/proc/self/fd/<dir fd>/` is always short; the returned `File` must stay open while
/// the path is used.
fn short_path(path: &Path) -> io::Result<(File, PathBuf)> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "socket path has no name"))?;
    let d = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", d.as_raw_fd())).join(name);
    Ok((d, short))
}

/// Binds a listening unix socket at `path` (an old socket file there is replaced).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let (_dir, short) = short_path(path)?;
    UnixListener::bind(short)
}

/// Connects to the unix socket at `path`.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    let (_dir, short) = short_path(path)?;
    UnixStream::connect(short)
}

/// Accepts libcontainer's connection on a console socket and receives the pty master it sends
/// (`SCM_RIGHTS`), waiting at most `timeout`.
pub fn receive_pty_master(listener: &UnixListener, timeout: Duration) -> io::Result<OwnedFd> {
    listener.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + timeout;
    let conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the container did not send its terminal",
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(timeout))?;
    let mut name = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            let mut fds = fds.into_iter();
            if let Some(fd) = fds.next() {
                for extra in fds {
                    // SAFETY: the kernel just installed `extra` in our table; nothing owns it.
                    drop(unsafe { OwnedFd::from_raw_fd(extra) });
                }
                // SAFETY: as above: a fresh descriptor from SCM_RIGHTS, owned by nobody else.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "the console socket message carried no descriptor",
    ))
}

/// Sets a terminal's window size (`TIOCSWINSZ`); the foreground process group gets SIGWINCH.
pub fn set_window_size(fd: impl AsFd, width: u16, height: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize, which `ws` is and which outlives the call.
    if unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts a descriptor into non-blocking mode.
pub fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let raw = fd.as_fd().as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(raw, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    fcntl(raw, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_work_under_paths_longer_than_sun_path() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("d".repeat(100)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("attach.sock");
        assert!(path.as_os_str().len() > 108);
        let l = bind(&path).unwrap();
        let mut c = connect(&path).unwrap();
        let (mut s, _) = l.accept().unwrap();
        use std::io::{Read, Write};
        c.write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hi");
    }

    #[test]
    fn pty_master_travels_over_a_console_socket_and_takes_a_size() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("console.sock");
        let l = bind(&path).unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        let c = connect(&path).unwrap();
        let fds = [pty.master.as_raw_fd()];
        nix::sys::socket::sendmsg::<UnixAddr>(
            c.as_raw_fd(),
            &[io::IoSlice::new(b"/dev/ptmx")],
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let master = receive_pty_master(&l, Duration::from_secs(5)).unwrap();
        set_window_size(&master, 100, 30).unwrap();
        // SAFETY: TIOCGWINSZ writes a winsize into `ws`, which outlives the call.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: as above; the slave descriptor is open.
        let r = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(r, 0);
        assert_eq!((ws.ws_col, ws.ws_row), (100, 30));
    }
}
