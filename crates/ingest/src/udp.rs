//! UDP sockets of the plaintext listeners (Graphite, StatsD): binding with a large kernel
//! buffer, batched receives, and the socket's own kernel drop counter.
//!
//! - **Batched receives**: one `recvmmsg(2)` (through `nix`'s safe wrapper; the workspace
//!   denies `unsafe_code`) fills up to `udp_batch_datagrams` buffers of
//!   `max_udp_packet_bytes` each, so a flood of one-metric datagrams costs one system call
//!   per batch instead of one per datagram. `MSG_WAITFORONE`: the call blocks (at most
//!   [`UDP_POLL`], the socket's read timeout, so shutdown and switch changes are noticed)
//!   until one datagram is there, then takes whatever else is already queued. After a
//!   batch that emptied the socket the reader naps [`UDP_NAP`] (1 ms), so that under load
//!   it wakes up once per batch rather than once per datagram.
//! - **Kernel buffer**: `SO_RCVBUF` is capped by `net.core.rmem_max`; when that is smaller
//!   than `udp_recv_buffer_bytes`, `SO_RCVBUFFORCE` (needs `CAP_NET_ADMIN`, e.g. root) is
//!   tried first. The effective size (as the kernel reports it: twice the request, for its
//!   bookkeeping) is logged and exported as `roaster_ingest_udp_receive_buffer_bytes`.
//! - **Drops the kernel makes** on our socket (buffer full, including while the source is
//!   paused and the socket is not read) are read from the `drops` column of
//!   `/proc/net/udp{,6}` for the socket's inode, and exported per source as
//!   `roaster_ingest_udp_socket_drops_total`; this counter is exact for our socket, unlike
//!   the host-wide `RcvbufErrors`.
//! - Each received datagram is checked against the allow-list and the kill switch; a
//!   datagram the kernel truncated (`MSG_TRUNC`) loses its cut last line (refused as
//!   `line_too_long`), never parsed as a wrong value.
//!
//! Invariants: the reader never allocates per datagram; the buffers are allocated once per
//! socket (`udp_batch_datagrams × max_udp_packet_bytes`).

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::time::Duration;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};

use crate::telemetry::reason;
use crate::{IngestError, Shared, Source, SwitchState};

/// How long a UDP reader blocks before checking for shutdown and flushing its batch.
pub(crate) const UDP_POLL: Duration = Duration::from_millis(50);

/// After a batch that emptied the socket (fewer datagrams than the batch holds), the reader
/// sleeps this long before receiving again, so datagrams accumulate and the next calls
/// return full batches. Without it, a reader faster than its senders blocks and is woken
/// once per datagram: a context switch per datagram was a third of the reader's CPU at
/// 300,000 datagrams/s (perf). At 800,000 datagrams/s this lets 800 datagrams (about 1 MB
/// of kernel buffer) wait, far below `udp_recv_buffer_bytes`.
pub(crate) const UDP_NAP: Duration = Duration::from_millis(1);

/// Binds a UDP socket with the configured receive buffer and a short read timeout.
pub(crate) fn bind_udp(
    sh: &Shared,
    source: Source,
    addr: SocketAddr,
) -> Result<std::net::UdpSocket, IngestError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |e| IngestError::Bind {
        listener: source.as_str(),
        addr,
        source: e,
    };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    let want = sh.cfg.udp_recv_buffer_bytes;
    let forced = force_recv_buffer(&socket, want);
    if !forced && let Err(e) = socket.set_recv_buffer_size(want) {
        tracing::warn!(listener = source.as_str(), error = %e, "cannot set the udp receive buffer");
    }
    // the kernel reports twice what was set (its bookkeeping overhead)
    let effective = socket.recv_buffer_size().unwrap_or(0);
    sh.metrics
        .udp_rcvbuf_bytes
        .set(i64::try_from(effective).unwrap_or(i64::MAX));
    if effective < want {
        tracing::warn!(
            listener = source.as_str(),
            requested = want,
            effective,
            "the kernel capped the udp receive buffer; raise net.core.rmem_max or run with CAP_NET_ADMIN to avoid drops"
        );
    } else {
        tracing::info!(
            listener = source.as_str(),
            requested = want,
            effective,
            forced,
            "udp receive buffer set"
        );
    }
    socket.bind(&addr.into()).map_err(err)?;
    let socket: std::net::UdpSocket = socket.into();
    socket.set_read_timeout(Some(UDP_POLL)).map_err(err)?;
    if let Some(inode) = socket_inode(&socket) {
        sh.metrics.udp_sockets.lock().push((source, inode));
    }
    tracing::info!(listener = source.as_str(), addr = %socket.local_addr().map_err(err)?, "listening");
    Ok(socket)
}

/// Sets the receive buffer with `SO_RCVBUFFORCE` when `net.core.rmem_max` would cap
/// `SO_RCVBUF` below `want`; `true` when that worked.
fn force_recv_buffer(socket: &socket2::Socket, want: usize) -> bool {
    let cap = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok());
    if cap.is_some_and(|c| c >= want) {
        return false;
    }
    let Ok(size) = usize::try_from(i32::MAX).map(|m| want.min(m)) else {
        return false;
    };
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::RcvBufForce, &size).is_ok()
}

/// The inode of a socket (`/proc/self/fd/N` → `socket:[inode]`), to find it in `/proc/net/udp`.
fn socket_inode(socket: &std::net::UdpSocket) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let path = format!("/proc/self/fd/{}", socket.as_raw_fd());
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Kernel drops of the sockets with these inodes, summed per inode, from the `drops` column
/// of `/proc/net/udp` and `/proc/net/udp6`; inodes not found are absent.
pub(crate) fn socket_drops(inodes: &[u64]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            out.extend(parse_socket_drops(&text, inodes));
        }
    }
    out
}

/// Parses a `/proc/net/udp` table: `(inode, drops)` of the rows whose inode is wanted.
fn parse_socket_drops(text: &str, inodes: &[u64]) -> Vec<(u64, u64)> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let cols: Vec<&str> = header.split_whitespace().collect();
    let (Some(ino_col), Some(drops_col)) = (
        cols.iter().position(|c| *c == "inode"),
        cols.iter().position(|c| *c == "drops"),
    ) else {
        return Vec::new();
    };
    // the header's "tx_queue rx_queue" and "tr tm->when" are one field each in the rows
    // ("00000000:00000000", "00:00000000"), so row fields are two fewer before those columns
    let shift = |c: usize| {
        let before = cols
            .iter()
            .take(c)
            .filter(|h| **h == "rx_queue" || **h == "tm->when")
            .count();
        c.saturating_sub(before)
    };
    let (ino_col, drops_col) = (shift(ino_col), shift(drops_col));
    lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ino = f.get(ino_col)?.parse::<u64>().ok()?;
            let drops = f.get(drops_col)?.parse::<u64>().ok()?;
            inodes.contains(&ino).then_some((ino, drops))
        })
        .collect()
}

/// What one batched receive produced.
pub(crate) enum Recv {
    /// Datagrams to process are in [`UdpReader::packets`] (possibly none: all refused).
    Batch,
    /// Nothing arrived within [`UDP_POLL`], or the source is paused.
    Nothing,
    /// Stop the reader.
    Stop,
}

/// A UDP socket with its receive buffers, read `udp_batch_datagrams` at a time.
pub(crate) struct UdpReader {
    socket: std::net::UdpSocket,
    source: Source,
    bufs: Vec<Vec<u8>>,
    headers: MultiHeaders<SockaddrStorage>,
    /// Received datagrams of the last batch: (buffer index, length, peer, truncated).
    got: Vec<(usize, usize, Option<SocketAddr>, bool)>,
    /// Accepted datagrams of the last batch: (buffer index, length to parse).
    ready: Vec<(usize, usize)>,
    /// The last receive emptied the socket: nap ([`UDP_NAP`]) before the next.
    partial: bool,
}

impl UdpReader {
    /// Allocates the batch buffers for `socket`.
    pub(crate) fn new(sh: &Shared, socket: std::net::UdpSocket, source: Source) -> UdpReader {
        let n = sh.cfg.udp_batch_datagrams;
        UdpReader {
            socket,
            source,
            bufs: (0..n).map(|_| vec![0u8; sh.cfg.max_udp_packet_bytes]).collect(),
            headers: MultiHeaders::preallocate(n, None),
            got: Vec::with_capacity(n),
            ready: Vec::with_capacity(n),
            partial: false,
        }
    }

    /// The accepted datagrams of the last [`UdpReader::recv`], ready to parse.
    pub(crate) fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.ready.iter().filter_map(|&(i, n)| self.bufs.get(i)?.get(..n))
    }

    /// One batched receive: honours shutdown, the kill switch and the allow-list, counts
    /// refusals, and leaves the accepted datagrams in [`UdpReader::packets`].
    pub(crate) fn recv(&mut self, sh: &Shared) -> Recv {
        self.ready.clear();
        if sh.stop.is_cancelled() {
            return Recv::Stop;
        }
        if sh.switch(self.source) == SwitchState::Paused {
            // not read: the kernel buffer fills, then the kernel drops (counted per socket in
            // roaster_ingest_udp_socket_drops_total)
            std::thread::park_timeout(UDP_POLL);
            return Recv::Nothing;
        }
        if let Err(e) = self.receive() {
            if !matches!(e, nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) {
                tracing::warn!(listener = self.source.as_str(), error = %e, "udp receive failed");
            }
            return Recv::Nothing;
        }
        sh.metrics.udp_datagrams(self.source, self.got.len());
        // read after the (blocking) receive, so a switch flipped meanwhile applies
        let blackholed = sh.switch(self.source) == SwitchState::Blackholed;
        for &(i, n, peer, truncated) in &self.got {
            let Some(p) = self.bufs.get(i).and_then(|b| b.get(..n)) else {
                continue;
            };
            if peer.is_some_and(|a| !sh.allow.allows(a.ip())) {
                sh.dropped(self.source, reason::NOT_ALLOWED, 1);
                continue;
            }
            if blackholed {
                let lines = memchr::memchr_iter(b'\n', p).count() + usize::from(!p.ends_with(b"\n"));
                sh.dropped(self.source, reason::BLACKHOLED, lines);
                continue;
            }
            if truncated {
                // a cut last line could parse as a wrong value, so it is refused
                let keep = memchr::memrchr(b'\n', p).map_or(0, |i| i + 1);
                let tail = String::from_utf8_lossy(p.get(keep..).unwrap_or_default()).into_owned();
                sh.reject(
                    self.source,
                    wire::Reason::LineTooLong.as_str(),
                    &tail,
                    sh.clock.now(),
                );
                if keep > 0 {
                    self.ready.push((i, keep));
                }
                continue;
            }
            self.ready.push((i, n));
        }
        Recv::Batch
    }

    /// `recvmmsg` into the buffers; fills `got`.
    fn receive(&mut self) -> Result<(), nix::errno::Errno> {
        self.got.clear();
        if std::mem::take(&mut self.partial) {
            std::thread::sleep(UDP_NAP);
        }
        let fd = self.socket.as_raw_fd();
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
            .bufs
            .iter_mut()
            .map(|b| [IoSliceMut::new(b.as_mut_slice())])
            .collect();
        let results = recvmmsg(
            fd,
            &mut self.headers,
            iovs.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        )?;
        for (i, m) in results.enumerate() {
            let peer = m.address.and_then(|a| sockaddr(&a));
            let truncated = m.flags.contains(MsgFlags::MSG_TRUNC);
            self.got.push((i, m.bytes, peer, truncated));
        }
        self.partial = self.got.len() < self.bufs.len();
        Ok(())
    }
}

/// A peer address as a std `SocketAddr` (UDP peers are IPv4 or IPv6).
fn sockaddr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    if let Some(v6) = a.as_sockaddr_in6() {
        return Some(SocketAddr::V6((*v6).into()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP_TABLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
        \x20 123: 0100007F:1FBD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41234 2 0000000000000000 17\n\
        \x20 456: 0100007F:07D3 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41235 2 0000000000000000 0\n";

    #[test]
    fn socket_drops_are_read_by_inode() {
        type Case = (&'static [u64], &'static [(u64, u64)]);
        let cases: &[Case] = &[
            (&[41234], &[(41234, 17)]),
            (&[41235, 41234], &[(41234, 17), (41235, 0)]),
            (&[9], &[]),
        ];
        for (inodes, want) in cases {
            assert_eq!(parse_socket_drops(UDP_TABLE, inodes), *want, "{inodes:?}");
        }
        assert!(parse_socket_drops("", &[1]).is_empty());
        assert!(parse_socket_drops("sl local_address\n 1: x\n", &[1]).is_empty());
    }

    #[test]
    fn a_buffer_above_rmem_max_is_forced_when_allowed() {
        let Some(rmem_max) = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
        else {
            return;
        };
        // (requested, may force): within rmem_max SO_RCVBUF is enough
        for (want, may_force) in [(rmem_max / 2, false), (rmem_max * 2, true)] {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            let forced = force_recv_buffer(&s, want);
            assert!(may_force || !forced, "{want}");
            if forced {
                // the kernel reports twice what was set
                assert!(s.recv_buffer_size().unwrap() >= want, "{want}");
            }
        }
    }

    #[test]
    fn a_bound_socket_is_found_in_proc_net_udp() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ino = socket_inode(&s).unwrap();
        assert_eq!(socket_drops(&[ino]), [(ino, 0)]);
    }
}
