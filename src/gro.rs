//! Making room for GRO on TUN writes.
//!
//! tun-rs coalesces a run of TCP packets of one flow into the first packet's buffer,
//! but only when that buffer's *capacity* already holds the whole coalesced packet (it won't
//! reallocate). The node hands over each packet in a `Vec` sized exactly to it, so before this
//! nothing ever coalesced: every packet was its own `write` (the largest single cost in the
//! profile, with the inner TCP receive behind each one).
//!
//! [`HeadPool::prepare`] finds the packets that will start a run (a "head": the first of its
//! flow in the batch, or one after a packet a run can't continue past) and moves each into a
//! pooled buffer with room for 64 KB; the rest are appended to their head by the GRO pass and
//! need no room. [`HeadPool::reclaim`] takes the big buffers back after the write. A wrong guess
//! costs only coalescing, never correctness: tun-rs then writes packets one by one.

/// Capacity of a head buffer: tun-rs wants room for twice the header offset plus the coalesced
/// packet, which is at most 64 KB.
pub const HEAD_CAPACITY: usize = 65536 + 64;
/// Head buffers kept for reuse (more are allocated when a batch has more flows, then freed).
const POOL_MAX: usize = 8;

const TCP: u8 = 6;
const UDP: u8 = 17;
const TCP_ACK: u8 = 0x10;

/// Reusable head buffers.
#[derive(Default)]
pub struct HeadPool {
    free: Vec<Vec<u8>>,
}

/// What GRO looks at to decide whether two packets can be one.
#[derive(PartialEq, Eq)]
struct Flow<'a> {
    proto: u8,
    addrs: &'a [u8],
    ports: &'a [u8],
}

/// The flow of a packet tun-rs may coalesce (TCP or UDP over IPv4 without options or IPv6
/// without extension headers), its payload length, and its TCP flags (0 for UDP).
fn flow(ip: &[u8]) -> Option<(Flow<'_>, usize, u8)> {
    let (proto, addrs, l4) = match ip.first()? >> 4 {
        4 if ip.len() >= 28 && ip[0] & 0x0f == 5 => (ip[9], ip.get(12..20)?, 20),
        6 if ip.len() >= 48 => (ip[6], ip.get(8..40)?, 40),
        _ => return None,
    };
    let (hdr, flags) = match proto {
        TCP => {
            let off = *ip.get(l4 + 12)? as usize >> 4;
            (off * 4, *ip.get(l4 + 13)?)
        }
        UDP => (8, 0),
        _ => return None,
    };
    let payload = ip.len().checked_sub(l4 + hdr)?;
    let ports = ip.get(l4..l4 + 4)?;
    Some((
        Flow {
            proto,
            addrs,
            ports,
        },
        payload,
        flags,
    ))
}

/// Whether `ip` can be appended to a run whose last packet is `prev`.
fn continues(prev: &[u8], ip: &[u8]) -> bool {
    let (Some((pf, plen, pflags)), Some((f, len, _))) = (flow(prev), flow(ip)) else {
        return false;
    };
    // TCP only: a coalesced UDP run reaches the receiving socket as a burst of hundreds of
    // small datagrams at once, which overflowed iperf3's receive buffer (64-byte UDP through a
    // forwarding node fell from 48 to 13 kpps), and UDP bulk traffic is rare.
    // A run ends after a PSH (or any flag but ACK) and after a packet shorter than the one
    // that follows it.
    pf == f && pf.proto == TCP && pflags == TCP_ACK && plen >= len && len > 0
}

impl HeadPool {
    /// Moves each packet that will start a coalesced run (behind `offset` bytes of header
    /// room) into a buffer with [`HEAD_CAPACITY`].
    pub fn prepare(&mut self, packets: &mut [Vec<u8>], offset: usize) {
        for i in 0..packets.len() {
            let ip = packets[i].get(offset..).unwrap_or(&[]);
            if packets[i].capacity() >= HEAD_CAPACITY || flow(ip).is_none() {
                continue;
            }
            let next_continues = packets
                .get(i + 1)
                .and_then(|n| n.get(offset..))
                .is_some_and(|n| continues(ip, n));
            let prev_continues = i > 0
                && packets[i - 1]
                    .get(offset..)
                    .is_some_and(|p| continues(p, ip));
            // Only a packet something will be appended to needs room.
            if !next_continues || prev_continues {
                continue;
            }
            let mut head = self
                .free
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(HEAD_CAPACITY));
            head.clear();
            head.extend_from_slice(&packets[i]);
            packets[i] = head;
        }
    }

    /// Takes the head buffers back from written packets.
    pub fn reclaim(&mut self, packets: &mut [Vec<u8>]) {
        for p in packets {
            if p.capacity() >= HEAD_CAPACITY && self.free.len() < POOL_MAX {
                self.free.push(std::mem::take(p));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFF: usize = tun_rs::VIRTIO_NET_HDR_LEN;

    fn csum(data: &[u8], mut sum: u32) -> u32 {
        for c in data.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        sum
    }

    /// An IPv6 TCP segment behind `OFF` zero bytes, in an exactly-sized Vec (as the node makes
    /// them), with a valid checksum.
    fn tcp6(seq: u32, flags: u8, payload: &[u8], port: u16) -> Vec<u8> {
        let mut p = vec![0u8; OFF + 40 + 20 + payload.len()];
        let ip = &mut p[OFF..];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        ip[6] = TCP;
        ip[7] = 64;
        ip[8] = 0xfc;
        ip[23] = 1;
        ip[24] = 0xfc;
        ip[39] = 2;
        let t = &mut ip[40..];
        t[0..2].copy_from_slice(&port.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&1000u16.to_be_bytes());
        t[20..].copy_from_slice(payload);
        let mut sum = csum(&ip[8..40], 0);
        sum += (20 + payload.len()) as u32 + u32::from(TCP);
        sum = csum(&ip[40..], sum);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        ip[40 + 16..40 + 18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        let exact = p.clone().into_boxed_slice().into_vec();
        assert_eq!(exact.capacity(), exact.len());
        exact
    }

    fn run(n: usize, port: u16, start: u32, last_flags: u8) -> Vec<Vec<u8>> {
        (0..n)
            .map(|k| {
                let flags = if k + 1 == n { last_flags } else { TCP_ACK };
                tcp6(start + 1000 * k as u32, flags, &[k as u8; 1000], port)
            })
            .collect()
    }

    fn coalesce(packets: &mut [Vec<u8>]) {
        let mut gro = tun_rs::GROTable::new();
        gro.apply_gro(packets, OFF, false).unwrap();
    }

    #[test]
    fn without_room_nothing_coalesces() {
        let mut p = run(8, 40000, 1, TCP_ACK);
        coalesce(&mut p);
        assert!(p.iter().all(|p| p.len() == OFF + 60 + 1000));
    }

    #[test]
    fn with_heads_prepared_a_run_becomes_one_packet() {
        let mut pool = HeadPool::default();
        let mut p = run(8, 40000, 1, TCP_ACK | 0x08);
        let original: Vec<Vec<u8>> = p.clone();
        pool.prepare(&mut p, OFF);
        // Only the head moved, with its bytes intact.
        assert!(p[0].capacity() >= HEAD_CAPACITY);
        assert_eq!(p[0], original[0]);
        assert!(p[1..].iter().all(|p| p.capacity() < HEAD_CAPACITY));
        coalesce(&mut p);
        assert_eq!(p[0].len(), OFF + 60 + 8 * 1000);
        // The payloads follow each other in order.
        for k in 0..8 {
            assert_eq!(p[0][OFF + 60 + 1000 * k], k as u8);
        }
        pool.reclaim(&mut p);
        assert_eq!(pool.free.len(), 1);
    }

    #[test]
    fn each_flow_and_each_run_after_a_push_gets_its_own_head() {
        let mut pool = HeadPool::default();
        // Flow A: 3 segments ending in PSH, then 3 more; flow B interleaved after them.
        let mut p = run(3, 40000, 1, TCP_ACK | 0x08);
        p.extend(run(3, 40000, 3001, TCP_ACK));
        p.extend(run(4, 40001, 77, TCP_ACK));
        pool.prepare(&mut p, OFF);
        let heads: Vec<usize> = (0..p.len())
            .filter(|&i| p[i].capacity() >= HEAD_CAPACITY)
            .collect();
        assert_eq!(heads, vec![0, 3, 6]);
        coalesce(&mut p);
        assert_eq!(p[0].len(), OFF + 60 + 3000);
        assert_eq!(p[3].len(), OFF + 60 + 3000);
        assert_eq!(p[6].len(), OFF + 60 + 4000);
    }

    #[test]
    fn udp_runs_get_no_head() {
        let mut pool = HeadPool::default();
        let mut p: Vec<Vec<u8>> = run(4, 40000, 1, TCP_ACK);
        for q in &mut p {
            q[OFF + 6] = UDP; // same bytes, now a UDP flow
        }
        pool.prepare(&mut p, OFF);
        assert!(p.iter().all(|p| p.capacity() < HEAD_CAPACITY));
    }

    #[test]
    fn lone_and_foreign_packets_are_left_alone() {
        let mut pool = HeadPool::default();
        let mut p = run(1, 40000, 1, TCP_ACK);
        p.push(vec![0u8; OFF + 30]); // not IP
        p.push(run(1, 40001, 1, TCP_ACK).remove(0));
        pool.prepare(&mut p, OFF);
        assert!(p.iter().all(|p| p.capacity() < HEAD_CAPACITY));
    }
}
