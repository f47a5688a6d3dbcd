//! The unsafe part of the UDP transport: `recvmmsg` and `sendmmsg` over a batch of buffers.

use std::io;
use std::net::SocketAddr;

use tracing::debug;

use crate::dns::wire;

/// A receive timeout (the socket's SO_RCVTIMEO, so the thread can see shutdown).
pub(super) fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Queries received and responses to send, a batch at a time: one `recvmmsg` and one
/// `sendmmsg` per batch instead of two system calls per query.
pub(super) struct Batch {
    rx: Vec<[u8; RX_BYTES]>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    out: Vec<Vec<u8>>,
    names: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
    flags: Vec<libc::c_int>,
    name_lens: Vec<libc::socklen_t>,
    /// The slot of each message of the last `send`.
    sent_slots: Vec<usize>,
}

/// Queries in one batch at most.
const BATCH: usize = 32;
/// Largest UDP query read (larger ones are cut and dropped: no client sends them).
const RX_BYTES: usize = 4096;

impl Batch {
    pub(super) fn new() -> Self {
        // SAFETY: an all-zero sockaddr_storage is a valid (unspecified) address.
        let zero: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        Self {
            rx: vec![[0u8; RX_BYTES]; BATCH],
            iov: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
            out: (0..BATCH).map(|_| Vec::with_capacity(1232)).collect(),
            names: vec![zero; BATCH],
            lens: vec![0; BATCH],
            flags: vec![0; BATCH],
            name_lens: vec![0; BATCH],
            sent_slots: Vec::with_capacity(BATCH),
        }
    }

    /// Waits for at least one datagram, then takes up to a batch of those already queued.
    pub(super) fn receive(&mut self, socket: &std::net::UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // The headers point into this batch's buffers; they are rebuilt for every call (in
        // vectors that keep their capacity) so no pointer outlives a move of the batch.
        self.iov.clear();
        for b in &mut self.rx {
            self.iov.push(libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: RX_BYTES,
            });
        }
        self.hdrs.clear();
        for i in 0..BATCH {
            // SAFETY: a zeroed mmsghdr is valid; the pointers set point into `self`, which
            // outlives the call.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        // SAFETY: see above; the kernel writes at most BATCH headers.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in self.hdrs.iter().take(n).enumerate() {
            self.lens[i] = h.msg_len as usize;
            self.flags[i] = h.msg_hdr.msg_flags;
            self.name_lens[i] = h.msg_hdr.msg_namelen;
            self.out[i].clear();
        }
        Ok(n)
    }

    /// Datagram `i` of the last batch, its sender and its response buffer; `None` when it was
    /// cut (longer than a buffer) or its sender is not an IP address.
    pub(super) fn query(&mut self, i: usize) -> Option<(&[u8], SocketAddr, &mut Vec<u8>)> {
        if self.flags[i] & libc::MSG_TRUNC != 0 {
            return None;
        }
        let src = socket_addr(&self.names[i])?;
        Some((&self.rx[i][..self.lens[i]], src, &mut self.out[i]))
    }

    /// Sends every non-empty response of the first `n` slots to its query's sender.
    pub(super) fn send(&mut self, socket: &std::net::UdpSocket, n: usize) {
        use std::os::fd::AsRawFd;
        self.iov.clear();
        self.hdrs.clear();
        self.sent_slots.clear();
        for i in 0..n {
            if self.out[i].is_empty() {
                continue;
            }
            self.iov.push(libc::iovec {
                iov_base: self.out[i].as_mut_ptr().cast(),
                iov_len: self.out[i].len(),
            });
            // SAFETY: as in `receive`; the names are the senders the kernel wrote.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = self.name_lens[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
            self.sent_slots.push(i);
        }
        // The iovecs are in place now (no more pushes): point the headers at them.
        for (h, iov) in self.hdrs.iter_mut().zip(self.iov.iter_mut()) {
            h.msg_hdr.msg_iov = iov;
        }
        let mut done = 0;
        let mut cut = usize::MAX;
        while done < self.hdrs.len() {
            // SAFETY: as above.
            let sent = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    self.hdrs[done..].as_mut_ptr(),
                    (self.hdrs.len() - done) as libc::c_uint,
                    0,
                )
            };
            if sent > 0 {
                done += sent as usize;
                continue;
            }
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EMSGSIZE) && cut != done {
                // Larger than the interface MTU, and sockets never fragment: send an empty
                // truncated answer instead (in the same buffer), so the client asks over TCP.
                cut = done;
                let slot = self.sent_slots[done];
                wire::slip(&mut self.out[slot]);
                self.iov[done].iov_len = self.out[slot].len();
                continue;
            }
            // The first message failed (a vanished peer): skip it, send the rest.
            debug!(%error, "udp send failed");
            done += 1;
        }
    }
}

/// The IP address and port in a `sockaddr_storage` the kernel filled.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: an AF_INET address is a sockaddr_in, which fits in the storage.
            let a: &libc::sockaddr_in =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: an AF_INET6 address is a sockaddr_in6, which fits in the storage.
            let a: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin6_port)))
        }
        _ => None,
    }
}
