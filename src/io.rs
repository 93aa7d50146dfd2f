//! The daemon's packet I/O, batched so one system call moves many packets:
//!
//! - UDP through quinn-udp: GRO on receive (the kernel hands over runs of datagrams from one
//!   sender in one buffer) and GSO on send (runs of equal-size datagrams to one peer go out in
//!   one `sendmsg` with `UDP_SEGMENT`).
//! - The TUN with offloads (tun-rs, virtio headers): the kernel hands over TCP super-packets
//!   of up to 64 KB that are split into MTU-sized packets here, and packets written back are
//!   coalesced (GRO) before they enter the kernel, as wireguard-go does. The first packet of
//!   each run is moved into a buffer with room for the run first (`gro.rs`): tun-rs coalesces
//!   only into a buffer whose capacity already holds the result.
//!
//! Each falls back to one packet per call where the kernel or device doesn't offer it.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tun_rs::{AsyncDevice, GROTable};

/// Bytes of the virtio header in front of every packet on an offloading TUN.
pub const VNET_HDR: usize = tun_rs::VIRTIO_NET_HDR_LEN;
/// Receive buffers per UDP read (each can hold a GRO run of up to 64 KB).
const UDP_BUFS: usize = 8;
/// Segments per TUN read: a 64 KB super-packet in MTU-sized pieces.
const TUN_SEGMENTS: usize = 64;
/// UDP receive buffer asked for.
const RECV_BUFFER: usize = 4 << 20;
/// Room for one segment (the TUN MTU is well under this).
const SEGMENT_BUF: usize = 4096;
/// Bytes of one UDP receive buffer.
const UDP_BUF: usize = 65536;
// The receive buffers of each side are one allocation, cut into pieces at each read: a fresh
// zeroed allocation that large is mapped by the allocator and backed by the kernel page by page
// as packets land in it, so an idle node keeps only the pages it used. Separate 4 KB or 64 KB
// buffers each started with an allocator header, which made every one of their pages
// resident (0.5 MB of an idle node's 5.4 MB). Nor are they cloned from one another: a clone
// writes every page.

/// The UDP side.
pub struct Udp {
    sock: UdpSocket,
    state: UdpSocketState,
    v6: bool,
    /// [`UDP_BUFS`] buffers of [`UDP_BUF`] bytes, end to end.
    bufs: Vec<u8>,
    meta: Vec<RecvMeta>,
    gso: Vec<u8>,
}

impl Udp {
    /// Wraps a bound socket.
    pub fn new(sock: UdpSocket) -> io::Result<Udp> {
        let state = UdpSocketState::new((&sock).into())?;
        // Enough to absorb a burst (GRO hands over 64 KB at a time) without drops, small
        // enough not to hold tens of ms of queue at line rate (bufferbloat raised RTT under load).
        // 4 MiB: at 5-6 Gbit/s (AES) 2 MiB overflowed with 4 TCP streams (4-8k retransmits in
        // 3 s one hop, 13-16k through a forwarding node; 0 and 0.8-1.8k with 4 MiB, RTT under
        // load unchanged). 1 MiB already overflowed at ~3 Gbit/s.
        let _ = state.set_recv_buffer_size((&sock).into(), RECV_BUFFER);
        // Linux caps the request at net.core.rmem_max (208 KiB on many systems) and reports
        // twice what it granted.
        if let Ok(got) = state.recv_buffer_size((&sock).into()) {
            if got / 2 < RECV_BUFFER {
                tracing::warn!(
                    granted = got / 2,
                    wanted = RECV_BUFFER,
                    "UDP receive buffer capped by net.core.rmem_max: fast links may drop \
                     packets (raise it with `sysctl -w net.core.rmem_max={RECV_BUFFER}`)"
                );
            }
        }
        let _ = state.set_send_buffer_size((&sock).into(), 256 << 10);
        let v6 = sock.local_addr()?.is_ipv6();
        Ok(Udp {
            sock,
            state,
            v6,
            bufs: vec![0u8; UDP_BUFS * UDP_BUF],
            meta: vec![RecvMeta::default(); UDP_BUFS],
            gso: Vec::with_capacity(65536),
        })
    }

    /// The socket (for multicast membership, beacons, local address).
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// Waits until datagrams can be read.
    pub async fn readable(&self) -> io::Result<()> {
        self.sock.readable().await
    }

    /// Reads what is ready without blocking and calls `f(from, datagram)` for each datagram;
    /// returns how many (0 when nothing was ready).
    pub fn recv_ready(&mut self, mut f: impl FnMut(SocketAddr, &[u8])) -> usize {
        let mut n = 0;
        let Udp {
            sock,
            state,
            bufs,
            meta,
            ..
        } = self;
        let mut pieces = bufs.chunks_mut(UDP_BUF);
        let mut iov: [IoSliceMut<'_>; UDP_BUFS] =
            std::array::from_fn(|_| IoSliceMut::new(pieces.next().unwrap_or_default()));
        let got = match sock.try_io(Interest::READABLE, || {
            state.recv((&*sock).into(), &mut iov, meta)
        }) {
            Ok(k) => k,
            Err(e) => {
                if e.kind() != io::ErrorKind::WouldBlock {
                    tracing::debug!("udp recv: {e}");
                }
                return 0;
            }
        };
        for (m, buf) in meta.iter().zip(iov.iter()).take(got) {
            let from = canonical(m.addr);
            let stride = m.stride.max(1);
            for seg in buf[..m.len].chunks(stride) {
                f(from, seg);
                n += 1;
            }
        }
        n
    }

    /// Sends datagrams, one `sendmsg` per run of equal-size datagrams to the same peer.
    pub async fn send_all(&mut self, datagrams: &[(SocketAddr, Vec<u8>)]) {
        let max_segments = self.state.max_gso_segments().max(1);
        let mut i = 0;
        while i < datagrams.len() {
            let (dst, first) = (&datagrams[i].0, &datagrams[i].1);
            let size = first.len();
            let mut j = i + 1;
            // A GSO run: same destination, same size; only the last may be shorter.
            while j < datagrams.len()
                && j - i < max_segments
                && datagrams[j].0 == *dst
                && datagrams[j].1.len() <= size
                && (j - i + 1) * size <= 65000
            {
                let shorter = datagrams[j].1.len() < size;
                j += 1;
                if shorter {
                    break;
                }
            }
            let dst = if self.v6 { v6_mapped(*dst) } else { *dst };
            if j - i == 1 {
                self.send_one(dst, first, None).await;
            } else {
                let mut gso = std::mem::take(&mut self.gso);
                gso.clear();
                for d in &datagrams[i..j] {
                    gso.extend_from_slice(&d.1);
                }
                self.send_one(dst, &gso, Some(size)).await;
                self.gso = gso;
            }
            i = j;
        }
    }

    async fn send_one(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) {
        let t = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        loop {
            match self.sock.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.sock).into(), &t)
            }) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.sock.writable().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!("udp send to {destination}: {e}");
                    return;
                }
            }
        }
    }
}

/// The TUN side.
pub struct Tun {
    dev: AsyncDevice,
    offload: bool,
    raw: Vec<u8>,
    /// One buffer per packet of a read, end to end, each `seg` bytes.
    segs: Vec<u8>,
    seg: usize,
    sizes: Vec<usize>,
    /// Made at the first batch that could coalesce: its flow tables are ~1.3 MB that a node
    /// which only ever writes single packets (pings, keepalive traffic) never needs.
    gro: Option<Box<GROTable>>,
    heads: crate::gro::HeadPool,
}

impl Tun {
    /// Wraps a device; `offload` says whether it was opened with virtio headers.
    pub fn new(dev: AsyncDevice, offload: bool) -> Tun {
        let (n, seg) = if offload {
            (TUN_SEGMENTS, SEGMENT_BUF)
        } else {
            (1, 65536)
        };
        Tun {
            dev,
            offload,
            raw: vec![0u8; if offload { VNET_HDR + 65536 } else { 0 }],
            segs: vec![0u8; n * seg],
            seg,
            sizes: vec![0; n],
            gro: None,
            heads: crate::gro::HeadPool::default(),
        }
    }

    /// Headroom the node must leave in front of packets it hands us.
    pub fn headroom(&self) -> usize {
        if self.offload {
            VNET_HDR
        } else {
            0
        }
    }

    /// Reads one packet or super-packet; returns how many IP packets it held (see
    /// [`Tun::packet`]).
    pub async fn recv(&mut self) -> io::Result<usize> {
        if self.offload {
            let mut pieces = self.segs.chunks_mut(self.seg);
            let mut bufs: [&mut [u8]; TUN_SEGMENTS] =
                std::array::from_fn(|_| pieces.next().unwrap_or_default());
            self.dev
                .recv_multiple(&mut self.raw, &mut bufs, &mut self.sizes, 0)
                .await
        } else {
            self.sizes[0] = self.dev.recv(&mut self.segs).await?;
            Ok(1)
        }
    }

    /// The `k`th IP packet of the last read.
    pub fn packet(&self, k: usize) -> &[u8] {
        let start = k * self.seg;
        &self.segs[start..start + self.sizes[k]]
    }

    /// Writes packets (each behind [`Tun::headroom`] bytes), coalescing TCP/UDP runs when
    /// offloading (one `write` per run of a flow instead of one per packet).
    pub async fn send_all(&mut self, packets: &mut [Vec<u8>]) {
        if packets.is_empty() {
            return;
        }
        if self.offload && packets.len() == 1 {
            // Nothing to coalesce: a plain virtio header (no GSO, checksum already complete,
            // as every packet we write carries one) and one write.
            let p = &mut packets[0];
            if p.len() > VNET_HDR {
                p[..VNET_HDR].fill(0);
                if let Err(e) = self.dev.send(p).await {
                    tracing::debug!("tun send: {e}");
                }
            }
        } else if self.offload {
            self.heads.prepare(packets, VNET_HDR);
            let gro = self.gro.get_or_insert_with(Box::default);
            if let Err(e) = self.dev.send_multiple(gro, packets, VNET_HDR).await {
                tracing::debug!("tun send: {e}");
            }
            self.heads.reclaim(packets);
        } else {
            for p in packets.iter() {
                if let Err(e) = self.dev.send(p).await {
                    tracing::debug!("tun send: {e}");
                }
            }
        }
    }
}

/// IPv4-mapped IPv6 source addresses as plain IPv4, so they match configured peers (other
/// IPv6 addresses keep their scope, which link-local peers need).
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => {
            SocketAddr::new(a.ip().to_canonical(), a.port())
        }
        other => other,
    }
}

/// IPv4 destinations as IPv4-mapped IPv6, for a dual-stack IPv6 socket.
pub fn v6_mapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    }
}
