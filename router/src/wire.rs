//! The tunnel message layout shared by links (in UDP datagrams) and end-to-end sessions (in
//! switch frames). Hand-written fixed layouts, little-endian:
//!
//! | type | layout |
//! |---|---|
//! | 1 XX init | `1, sender u32, noise` |
//! | 2 IK init | `2, sender u32, noise` |
//! | 3 response | `3, sender u32, receiver u32, noise` |
//! | 4 XX final | `4, sender u32, receiver u32, noise` |
//! | 5 data | `5, receiver u32, counter u64, ciphertext` |
//!
//! `sender`/`receiver` are the random 32-bit indices each side picked for the handshake or
//! session, so packets are matched to their keys by index, not by address: an endpoint can
//! change (roaming) without breaking the tunnel.

use crypto::noise::MAX_HANDSHAKE_LEN;

/// Header bytes before a data message's ciphertext.
pub const DATA_HEADER_LEN: usize = 13;

/// A parsed tunnel message borrowing from the packet.
#[derive(Debug, PartialEq, Eq)]
pub enum TunnelMsg<'a> {
    /// First message of XX.
    InitXX {
        /// Initiator's index.
        sender: u32,
        /// Noise message.
        noise: &'a [u8],
    },
    /// First message of IK.
    InitIK {
        /// Initiator's index.
        sender: u32,
        /// Noise message.
        noise: &'a [u8],
    },
    /// Responder's message (XX second, IK second).
    Response {
        /// Responder's index.
        sender: u32,
        /// Initiator's index.
        receiver: u32,
        /// Noise message.
        noise: &'a [u8],
    },
    /// XX third message.
    Final {
        /// Initiator's index.
        sender: u32,
        /// Responder's index.
        receiver: u32,
        /// Noise message.
        noise: &'a [u8],
    },
    /// Transport data.
    Data {
        /// Receiver's index.
        receiver: u32,
        /// Nonce/counter.
        counter: u64,
        /// Ciphertext with tag.
        ciphertext: &'a [u8],
    },
}

/// Why a packet did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum WireError {
    /// Too short for its type.
    #[error("truncated")]
    Truncated,
    /// Unknown type byte.
    #[error("unknown message type")]
    Type,
    /// Handshake message larger than any real one.
    #[error("oversized handshake")]
    Oversized,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl<'a> TunnelMsg<'a> {
    /// Parses a message; never panics on any input.
    pub fn parse(b: &'a [u8]) -> Result<TunnelMsg<'a>, WireError> {
        let t = *b.first().ok_or(WireError::Truncated)?;
        let need = match t {
            1 | 2 => 5,
            3 | 4 => 9,
            5 => DATA_HEADER_LEN + crypto::noise::TAG_LEN,
            _ => return Err(WireError::Type),
        };
        if b.len() < need {
            return Err(WireError::Truncated);
        }
        if t != 5 && b.len() - need > MAX_HANDSHAKE_LEN {
            return Err(WireError::Oversized);
        }
        Ok(match t {
            1 => TunnelMsg::InitXX {
                sender: u32_at(b, 1),
                noise: &b[5..],
            },
            2 => TunnelMsg::InitIK {
                sender: u32_at(b, 1),
                noise: &b[5..],
            },
            3 => TunnelMsg::Response {
                sender: u32_at(b, 1),
                receiver: u32_at(b, 5),
                noise: &b[9..],
            },
            4 => TunnelMsg::Final {
                sender: u32_at(b, 1),
                receiver: u32_at(b, 5),
                noise: &b[9..],
            },
            _ => TunnelMsg::Data {
                receiver: u32_at(b, 1),
                counter: u64::from_le_bytes(b[5..13].try_into().expect("8 bytes")),
                ciphertext: &b[13..],
            },
        })
    }
}

/// Appends a handshake message header (`type, sender[, receiver]`) to `out`.
pub fn write_handshake_header(out: &mut Vec<u8>, t: u8, sender: u32, receiver: Option<u32>) {
    out.push(t);
    out.extend_from_slice(&sender.to_le_bytes());
    if let Some(r) = receiver {
        out.extend_from_slice(&r.to_le_bytes());
    }
}

/// A whole handshake message: the header (`type, sender[, receiver]`) and the next Noise
/// message of `hs`. `None` if Noise refuses to write.
pub fn handshake_message(
    t: u8,
    sender: u32,
    receiver: Option<u32>,
    hs: &mut crypto::noise::Handshake,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(9 + MAX_HANDSHAKE_LEN);
    write_handshake_header(&mut out, t, sender, receiver);
    let mut buf = [0u8; MAX_HANDSHAKE_LEN];
    let n = hs.write_message(&mut buf).ok()?;
    out.extend_from_slice(&buf[..n]);
    Some(out)
}

/// Writes a data header into the first [`DATA_HEADER_LEN`] bytes of `out`.
pub fn write_data_header(out: &mut [u8], receiver: u32, counter: u64) {
    out[0] = 5;
    out[1..5].copy_from_slice(&receiver.to_le_bytes());
    out[5..13].copy_from_slice(&counter.to_le_bytes());
}

/// Message types.
pub mod msg_type {
    /// XX init.
    pub const INIT_XX: u8 = 1;
    /// IK init.
    pub const INIT_IK: u8 = 2;
    /// Response.
    pub const RESPONSE: u8 = 3;
    /// XX final.
    pub const FINAL: u8 = 4;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = TunnelMsg::parse(&b);
        }

        #[test]
        fn data_round_trip(r in any::<u32>(), c in any::<u64>(), body in proptest::collection::vec(any::<u8>(), 16..64)) {
            let mut p = vec![0u8; DATA_HEADER_LEN];
            write_data_header(&mut p, r, c);
            p.extend_from_slice(&body);
            prop_assert_eq!(TunnelMsg::parse(&p).unwrap(), TunnelMsg::Data { receiver: r, counter: c, ciphertext: &body });
        }

        #[test]
        fn handshake_round_trip(s in any::<u32>(), r in any::<u32>(), body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut p = Vec::new();
            write_handshake_header(&mut p, msg_type::RESPONSE, s, Some(r));
            p.extend_from_slice(&body);
            prop_assert_eq!(TunnelMsg::parse(&p).unwrap(), TunnelMsg::Response { sender: s, receiver: r, noise: &body });
        }
    }

    #[test]
    fn short_inputs() {
        assert_eq!(TunnelMsg::parse(&[]), Err(WireError::Truncated));
        assert_eq!(TunnelMsg::parse(&[5, 0, 0]), Err(WireError::Truncated));
        assert_eq!(TunnelMsg::parse(&[9]), Err(WireError::Type));
        assert_eq!(
            TunnelMsg::parse(&[1, 0, 0, 0, 0]),
            Ok(TunnelMsg::InitXX {
                sender: 0,
                noise: &[]
            })
        );
    }
}
