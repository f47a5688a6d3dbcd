//! Listening sockets that outlive a process, so that a restart loses no query.
//!
//! Binding a new process beside the old one with `SO_REUSEPORT` cannot be lossless on Linux:
//! a closed UDP socket's queue is discarded, the CPU steering program picks the group's first
//! sockets (the old ones), and a closed TCP listener resets its accept queue. So the sockets
//! themselves are handed on, and queries wait in their queues while no process reads them:
//!
//! - **systemd socket activation**: `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES` (sd_listen_fds),
//!   with `config/ruddr.socket`; systemd holds the sockets across restarts of the service.
//! - **Hand-over** (without systemd): a running ruddr listens on `restart.handover_socket`; a
//!   new one started with the same setting connects, receives every listening socket with
//!   `SCM_RIGHTS` (as HAProxy and Envoy do), gets its data (snapshot or first list), starts
//!   answering, and says so; only then does the old one stop reading, finish what it read, and
//!   exit. A successor that fails before it answers leaves the old one serving.
//!
//! SCM_RIGHTS over a Unix socket rather than `fork`+`exec` of the new binary by the old one:
//! the new process is started by whatever started the old one (a shell, a supervisor, a
//! deployment tool), with its own environment and arguments, and the old one needs no idea of
//! how to start it; nothing is inherited but the sockets.
//!
//! Sockets are matched to the configuration by kind (UDP or TCP) and local address; a
//! configured address with no inherited socket is bound as usual, an inherited socket nothing
//! asks for is closed with a warning.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The hand-over protocol's greeting (new to old) and its version.
const HELLO: &str = "ruddr-handover 1";
/// Sockets per message of a hand-over (the kernel's SCM_MAX_FD is 253); larger sets go in
/// several messages.
const PER_MESSAGE: usize = 250;
/// At most this many sockets in one hand-over or from systemd (a bound, far above any
/// configuration: UDP sockets are one per core and listen address).
const MAX_SOCKETS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Udp,
    Tcp,
}

/// One listening socket.
#[derive(Debug)]
pub struct Held {
    pub fd: OwnedFd,
    pub kind: Kind,
    pub local: SocketAddr,
}

impl Held {
    /// Reads what `fd` is (its type and address); an error for anything but a bound UDP or
    /// TCP socket on IPv4 or IPv6.
    fn of(fd: OwnedFd) -> std::io::Result<Self> {
        let sock = socket2::SockRef::from(&fd);
        let kind = match sock.r#type()? {
            socket2::Type::DGRAM => Kind::Udp,
            socket2::Type::STREAM => Kind::Tcp,
            _ => return Err(std::io::Error::other("neither a UDP nor a TCP socket")),
        };
        let local = sock
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("not an IP socket"))?;
        Ok(Held { fd, kind, local })
    }
}

/// The sockets this process was given, taken one by one as the configuration asks for them.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<Held>,
    /// Whether systemd or a predecessor passed sockets at all (even if none of them could be
    /// served and all were closed): this process then takes over and waits for data.
    passed: bool,
}

impl Inherited {
    /// The sockets systemd passed (socket activation), if it passed any to this process. The
    /// variables stay (removing them is not safe once threads run); `LISTEN_PID` names this
    /// process, so a child process never takes them for its own.
    pub fn from_systemd() -> anyhow::Result<Self> {
        let pid = std::env::var("LISTEN_PID").ok();
        let fds = std::env::var("LISTEN_FDS").ok();
        let names = std::env::var("LISTEN_FDNAMES").ok();
        let (Some(pid), Some(fds)) = (pid, fds) else {
            return Ok(Self::default());
        };
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            // Meant for another process (a parent that did not clear them).
            return Ok(Self::default());
        }
        let n: usize = fds
            .parse()
            .with_context(|| format!("LISTEN_FDS={fds:?} is not a number"))?;
        anyhow::ensure!(n <= MAX_SOCKETS, "LISTEN_FDS={n}: too many sockets");
        if n == 0 {
            return Ok(Self::default());
        }
        let names: Vec<&str> = names.as_deref().unwrap_or("").split(':').collect();
        let mut sockets = Vec::with_capacity(n);
        for i in 0..n {
            let raw = 3 + i as RawFd;
            let name = names.get(i).copied().unwrap_or("");
            // Only a socket is taken: a LISTEN_FDS larger than what was passed must not make
            // this process own (and later close) a descriptor that is not one of them.
            // SAFETY: fstat writes into the zeroed struct it is given.
            let is_socket = unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                libc::fstat(raw, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
            };
            anyhow::ensure!(
                is_socket,
                "LISTEN_FDS={n}, but descriptor {raw} is not a socket"
            );
            // SAFETY: sd_listen_fds(3): descriptors 3 .. 3 + LISTEN_FDS are this process's,
            // passed open by systemd (checked a socket above); each is wrapped exactly once.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            set_cloexec(&fd)?;
            match Held::of(fd) {
                Ok(held) => {
                    info!(fd = raw, name, kind = ?held.kind, addr = %held.local, "socket from systemd");
                    sockets.push(held);
                }
                // Dropped, so closed: not one ruddr can serve.
                Err(error) => {
                    warn!(fd = raw, name, %error, "a socket from systemd that ruddr cannot serve: closed")
                }
            }
        }
        Ok(Self {
            sockets,
            passed: true,
        })
    }

    /// Nothing was passed: this process binds its own sockets.
    pub fn is_empty(&self) -> bool {
        !self.passed
    }

    /// Every inherited UDP socket bound to `addr` (several when a predecessor ran a
    /// SO_REUSEPORT group), blocking as the UDP threads want them.
    pub fn udp(&mut self, addr: SocketAddr) -> std::io::Result<Vec<std::net::UdpSocket>> {
        self.take(Kind::Udp, addr)
            .into_iter()
            .map(|fd| {
                let s = std::net::UdpSocket::from(fd);
                s.set_nonblocking(false)?;
                Ok(s)
            })
            .collect()
    }

    /// The inherited TCP listener bound to `addr`, if there is one (non-blocking, for tokio).
    pub fn tcp(&mut self, addr: SocketAddr) -> std::io::Result<Option<tokio::net::TcpListener>> {
        match self.take(Kind::Tcp, addr).into_iter().next() {
            Some(fd) => {
                let l = std::net::TcpListener::from(fd);
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l).map(Some)
            }
            None => Ok(None),
        }
    }

    fn take(&mut self, kind: Kind, addr: SocketAddr) -> Vec<OwnedFd> {
        let (taken, rest) = std::mem::take(&mut self.sockets)
            .into_iter()
            .partition(|h| h.kind == kind && h.local == addr);
        self.sockets = rest;
        taken.into_iter().map(|h: Held| h.fd).collect()
    }

    /// Closes what nothing took (a socket for an address no longer configured), saying so.
    pub fn close_rest(&mut self) {
        for h in self.sockets.drain(..) {
            warn!(kind = ?h.kind, addr = %h.local, "an inherited socket matches no configured address: closed");
        }
    }
}

/// Binds a TCP listener at `addr`, or takes the inherited one, and keeps it for a hand-over.
pub async fn tcp(
    addr: SocketAddr,
    inherited: &mut Inherited,
    listening: &Listening,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = match inherited.tcp(addr)? {
        Some(l) => l,
        None => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr} ({what})"))?,
    };
    listening.keep(&listener)?;
    Ok(listener)
}

fn set_cloexec(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: F_SETFD on a descriptor this process owns; no memory is involved.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Copies of every socket this process listens on, for a hand-over to its successor.
#[derive(Debug, Default)]
pub struct Listening {
    fds: Mutex<Vec<OwnedFd>>,
}

impl Listening {
    /// Keeps a duplicate of `socket` (the same socket: closing ours later leaves it open).
    pub fn keep(&self, socket: &impl AsFd) -> std::io::Result<()> {
        let fd = socket.as_fd().try_clone_to_owned()?;
        self.fds.lock().unwrap_or_else(|e| e.into_inner()).push(fd);
        Ok(())
    }

    fn raw(&self) -> Vec<RawFd> {
        let fds = self.fds.lock().unwrap_or_else(|e| e.into_inner());
        fds.iter().map(|f| f.as_raw_fd()).collect()
    }
}

/// A predecessor that handed its sockets over and waits to hear that this process answers.
pub struct Predecessor {
    stream: std::os::unix::net::UnixStream,
}

impl Predecessor {
    /// Asks the ruddr listening on `path` for its sockets. `Ok(None)` when none runs there.
    pub fn take_over(path: &Path) -> anyhow::Result<Option<(Inherited, Predecessor)>> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let mut stream = match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
        };
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(format!("{HELLO}\n").as_bytes())?;
        // The first message: the reply line (with the count) and the first sockets; then one
        // byte per further message of sockets.
        let mut fds: Vec<OwnedFd> = Vec::new();
        let receive = |buf: &mut [u8], fds: &mut Vec<OwnedFd>| -> anyhow::Result<usize> {
            let mut iov = [std::io::IoSliceMut::new(buf)];
            let mut space = nix::cmsg_space!([RawFd; PER_MESSAGE]);
            let msg = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .context("receiving the sockets")?;
            for cmsg in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    // SAFETY: the kernel just installed these descriptors in this process
                    // (SCM_RIGHTS); each is wrapped exactly once, before any check can return.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            anyhow::ensure!(
                !msg.flags.contains(MsgFlags::MSG_CTRUNC),
                "more sockets in one message than expected"
            );
            anyhow::ensure!(msg.bytes > 0, "the running ruddr closed the hand-over");
            Ok(msg.bytes)
        };
        let mut line = [0u8; 64];
        let got = receive(&mut line, &mut fds)?;
        let text = String::from_utf8_lossy(&line[..got]).into_owned();
        let total: usize = text
            .trim_end()
            .strip_prefix(HELLO)
            .and_then(|n| n.trim().parse().ok())
            .filter(|n| *n <= MAX_SOCKETS)
            .with_context(|| format!("unexpected hand-over reply {text:?}"))?;
        while fds.len() < total {
            receive(&mut [0u8; 1], &mut fds)?;
        }
        anyhow::ensure!(
            fds.len() == total,
            "{} sockets, {total} announced",
            fds.len()
        );
        let sockets = fds
            .into_iter()
            .map(Held::of)
            .collect::<std::io::Result<Vec<_>>>()
            .context("a handed-over socket")?;
        for h in &sockets {
            info!(kind = ?h.kind, addr = %h.local, "socket from the running ruddr");
        }
        let inherited = Inherited {
            sockets,
            passed: true,
        };
        Ok(Some((inherited, Predecessor { stream })))
    }

    /// Tells the predecessor that this process answers now; it stops reading and gives up the
    /// hand-over socket's path (waited for, so that this process can listen there next).
    pub fn answering(self) -> anyhow::Result<()> {
        let mut stream = self.stream;
        stream.write_all(b"answering\n")?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reply = String::new();
        std::io::BufReader::new(&stream).read_line(&mut reply)?;
        anyhow::ensure!(
            reply.trim_end() == "released",
            "the running ruddr did not release the hand-over: {reply:?}"
        );
        Ok(())
    }
}

/// Serves hand-overs on `path` until shutdown: a successor that connects gets every socket in
/// `listening`; once it says it answers, `handed` is cancelled (this process stops reading and
/// drains, as on SIGTERM) and the path is given up. One successor at a time.
pub async fn serve_handover(
    path: PathBuf,
    listening: Arc<Listening>,
    shutdown: CancellationToken,
    handed: CancellationToken,
) -> anyhow::Result<()> {
    // A path left by a process that is gone (nobody answers there) is stale.
    if std::os::unix::net::UnixStream::connect(&path).is_err() {
        let _ = std::fs::remove_file(&path);
    }
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("listening for hand-overs on {}", path.display()))?;
    // Whoever connects gets the listening sockets: only this user may.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    info!(path = %path.display(), "hand-over socket listening");
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    warn!(%error, "hand-over accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        match hand_over(stream, &listening, &shutdown).await {
            Ok(Some(stream)) => {
                // The successor answers: stop reading (as on SIGTERM), give up the path, and
                // tell it so.
                info!("the successor answers: stopping");
                handed.cancel();
                drop(listener);
                let _ = std::fs::remove_file(&path);
                let mut stream = stream;
                use tokio::io::AsyncWriteExt;
                let _ = stream.write_all(b"released\n").await;
                return Ok(());
            }
            Ok(None) => {}
            Err(error) => warn!(%error, "hand-over failed; going on serving"),
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// One hand-over: the greeting, the sockets, then wait for "answering" (`Some`) or for the
/// successor to give up (`None`).
async fn hand_over(
    stream: tokio::net::UnixStream,
    listening: &Listening,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<tokio::net::UnixStream>> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    // Another user's process gets nothing (the path's mode says the same; this holds even if
    // it was changed).
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let peer = stream.peer_cred()?.uid();
    anyhow::ensure!(
        peer == me,
        "refused a hand-over to user {peer} (this process runs as {me})"
    );
    let mut reader = BufReader::new(stream);
    let mut hello = String::new();
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut hello))
        .await
        .context("no greeting")??;
    anyhow::ensure!(hello.trim_end() == HELLO, "unexpected greeting {hello:?}");
    let fds = listening.raw();
    anyhow::ensure!(fds.len() <= MAX_SOCKETS, "too many sockets to hand over");
    let stream = reader.into_inner();
    let header = format!("{HELLO} {}\n", fds.len());
    // The header with the first sockets, then a byte with each further batch.
    let mut chunks = fds.chunks(PER_MESSAGE);
    let mut next: Option<(&[u8], &[RawFd])> =
        Some((header.as_bytes(), chunks.next().unwrap_or(&[])));
    while let Some((bytes, batch)) = next {
        stream.writable().await?;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[std::io::IoSlice::new(bytes)],
                &[ControlMessage::ScmRights(batch)],
                MsgFlags::empty(),
                None,
            )
            .map_err(std::io::Error::from)
        });
        match sent {
            // Small messages on a fresh connection go whole (a partial send would leave the
            // successor waiting, and the hand-over would end in its timeout).
            Ok(_) => next = chunks.next().map(|b| (&b"+"[..], b)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e).context("sending the sockets"),
        }
    }
    info!(
        sockets = fds.len(),
        "sockets handed to a successor; serving until it answers"
    );
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::select! {
        _ = shutdown.cancelled() => return Ok(None),
        read = reader.read_line(&mut line) => read,
    };
    match read {
        Ok(_) if line.trim_end() == "answering" => Ok(Some(reader.into_inner())),
        Ok(_) => {
            warn!(
                said = line.trim_end(),
                "the successor gave up before answering; going on serving"
            );
            Ok(None)
        }
        Err(error) => {
            warn!(%error, "the successor is gone before answering; going on serving");
            Ok(None)
        }
    }
}
