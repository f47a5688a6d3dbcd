//! Socket set-up: UDP sockets sharing a port (SO_REUSEPORT), steered by CPU, never
//! fragmenting; and the TCP listener on the same port.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::UdpSteering;

/// A UDP socket on `addr` with SO_REUSEPORT, so several can share the address and the kernel
/// spreads queries over them.
///
/// The socket is blocking, with a receive timeout: each is served by a thread of its own that
/// receives and sends in batches, and looks for shutdown between receives.
fn reuse_port_udp(addr: SocketAddr, receive_buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if receive_buffer > 0 {
        // Capped by the kernel at net.core.rmem_max; what it granted is logged by the caller.
        socket.set_recv_buffer_size(receive_buffer)?;
    }
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    dont_fragment(&socket, addr.is_ipv6())?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// `n` UDP sockets sharing `addr` (SO_REUSEPORT), for an address whose TCP listener was
/// inherited without its UDP half.
pub fn bind_udp_group(
    addr: SocketAddr,
    n: usize,
    receive_buffer: usize,
) -> anyhow::Result<Vec<std::net::UdpSocket>> {
    (0..n.max(1))
        .map(|_| {
            reuse_port_udp(addr, receive_buffer).with_context(|| format!("binding UDP {addr}"))
        })
        .collect()
}

/// Prepares a UDP socket this process did not bind (from systemd or a predecessor) as
/// [`reuse_port_udp`] does: the receive timeout, no fragmenting, and a receive buffer of at
/// least `receive_buffer` (a larger one, as systemd's `ReceiveBuffer=` sets, is kept).
pub fn adopt_udp(socket: &std::net::UdpSocket, receive_buffer: usize) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(socket);
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    dont_fragment(&sock, socket.local_addr()?.is_ipv6())?;
    // Linux reports twice what it grants.
    if receive_buffer > sock.recv_buffer_size()? / 2 {
        sock.set_recv_buffer_size(receive_buffer)?;
    }
    Ok(())
}

/// Responses leave with the "don't fragment" bit and are never fragmented by this host, as
/// RFC 9715 recommends (fragments are easy to spoof and often dropped): the path MTU is
/// ignored, so forged ICMP messages cannot shrink it, and an answer larger than the interface
/// MTU (only possible with `dns.max_udp_payload` above it) fails to send and goes out as an
/// empty truncated answer instead, which sends the client to TCP. This also spares the kernel
/// an IP identifier per packet.
fn dont_fragment(socket: &socket2::Socket, ipv6: bool) -> std::io::Result<()> {
    let set = |level, name, value: libc::c_int| setsockopt(socket, level, name, &value);
    if ipv6 {
        set(
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )?;
        set(libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)
    } else {
        set(
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    }
}

/// Has the kernel hand each UDP query to the socket of the CPU that received it (`cpu mod n`,
/// in the order the sockets joined the port's group) instead of by a hash of the addresses:
/// each socket's thread then serves the packets its CPU already has in cache, and a client
/// that sends from one CPU keeps one thread busy with full batches instead of waking all of
/// them with a few packets each. A classic BPF program on the group (SO_ATTACH_REUSEPORT_CBPF).
fn steer_by_cpu(socket: &std::net::UdpSocket, n: usize) -> std::io::Result<()> {
    let op = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut program = [
        // A = the CPU handling the packet.
        op(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
        ),
        // A = A mod n: a socket index.
        op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, n as u32),
        op(libc::BPF_RET | libc::BPF_A, 0),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // `fprog` points at `program`, which outlives the call; the kernel copies it.
    setsockopt(
        socket,
        libc::SOL_SOCKET,
        libc::SO_ATTACH_REUSEPORT_CBPF,
        &fprog,
    )
}

/// Sets socket option `name` at `level` to `value` (socket2 has no call for the options
/// above).
fn setsockopt<T>(
    socket: &impl std::os::fd::AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: `value` is a live `T` for the whole call, and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Binds UDP and TCP on the same address. For port 0 the UDP socket picks the port and TCP
/// takes the same one; if TCP finds it taken, try another.
pub async fn bind_pair(
    addr: SocketAddr,
    udp_sockets: usize,
    steering: UdpSteering,
    receive_buffer: usize,
) -> anyhow::Result<(Vec<std::net::UdpSocket>, TcpListener)> {
    const ATTEMPTS: usize = 20;
    for _ in 0..ATTEMPTS {
        // With port 0, a plain socket picks a port nobody holds: a socket with SO_REUSEPORT
        // bound to port 0 may be given a port another process of the same user shares.
        let at = if addr.port() == 0 {
            let probe =
                std::net::UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
            probe.local_addr()?
        } else {
            addr
        };
        let first = match reuse_port_udp(at, receive_buffer) {
            Ok(s) => s,
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e).with_context(|| format!("binding UDP {addr}")),
        };
        let bound = first.local_addr()?;
        let tcp = match TcpListener::bind(bound).await {
            Ok(tcp) => tcp,
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e).with_context(|| format!("binding TCP {addr}")),
        };
        // The others share the first one's port (with port 0, the port the first one got).
        let mut udp = vec![first];
        for _ in 1..udp_sockets.max(1) {
            udp.push(
                reuse_port_udp(bound, receive_buffer)
                    .with_context(|| format!("binding UDP {bound} again"))?,
            );
        }
        if udp.len() > 1 && steering == UdpSteering::Cpu {
            if let Err(error) = steer_by_cpu(&udp[0], udp.len()) {
                warn!(%error, "cannot steer UDP queries by CPU; the kernel spreads them by address");
            }
        }
        if let Ok(granted) = socket2::SockRef::from(&udp[0]).recv_buffer_size() {
            // Linux reports twice what it grants (the other half is its bookkeeping).
            info!(
                requested = receive_buffer,
                granted = granted / 2,
                "udp receive buffer (raise net.core.rmem_max for more)"
            );
        }
        return Ok((udp, tcp));
    }
    anyhow::bail!(
        "no port free for both UDP and TCP on {} after {ATTEMPTS} tries",
        addr.ip()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steering_by_cpu_sends_one_cpus_packets_to_one_socket() {
        let first = reuse_port_udp("127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let addr = first.local_addr().unwrap();
        let group = [
            first,
            reuse_port_udp(addr, 0).unwrap(),
            reuse_port_udp(addr, 0).unwrap(),
        ];
        steer_by_cpu(&group[0], group.len()).unwrap();
        for s in &group {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        // Loopback delivers on the sending CPU: pin this thread, send, and every packet must
        // reach the same socket (by hash, 20 source ports would spread over all three).
        // SAFETY: plain libc calls on a zeroed cpu_set_t owned here.
        let cpu = unsafe {
            let cpu = libc::sched_getcpu();
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
                0
            );
            cpu as usize
        };
        for _ in 0..20 {
            let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            client.send_to(b"x", addr).unwrap();
        }
        let mut buf = [0u8; 8];
        let got: Vec<usize> = group
            .iter()
            .map(|s| std::iter::from_fn(|| s.recv_from(&mut buf).ok()).count())
            .collect();
        assert_eq!(got[cpu % group.len()], 20, "{got:?} (cpu {cpu})");
    }
}
