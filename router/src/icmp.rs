//! The few IPv6/ICMPv6 facts the node needs: header fields, and building the errors it
//! returns to the local TUN (destination unreachable, packet too big).

use std::net::Ipv6Addr;

/// IPv6 header length.
pub const IPV6_HEADER_LEN: usize = 40;
/// Most of the offending packet an ICMPv6 error quotes (the whole error fits in 1280 bytes;
/// quoting only 40 bytes broke PMTUD for Yggdrasil users).
const MAX_QUOTE: usize = 1280 - IPV6_HEADER_LEN - 8;

/// Source and destination of an IPv6 packet, if it is one.
pub fn addresses(p: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr)> {
    if p.len() < IPV6_HEADER_LEN || p[0] >> 4 != 6 {
        return None;
    }
    let src: [u8; 16] = p[8..24].try_into().ok()?;
    let dst: [u8; 16] = p[24..40].try_into().ok()?;
    Some((Ipv6Addr::from(src), Ipv6Addr::from(dst)))
}

/// ICMPv6 error types we send.
#[derive(Clone, Copy, Debug)]
pub enum IcmpError {
    /// Type 1 code 0: no route to destination.
    NoRoute,
    /// Type 2: packet too big, with the MTU to use.
    TooBig(u32),
}

/// Builds an ICMPv6 error from `router` to the sender of `offending`, quoting it.
pub fn error(router: Ipv6Addr, offending: &[u8], kind: IcmpError) -> Option<Vec<u8>> {
    let (src, _) = addresses(offending)?;
    let quote = &offending[..offending.len().min(MAX_QUOTE)];
    let (t, code, word) = match kind {
        IcmpError::NoRoute => (1u8, 0u8, 0u32),
        IcmpError::TooBig(mtu) => (2, 0, mtu),
    };
    let plen = 8 + quote.len();
    let mut p = Vec::with_capacity(IPV6_HEADER_LEN + plen);
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(plen as u16).to_be_bytes());
    p.push(58); // next header: ICMPv6
    p.push(64); // hop limit
    p.extend_from_slice(&router.octets());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&[t, code, 0, 0]);
    p.extend_from_slice(&word.to_be_bytes());
    p.extend_from_slice(quote);
    let sum = checksum(&router, &src, &p[IPV6_HEADER_LEN..]);
    p[IPV6_HEADER_LEN + 2..IPV6_HEADER_LEN + 4].copy_from_slice(&sum.to_be_bytes());
    Some(p)
}

/// The ICMPv6 checksum over the pseudo-header and message.
pub fn checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += w as u32;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_checksums_verify() {
        let mut pkt = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        pkt.extend_from_slice(&"fc00::1".parse::<Ipv6Addr>().unwrap().octets());
        pkt.extend_from_slice(&"fc00::2".parse::<Ipv6Addr>().unwrap().octets());
        pkt.extend_from_slice(&[1, 2, 3, 4, 0, 8, 0, 0]);
        let r: Ipv6Addr = "fc00::9".parse().unwrap();
        let e = error(r, &pkt, IcmpError::TooBig(1280)).unwrap();
        let (s, d) = addresses(&e).unwrap();
        assert_eq!((s, d), (r, "fc00::1".parse().unwrap()));
        // A correct checksum makes the sum over pseudo-header + message come out as zero.
        assert_eq!(checksum(&s, &d, &e[40..]), 0);
        assert_eq!(&e[44..48], &1280u32.to_be_bytes());
        assert_eq!(&e[48..], &pkt[..]);
        assert!(error(r, &[0u8; 10], IcmpError::NoRoute).is_none());
    }
}
