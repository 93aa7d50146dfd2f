//! meshd's label switch.
//!
//! A packet's route through the mesh is a [`Label`]: a stack of interface indices
//! ("directors"), first hop in the lowest bits, closed by a marker bit. Each hop pops its
//! director to find the outgoing link and pushes the director of the link the packet came in
//! on onto the frame's reverse label, so the receiver holds a ready-made route back to the
//! sender with no lookup. [`SwitchHeader`] is the 17-byte header every frame carries;
//! [`forward`] is the whole per-packet decision: O(1), no allocation, no per-destination state.
#![deny(unsafe_code)]

mod label;

pub use label::{Director, Label, LabelError, MAX_DIRECTOR};

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
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<FrameKind> {
        match b {
            0 => Some(FrameKind::Session),
            1 => Some(FrameKind::Router),
            2 => Some(FrameKind::Error),
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

#[cfg(test)]
mod tests {
    use super::*;

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
