//! meshd's label switch.
//!
//! A packet's route through the mesh is a [`Label`]: a stack of interface indices
//! ("directors"), first hop in the lowest bits, closed by a marker bit. Each hop pops its
//! director to find the outgoing link and pushes the director of the link the packet came in
//! on onto the frame's reverse label, so the receiver holds a ready-made route back to the
//! sender with no lookup. [`SwitchHeader`] is the 17-byte header every frame carries;
//! [`forward`] is the whole per-packet decision: O(1), no allocation, no per-destination state.
//!
//! A route longer than one label is a [`Route`] of several segments: the frame goes to the
//! end of the first, a relay, which puts the next one in the header ([`relay`]) and keeps the
//! reverse of the segment behind it in the frame, so the receiver again holds the whole route
//! back.
#![deny(unsafe_code)]

mod label;
mod route;

pub use label::{Director, Label, LabelError, MAX_DIRECTOR};
pub use route::{Route, MAX_SEGMENTS};

/// What a switch frame carries after its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// An end-to-end session message (handshake or data) for the node at the end of the route.
    Session = 0,
    /// A router control message (lookups, probes).
    Router = 1,
    /// A switch error sent back towards a frame's source by a hop that could not forward it.
    Error = 2,
    /// A frame on a route of several segments: a relay header, then the frame's own kind
    /// ([`FrameKind::Session`] or [`FrameKind::Router`]) and body. See [`relay`].
    Relayed = 3,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<FrameKind> {
        match b {
            0 => Some(FrameKind::Session),
            1 => Some(FrameKind::Router),
            2 => Some(FrameKind::Error),
            3 => Some(FrameKind::Relayed),
            _ => None,
        }
    }
}

/// Errors parsing a switch frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than a header.
    #[error("frame shorter than the switch header")]
    Short,
    /// Unknown frame kind byte.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// A route label of zero (no marker bit).
    #[error("invalid route label")]
    BadLabel,
}

/// The switch header: `route (u64 LE) | reverse (u64 LE) | kind (u8)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchHeader {
    /// The rest of the route to the destination.
    pub route: Label,
    /// The route back to the source, built up hop by hop ([`Label::INVALID`] after overflow).
    pub reverse: Label,
    /// What follows.
    pub kind: FrameKind,
}

impl SwitchHeader {
    /// Encoded length.
    pub const LEN: usize = 17;

    /// Parses the header at the start of `frame`.
    pub fn parse(frame: &[u8]) -> Result<SwitchHeader, FrameError> {
        if frame.len() < Self::LEN {
            return Err(FrameError::Short);
        }
        let route = Label(u64::from_le_bytes(frame[0..8].try_into().expect("8 bytes")));
        let reverse = Label(u64::from_le_bytes(
            frame[8..16].try_into().expect("8 bytes"),
        ));
        if !route.is_valid() {
            return Err(FrameError::BadLabel);
        }
        let kind = FrameKind::from_u8(frame[16]).ok_or(FrameError::Kind(frame[16]))?;
        Ok(SwitchHeader {
            route,
            reverse,
            kind,
        })
    }

    /// Writes the header into the first [`Self::LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.route.0.to_le_bytes());
        out[8..16].copy_from_slice(&self.reverse.0.to_le_bytes());
        out[16] = self.kind as u8;
    }
}

/// The switch's decision for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The frame is for this node; its header now holds the full reverse route to the source.
    Deliver,
    /// Send the (rewritten) frame out of this interface.
    Forward(Director),
    /// The route is malformed; drop silently (it cannot name a source to tell).
    Drop,
}

/// The per-packet switch step for a frame that arrived on interface `came_in` (or `None`
/// when this node originates it). Rewrites the header in place: pops this hop's director
/// from the route and pushes `came_in` onto the reverse route.
///
/// Whether the chosen interface is up is the caller's to check; if it isn't, the caller
/// answers the source with an error frame along `reverse`.
pub fn forward(frame: &mut [u8], came_in: Option<Director>) -> Decision {
    let Ok(mut h) = SwitchHeader::parse(frame) else {
        return Decision::Drop;
    };
    if let Some(d) = came_in {
        h.reverse = h.reverse.push(d).unwrap_or(Label::INVALID);
    }
    let decision = match h.route.pop() {
        None => Decision::Deliver,
        Some(Ok((d, rest))) => {
            h.route = rest;
            Decision::Forward(d)
        }
        Some(Err(_)) => return Decision::Drop,
    };
    h.write(frame);
    decision
}

/// Writes the headers of a frame we originate along `route` into the start of `out`: the
/// switch header (reverse route empty) and, for a route of several segments, the relay header
/// `segs u8 (count n of further segments, low 4 bits; next to use, high 4 bits) | slots
/// [u64; n] | kind u8`. Returns the length written, [`SwitchHeader::LEN`] +
/// [`Route::relay_header_len`]; `out` must hold that much.
pub fn write_headers(route: Route, kind: FrameKind, out: &mut [u8]) -> usize {
    let segs = route.segments();
    let outer = if segs.len() > 1 {
        FrameKind::Relayed
    } else {
        kind
    };
    SwitchHeader {
        route: route.first(),
        reverse: Label::SELF,
        kind: outer,
    }
    .write(out);
    if segs.len() == 1 {
        return SwitchHeader::LEN;
    }
    let mut at = SwitchHeader::LEN;
    out[at] = (segs.len() - 1) as u8;
    at += 1;
    for s in &segs[1..] {
        out[at..at + 8].copy_from_slice(&s.0.to_le_bytes());
        at += 8;
    }
    out[at] = kind as u8;
    at + 1
}

/// What a node does with a [`FrameKind::Relayed`] frame delivered to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayStep {
    /// This node is a relay: the header now holds the next segment as its route (and an empty
    /// reverse route), the segment behind is kept reversed in its slot. Send the frame on as
    /// if originating it: [`forward`] with `came_in` `None`.
    Onward,
    /// The frame has arrived. `reverse` is the whole route back to its source; the frame's
    /// own kind is `kind` and its body starts at byte `body`.
    Arrived {
        /// Route back to the source, segment by segment.
        reverse: Route,
        /// The relayed frame's kind (session or router).
        kind: FrameKind,
        /// Offset of the body in the frame.
        body: usize,
    },
    /// Malformed: drop silently.
    Drop,
}

/// The relay step for a frame of kind [`FrameKind::Relayed`] that [`forward`] delivered
/// here (`frame` starts with the switch header). In place, no allocation: the next segment
/// is swapped for the reverse route of the one just traveled.
pub fn relay(frame: &mut [u8]) -> RelayStep {
    let Ok(mut h) = SwitchHeader::parse(frame) else {
        return RelayStep::Drop;
    };
    let at = SwitchHeader::LEN;
    if h.kind != FrameKind::Relayed || frame.len() <= at {
        return RelayStep::Drop;
    }
    let (n, next) = ((frame[at] & 0xf) as usize, (frame[at] >> 4) as usize);
    let kind_at = at + 1 + 8 * n;
    if n == 0 || n >= MAX_SEGMENTS || next > n || frame.len() <= kind_at {
        return RelayStep::Drop;
    }
    let kind = match FrameKind::from_u8(frame[kind_at]) {
        Some(k @ (FrameKind::Session | FrameKind::Router)) => k,
        _ => return RelayStep::Drop,
    };
    let slot = |i: usize| at + 1 + 8 * i;
    let read = |frame: &[u8], i: usize| {
        Label(u64::from_le_bytes(
            frame[slot(i)..slot(i) + 8].try_into().expect("8 bytes"),
        ))
    };
    if next < n {
        let onward = read(frame, next);
        if !onward.is_valid() {
            return RelayStep::Drop;
        }
        frame[slot(next)..slot(next) + 8].copy_from_slice(&h.reverse.0.to_le_bytes());
        frame[at] = (n | (next + 1) << 4) as u8;
        h.route = onward;
        h.reverse = Label::SELF;
        h.write(frame);
        return RelayStep::Onward;
    }
    let mut back = [Label::INVALID; MAX_SEGMENTS];
    back[0] = h.reverse;
    for (i, b) in back[1..=n].iter_mut().enumerate() {
        *b = read(frame, n - 1 - i);
    }
    match Route::new(&back[..=n]) {
        Some(reverse) => RelayStep::Arrived {
            reverse,
            kind,
            body: kind_at + 1,
        },
        None => RelayStep::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A→B→C, relay C, C→D→E: the frame arrives at E with the route back in two segments,
    /// and the reply goes back the same way.
    #[test]
    fn relayed_there_and_back() {
        let first = Label::from_directors(&[2, 5]).unwrap(); // A -(2)-> B -(5)-> C
        let second = Label::from_directors(&[9, 1]).unwrap(); // C -(9)-> D -(1)-> E
        let route = Route::new(&[first, second]).unwrap();
        let mut f = vec![0u8; SwitchHeader::LEN + route.relay_header_len() + 3];
        let body = write_headers(route, FrameKind::Router, &mut f);
        assert_eq!(body, SwitchHeader::LEN + 10);
        f[body..].copy_from_slice(b"abc");
        assert_eq!(forward(&mut f, None), Decision::Forward(2)); // at A
        assert_eq!(forward(&mut f, Some(0)), Decision::Forward(5)); // at B (came on its 0)
        assert_eq!(forward(&mut f, Some(3)), Decision::Deliver); // at C (came on its 3)
        assert_eq!(relay(&mut f), RelayStep::Onward);
        assert_eq!(forward(&mut f, None), Decision::Forward(9)); // C sends it on
        assert_eq!(forward(&mut f, Some(4)), Decision::Forward(1)); // at D
        assert_eq!(forward(&mut f, Some(6)), Decision::Deliver); // at E
        let RelayStep::Arrived {
            reverse,
            kind,
            body,
        } = relay(&mut f.clone())
        else {
            panic!("not arrived");
        };
        assert_eq!(kind, FrameKind::Router);
        assert_eq!(&f[body..], b"abc");
        let back_second = Label::from_directors(&[6, 4]).unwrap(); // E→D→C
        let back_first = Label::from_directors(&[3, 0]).unwrap(); // C→B→A
        assert_eq!(reverse.segments(), &[back_second, back_first]);
        // A relayed frame can't be relayed again past its last segment.
        assert!(matches!(relay(&mut f), RelayStep::Arrived { .. }));

        // E answers along `reverse`; A ends up with the route it used, as the reverse.
        let mut r = vec![0u8; SwitchHeader::LEN + reverse.relay_header_len()];
        write_headers(reverse, FrameKind::Session, &mut r);
        assert_eq!(forward(&mut r, None), Decision::Forward(6));
        assert_eq!(forward(&mut r, Some(1)), Decision::Forward(4));
        assert_eq!(forward(&mut r, Some(9)), Decision::Deliver);
        assert_eq!(relay(&mut r), RelayStep::Onward);
        assert_eq!(forward(&mut r, None), Decision::Forward(3));
        assert_eq!(forward(&mut r, Some(5)), Decision::Forward(0));
        assert_eq!(forward(&mut r, Some(2)), Decision::Deliver);
        let RelayStep::Arrived { reverse, kind, .. } = relay(&mut r) else {
            panic!("not arrived");
        };
        assert_eq!(kind, FrameKind::Session);
        assert_eq!(reverse, route);
    }

    /// A frame on a route of [`MAX_SEGMENTS`] one-hop segments is relayed by each of the
    /// fourteen nodes in between and arrives
    /// with the whole route back.
    #[test]
    fn a_route_of_max_segments_is_relayed_to_its_end() {
        let segs: Vec<Label> = (0..MAX_SEGMENTS as u16)
            .map(|i| Label::from_directors(&[2 + i % 5]).unwrap())
            .collect();
        let route = Route::new(&segs).unwrap();
        let mut f = vec![0u8; SwitchHeader::LEN + route.relay_header_len() + 3];
        let body = write_headers(route, FrameKind::Session, &mut f);
        assert_eq!(body, SwitchHeader::LEN + 2 + 8 * (MAX_SEGMENTS - 1));
        f[body..].copy_from_slice(b"abc");
        for (i, _) in segs.iter().enumerate() {
            assert_eq!(forward(&mut f, None), Decision::Forward(2 + i as u16 % 5));
            assert_eq!(forward(&mut f, Some(1)), Decision::Deliver, "segment {i}");
            if i + 1 < MAX_SEGMENTS {
                assert_eq!(relay(&mut f), RelayStep::Onward, "relay {i}");
            }
        }
        let RelayStep::Arrived {
            reverse,
            kind,
            body,
        } = relay(&mut f)
        else {
            panic!("not arrived");
        };
        assert_eq!((kind, &f[body..]), (FrameKind::Session, &b"abc"[..]));
        let one = Label::from_directors(&[1]).unwrap();
        assert_eq!(reverse.segments(), &[one; MAX_SEGMENTS]);
    }

    #[test]
    fn malformed_relay_headers_are_dropped() {
        let route = Route::new(&[Label(0b110), Label(0b101)]).unwrap();
        let mut f = vec![0u8; SwitchHeader::LEN + route.relay_header_len()];
        write_headers(route, FrameKind::Router, &mut f);
        forward(&mut f, None);
        forward(&mut f, Some(1));
        for bad in [0x00u8, 0x04, 0x21, 0x0f] {
            let mut g = f.clone();
            g[SwitchHeader::LEN] = bad;
            assert_eq!(relay(&mut g), RelayStep::Drop, "{bad:#x}");
        }
        let mut g = f.clone();
        *g.last_mut().unwrap() = FrameKind::Relayed as u8; // no nesting
        assert_eq!(relay(&mut g), RelayStep::Drop);
        let mut g = f.clone();
        g[SwitchHeader::LEN + 1..SwitchHeader::LEN + 9].fill(0); // invalid onward label
        assert_eq!(relay(&mut g), RelayStep::Drop);
        assert_eq!(relay(&mut f[..SwitchHeader::LEN + 5]), RelayStep::Drop);
        let mut plain = [0u8; SwitchHeader::LEN];
        SwitchHeader {
            route: Label::SELF,
            reverse: Label::SELF,
            kind: FrameKind::Session,
        }
        .write(&mut plain);
        assert_eq!(relay(&mut plain), RelayStep::Drop);
    }

    #[test]
    fn three_hops_and_back() {
        // A -(2)-> B -(5)-> C -(100)-> D ; reverse directors: B's link to A is 0, C's to B is 3,
        // D's to C is 7.
        let route = Label::from_directors(&[2, 5, 100]).unwrap();
        let mut f = [0u8; SwitchHeader::LEN + 4];
        SwitchHeader {
            route,
            reverse: Label::SELF,
            kind: FrameKind::Session,
        }
        .write(&mut f);
        assert_eq!(forward(&mut f, None), Decision::Forward(2)); // at A
        assert_eq!(forward(&mut f, Some(0)), Decision::Forward(5)); // at B
        assert_eq!(forward(&mut f, Some(3)), Decision::Forward(100)); // at C
        assert_eq!(forward(&mut f, Some(7)), Decision::Deliver); // at D
        let h = SwitchHeader::parse(&f).unwrap();
        assert_eq!(h.reverse.directors().collect::<Vec<_>>(), vec![7, 3, 0]);
        // D replies along the reverse label.
        let mut r = [0u8; SwitchHeader::LEN];
        SwitchHeader {
            route: h.reverse,
            reverse: Label::SELF,
            kind: FrameKind::Session,
        }
        .write(&mut r);
        assert_eq!(forward(&mut r, None), Decision::Forward(7));
        assert_eq!(forward(&mut r, Some(100)), Decision::Forward(3));
        assert_eq!(forward(&mut r, Some(5)), Decision::Forward(0));
        assert_eq!(forward(&mut r, Some(2)), Decision::Deliver);
        assert_eq!(SwitchHeader::parse(&r).unwrap().reverse, route);
    }

    #[test]
    fn garbage_is_dropped() {
        assert_eq!(forward(&mut [0u8; 3], Some(1)), Decision::Drop);
        let mut f = [0u8; SwitchHeader::LEN];
        assert_eq!(forward(&mut f, Some(1)), Decision::Drop); // route 0
        let mut f = [0xffu8; SwitchHeader::LEN];
        assert_eq!(forward(&mut f, Some(1)), Decision::Drop); // kind 255
    }
}
