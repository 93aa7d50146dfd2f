//! Router control messages (switch frames of kind `Router`), serialized with postcard.
//!
//! Answers are signed with the responder's ed25519 key over the asker's random `txid`, so a
//! reply proves that the label used reaches the node that owns the key: a label that leads
//! elsewhere, or a key that doesn't hash to its address, is detected and dropped.

use crypto::{Address, Identity, PublicKey, Signature};
use serde::{Deserialize, Serialize};

/// Most node records in one answer.
pub const MAX_RECORDS: usize = 16;

/// A node known to the responder and the label from the responder to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's key.
    pub key: PublicKey,
    /// Route from the responder to the node.
    pub label: u64,
}

/// A router control message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// "Which nodes do you know closest to `target`?"
    FindNode {
        /// Asker's random id for the answer.
        txid: u64,
        /// Address looked up.
        target: Address,
        /// Who asks (so the responder may learn of it).
        asker: PublicKey,
    },
    /// Answer to [`Control::FindNode`].
    Nodes {
        /// The asker's id.
        txid: u64,
        /// Who answers.
        responder: PublicKey,
        /// Closest known nodes, with labels from the responder.
        nodes: Vec<NodeRecord>,
        /// Responder's signature over `txid` and `nodes`.
        sig: Signature,
    },
    /// Path probe.
    Ping {
        /// Asker's random id.
        txid: u64,
        /// Who asks.
        asker: PublicKey,
    },
    /// Answer to [`Control::Ping`].
    Pong {
        /// The asker's id.
        txid: u64,
        /// Who answers.
        responder: PublicKey,
        /// Signature over `txid`.
        sig: Signature,
    },
}

fn nodes_msg(txid: u64, nodes: &[NodeRecord]) -> Vec<u8> {
    let mut m = b"meshd-nodes".to_vec();
    m.extend_from_slice(&txid.to_le_bytes());
    for n in nodes {
        m.extend_from_slice(&n.key.0);
        m.extend_from_slice(&n.label.to_le_bytes());
    }
    m
}

fn pong_msg(txid: u64) -> Vec<u8> {
    let mut m = b"meshd-pong".to_vec();
    m.extend_from_slice(&txid.to_le_bytes());
    m
}

impl Control {
    /// A signed [`Control::Nodes`].
    pub fn nodes(id: &Identity, txid: u64, nodes: Vec<NodeRecord>) -> Control {
        let sig = id.sign(&nodes_msg(txid, &nodes));
        Control::Nodes {
            txid,
            responder: id.public_key(),
            nodes,
            sig,
        }
    }
    /// A signed [`Control::Pong`].
    pub fn pong(id: &Identity, txid: u64) -> Control {
        Control::Pong {
            txid,
            responder: id.public_key(),
            sig: id.sign(&pong_msg(txid)),
        }
    }
    /// Checks an answer's signature against the key we expected to answer.
    pub fn verify_answer(&self, expected: &PublicKey) -> bool {
        match self {
            Control::Nodes {
                txid,
                responder,
                nodes,
                sig,
            } => {
                responder == expected
                    && nodes.len() <= MAX_RECORDS
                    && responder.verify(&nodes_msg(*txid, nodes), sig).is_ok()
            }
            Control::Pong {
                txid,
                responder,
                sig,
            } => responder == expected && responder.verify(&pong_msg(*txid), sig).is_ok(),
            _ => false,
        }
    }
    /// Encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("control messages serialize")
    }
    /// Decodes; `None` for anything malformed.
    pub fn from_bytes(b: &[u8]) -> Option<Control> {
        postcard::from_bytes(b).ok()
    }
}

/// A switch error: `code u8, reporter key [32], remaining route u64 LE` (the route still to
/// go when the frame could not be forwarded, starting with the director that failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchError {
    /// Why.
    pub code: ErrorCode,
    /// The node that could not forward.
    pub reporter: PublicKey,
    /// The route left at that node, including the failed hop.
    pub remaining: u64,
}

/// Switch error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorCode {
    /// The interface exists but its link is down.
    LinkDown = 1,
    /// No interface with that director.
    NoSuchLink = 2,
}

impl SwitchError {
    /// Encoded length.
    pub const LEN: usize = 41;
    /// Encodes.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.code as u8;
        b[1..33].copy_from_slice(&self.reporter.0);
        b[33..41].copy_from_slice(&self.remaining.to_le_bytes());
        b
    }
    /// Decodes.
    pub fn parse(b: &[u8]) -> Option<SwitchError> {
        if b.len() < Self::LEN {
            return None;
        }
        let code = match b[0] {
            1 => ErrorCode::LinkDown,
            2 => ErrorCode::NoSuchLink,
            _ => return None,
        };
        Some(SwitchError {
            code,
            reporter: PublicKey(b[1..33].try_into().ok()?),
            remaining: u64::from_le_bytes(b[33..41].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    #[test]
    fn signed_answers() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let a = Identity::generate(&mut rng);
        let b = Identity::generate(&mut rng);
        let n = Control::nodes(
            &a,
            42,
            vec![NodeRecord {
                key: b.public_key(),
                label: 0x13,
            }],
        );
        assert!(n.verify_answer(&a.public_key()));
        assert!(
            !n.verify_answer(&b.public_key()),
            "answer from someone else"
        );
        let back = Control::from_bytes(&n.to_bytes()).unwrap();
        assert_eq!(back, n);
        if let Control::Nodes {
            txid,
            responder,
            mut nodes,
            sig,
        } = n
        {
            nodes[0].label = 0x15;
            assert!(
                !Control::Nodes {
                    txid,
                    responder,
                    nodes,
                    sig
                }
                .verify_answer(&a.public_key()),
                "tampered labels"
            );
        }
        let p = Control::pong(&b, 7);
        assert!(p.verify_answer(&b.public_key()));
        if let Control::Pong { responder, sig, .. } = p {
            assert!(
                !Control::Pong {
                    txid: 8,
                    responder,
                    sig
                }
                .verify_answer(&b.public_key()),
                "replayed for another txid"
            );
        }
    }

    proptest! {
        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Control::from_bytes(&b);
            let _ = SwitchError::parse(&b);
        }
    }
}
