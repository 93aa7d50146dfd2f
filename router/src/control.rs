//! Router control messages (switch frames of kind `Router`), serialized with postcard.
//!
//! Answers are signed with the responder's ed25519 key over the asker's random `txid`, so a
//! reply proves that the label used reaches the node that owns the key: a label that leads
//! elsewhere, or a key that doesn't hash to its address, is detected and dropped.

use crypto::{Address, Identity, PublicKey, Signature};
use serde::{Deserialize, Serialize};
use switch::Route;

/// Most node records in one answer.
pub const MAX_RECORDS: usize = 16;

/// How many coordinates a place carries besides the main tree's: one per hashed tree
/// (tree.rs, "More trees").
pub const ALT_TREES: usize = crate::tree::TREES - 1;

/// A node known to the responder and the label from the responder to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's key.
    pub key: PublicKey,
    /// Route from the responder to the node.
    pub label: u64,
    /// The node's place in the responder's spanning tree (route from the root down to the
    /// node), [`Route::INVALID`] if unknown. Only meaningful under the root named in the answer.
    #[serde(with = "wire_route")]
    pub coord: Route,
    /// The node's places in the responder's hashed trees (tree.rs, "More trees"): `alts[i]`
    /// under the answer's `alts[i]` root; [`Route::INVALID`] where unknown.
    #[serde(with = "wire_routes")]
    pub alts: [Route; ALT_TREES],
}

impl NodeRecord {
    /// Most bytes the record takes on the wire (its label counted as a full varint).
    pub fn wire_len(&self) -> usize {
        32 + 10 + route_wire_len(&self.coord) + self.alts.iter().map(route_wire_len).sum::<usize>()
    }

    /// The node's place in each of the responder's trees (the route down from each root),
    /// the main tree first.
    pub fn places(&self) -> [Route; crate::tree::TREES] {
        join(self.coord, self.alts)
    }
}

/// Where a node sits in the spanning tree: the root, and the route from it down to the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coord {
    /// The tree's root.
    pub root: PublicKey,
    /// Route from the root down to the node: one segment per 64-bit label it needs (a
    /// deep node of a large physical mesh needs several; each node where one ends relays).
    #[serde(with = "wire_route")]
    pub down: Route,
}

/// A [`Route`] on the wire: its segments as a sequence of labels (postcard: a count, then
/// each label as a varint), 1 to [`switch::MAX_SEGMENTS`] of them.
mod wire_route {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserializer, Serializer};
    use switch::{Label, Route, MAX_SEGMENTS};

    pub fn serialize<S: Serializer>(r: &Route, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(r.segments().len()))?;
        for l in r.segments() {
            seq.serialize_element(&l.0)?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Route, D::Error> {
        struct Segments;
        impl<'de> Visitor<'de> for Segments {
            type Value = Route;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "1 to {MAX_SEGMENTS} labels")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Route, A::Error> {
                let mut segs = [Label::INVALID; MAX_SEGMENTS];
                let mut n = 0;
                while let Some(v) = seq.next_element::<u64>()? {
                    if n == MAX_SEGMENTS {
                        return Err(A::Error::custom("too many segments"));
                    }
                    segs[n] = Label(v);
                    n += 1;
                }
                Route::new(&segs[..n]).ok_or_else(|| A::Error::custom("no segments"))
            }
        }
        d.deserialize_seq(Segments)
    }
}

/// [`ALT_TREES`] routes on the wire, one after the other, each as [`wire_route`] has it.
mod wire_routes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use switch::Route;

    use super::ALT_TREES;

    #[derive(Clone, Copy, Serialize, Deserialize)]
    struct WireRoute(#[serde(with = "super::wire_route")] Route);

    pub fn serialize<S: Serializer>(r: &[Route; ALT_TREES], s: S) -> Result<S::Ok, S::Error> {
        r.map(WireRoute).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[Route; ALT_TREES], D::Error> {
        Ok(<[WireRoute; ALT_TREES]>::deserialize(d)?.map(|w| w.0))
    }
}

/// The bytes a signature covers for a route: its segment count, then each label.
fn route_bytes(m: &mut Vec<u8>, r: &Route) {
    m.push(r.segments().len() as u8);
    for l in r.segments() {
        m.extend_from_slice(&l.0.to_le_bytes());
    }
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
        /// The asker's place in its spanning tree: a hint (unsigned), on which the responder
        /// re-checks the asker with a ping when what it holds differs.
        coord: Option<Coord>,
    },
    /// Answer to [`Control::FindNode`].
    Nodes {
        /// The asker's id.
        txid: u64,
        /// Who answers.
        responder: PublicKey,
        /// The responder's route back to the asker (the reverse label of the question), so
        /// the asker can cut out the hops where a record's label walks back along its own
        /// path ([`switch::Label::splice_unlooped`]).
        back: u64,
        /// The responder's place in its spanning tree; the records' `coord`s are under its root.
        coord: Option<Coord>,
        /// The responder's places in its hashed trees; the records' `alts` are under their
        /// roots.
        alts: [Option<Coord>; ALT_TREES],
        /// Closest known nodes, with labels from the responder.
        nodes: Vec<NodeRecord>,
        /// Responder's signature over everything above.
        sig: Signature,
    },
    /// Path probe.
    Ping {
        /// Asker's random id.
        txid: u64,
        /// Who asks.
        asker: PublicKey,
    },
    /// "Let's link directly: here is where I can be reached" (NAT punching, re-finding a
    /// peer after both moved). The receiver answers with its own record and both start
    /// handshakes to each other's endpoints at once.
    Rendezvous {
        /// The asker's signed endpoints.
        record: EndpointRecord,
    },
    /// Answer to [`Control::Rendezvous`].
    RendezvousAck {
        /// The responder's signed endpoints.
        record: EndpointRecord,
    },
    /// Answer to [`Control::Ping`].
    Pong {
        /// The asker's id.
        txid: u64,
        /// Who answers.
        responder: PublicKey,
        /// The responder's place in its spanning tree.
        coord: Option<Coord>,
        /// The responder's places in its hashed trees.
        alts: [Option<Coord>; ALT_TREES],
        /// Signature over `txid`, `coord` and `alts`.
        sig: Signature,
    },
    /// Spanning-tree announcement to a direct peer (sent on link-up, when it changes, and
    /// when the root's sequence number moves on): the sender's root and place in the tree.
    Tree {
        /// The root: of the roots the sender knows alive, the one with the highest rank,
        /// the largest key among equal ranks.
        root: PublicKey,
        /// The root's rank (how many links it has, in powers of two; see tree.rs).
        rank: u8,
        /// The root's sequence number (it counts up every 2 s while the root lives).
        seq: u64,
        /// Hops from the sender to the root.
        depth: u8,
        /// Route from the sender up to the root.
        #[serde(with = "wire_route")]
        up: Route,
        /// Route from the root down to the sender.
        #[serde(with = "wire_route")]
        down: Route,
        /// The sender's director for the link this came over (so the receiver can extend
        /// `down` to itself).
        director: u16,
        /// The root's height (the most hops from it down its tree), as the sender last heard.
        root_height: u8,
        /// The sender's height: the most hops from it down its own subtree.
        height: u8,
        /// Whether the receiver is the sender's parent.
        child: bool,
        /// Which of the node's trees this is about: 0 the main tree, 1 and up the hashed
        /// ones (tree.rs, "More trees"); [`crate::tree::TREES`] or more is dropped.
        tree: u8,
    },
}

/// Where a node can be reached, signed by it: relays can't forge or alter it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// The node.
    pub key: PublicKey,
    /// Increases with each new record from the node.
    pub seq: u64,
    /// UDP endpoints (as the node's peers see it, and its own).
    pub endpoints: Vec<std::net::SocketAddr>,
    /// Signature over all of the above.
    pub sig: Signature,
}

/// Most endpoints in a record.
pub const MAX_ENDPOINTS: usize = 8;

fn record_msg(key: &PublicKey, seq: u64, endpoints: &[std::net::SocketAddr]) -> Vec<u8> {
    let mut m = b"meshd-endpoints".to_vec();
    m.extend_from_slice(&key.0);
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&postcard::to_allocvec(endpoints).expect("endpoints serialize"));
    m
}

impl EndpointRecord {
    /// A record for `id`.
    pub fn new(id: &Identity, seq: u64, mut endpoints: Vec<std::net::SocketAddr>) -> Self {
        endpoints.truncate(MAX_ENDPOINTS);
        let sig = id.sign(&record_msg(&id.public_key(), seq, &endpoints));
        EndpointRecord {
            key: id.public_key(),
            seq,
            endpoints,
            sig,
        }
    }
    /// Whether the signature holds and the key is a mesh key.
    pub fn verify(&self) -> bool {
        self.endpoints.len() <= MAX_ENDPOINTS
            && self.key.validate().is_ok()
            && self
                .key
                .verify(&record_msg(&self.key, self.seq, &self.endpoints), &self.sig)
                .is_ok()
    }
}

fn coord_bytes(m: &mut Vec<u8>, coord: &Option<Coord>) {
    match coord {
        Some(c) => {
            m.push(1);
            m.extend_from_slice(&c.root.0);
            route_bytes(m, &c.down);
        }
        None => m.push(0),
    }
}

fn nodes_msg(
    txid: u64,
    back: u64,
    coord: &Option<Coord>,
    alts: &[Option<Coord>; ALT_TREES],
    nodes: &[NodeRecord],
) -> Vec<u8> {
    let mut m = b"meshd-nodes".to_vec();
    m.extend_from_slice(&txid.to_le_bytes());
    m.extend_from_slice(&back.to_le_bytes());
    coord_bytes(&mut m, coord);
    alts.iter().for_each(|a| coord_bytes(&mut m, a));
    for n in nodes {
        m.extend_from_slice(&n.key.0);
        m.extend_from_slice(&n.label.to_le_bytes());
        route_bytes(&mut m, &n.coord);
        n.alts.iter().for_each(|a| route_bytes(&mut m, a));
    }
    m
}

fn pong_msg(txid: u64, coord: &Option<Coord>, alts: &[Option<Coord>; ALT_TREES]) -> Vec<u8> {
    let mut m = b"meshd-pong".to_vec();
    m.extend_from_slice(&txid.to_le_bytes());
    coord_bytes(&mut m, coord);
    alts.iter().for_each(|a| coord_bytes(&mut m, a));
    m
}

/// Something per tree from the main tree's and the hashed trees' (the inverse of [`split`]).
pub fn join<T: Copy>(main: T, alts: [T; ALT_TREES]) -> [T; crate::tree::TREES] {
    std::array::from_fn(|i| if i == 0 { main } else { alts[i - 1] })
}

/// A place in every tree split into the main tree's and the others'.
fn split(
    places: [Option<Coord>; crate::tree::TREES],
) -> (Option<Coord>, [Option<Coord>; ALT_TREES]) {
    (places[0], std::array::from_fn(|i| places[i + 1]))
}

/// Most bytes a coordinate (or its absence) takes on the wire.
pub fn coord_wire_len(c: &Option<Coord>) -> usize {
    1 + c.as_ref().map_or(0, |c| 32 + route_wire_len(&c.down))
}

/// Bytes a route takes on the wire (a count, then each label as a varint).
fn route_wire_len(r: &Route) -> usize {
    1 + r
        .segments()
        .iter()
        .map(|l| (64 - (l.0 | 1).leading_zeros() as usize).div_ceil(7))
        .sum::<usize>()
}

impl Control {
    /// A signed [`Control::Nodes`]; `back` is the responder's route to the asker, `places`
    /// its coordinates in its trees (the main one first).
    pub fn nodes(
        id: &Identity,
        txid: u64,
        back: u64,
        places: [Option<Coord>; crate::tree::TREES],
        nodes: Vec<NodeRecord>,
    ) -> Control {
        let (coord, alts) = split(places);
        let sig = id.sign(&nodes_msg(txid, back, &coord, &alts, &nodes));
        Control::Nodes {
            txid,
            responder: id.public_key(),
            back,
            coord,
            alts,
            nodes,
            sig,
        }
    }
    /// A signed [`Control::Pong`] with the responder's coordinates in its trees.
    pub fn pong(id: &Identity, txid: u64, places: [Option<Coord>; crate::tree::TREES]) -> Control {
        let (coord, alts) = split(places);
        Control::Pong {
            txid,
            responder: id.public_key(),
            coord,
            alts,
            sig: id.sign(&pong_msg(txid, &coord, &alts)),
        }
    }
    /// Checks an answer's signature against the key we expected to answer.
    pub fn verify_answer(&self, expected: &PublicKey) -> bool {
        match self {
            Control::Nodes {
                txid,
                responder,
                back,
                coord,
                alts,
                nodes,
                sig,
            } => {
                responder == expected
                    && nodes.len() <= MAX_RECORDS
                    && responder
                        .verify(&nodes_msg(*txid, *back, coord, alts, nodes), sig)
                        .is_ok()
            }
            Control::Pong {
                txid,
                responder,
                coord,
                alts,
                sig,
            } => {
                responder == expected
                    && responder.verify(&pong_msg(*txid, coord, alts), sig).is_ok()
            }
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
    use switch::Label;

    #[test]
    fn endpoint_records_are_tamper_proof() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let a = Identity::generate(&mut rng);
        let r = EndpointRecord::new(&a, 7, vec!["198.51.100.1:7400".parse().unwrap()]);
        assert!(r.verify());
        let mut moved = r.clone();
        moved.endpoints[0] = "203.0.113.9:7400".parse().unwrap();
        assert!(!moved.verify());
        let mut replayed = r.clone();
        replayed.seq = 8;
        assert!(!replayed.verify());
        let m = Control::Rendezvous { record: r };
        assert_eq!(Control::from_bytes(&m.to_bytes()), Some(m));
    }

    #[test]
    fn signed_answers() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let a = Identity::generate(&mut rng);
        let b = Identity::generate(&mut rng);
        let n = Control::nodes(
            &a,
            42,
            0x21,
            std::array::from_fn(|i| {
                Some(Coord {
                    root: [b.public_key(), a.public_key()][i % 2],
                    down: match i {
                        0 => Route::new(&[Label(0x31), Label(0x35)]).unwrap(),
                        i => Route::from(Label(0x31 + 2 * i as u64)),
                    },
                })
            }),
            vec![NodeRecord {
                key: b.public_key(),
                label: 0x13,
                coord: Route::from(Label(0x41)),
                alts: std::array::from_fn(|i| Route::from(Label(0x47 + 2 * i as u64))),
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
            back,
            coord,
            alts,
            nodes,
            sig,
        } = n
        {
            let tampered = |back, coord, nodes| {
                !Control::Nodes {
                    txid,
                    responder,
                    back,
                    coord,
                    alts,
                    nodes,
                    sig,
                }
                .verify_answer(&a.public_key())
            };
            for i in 0..ALT_TREES {
                let mut other = alts;
                other[i] = None;
                assert!(
                    !Control::Nodes {
                        txid,
                        responder,
                        back,
                        coord,
                        alts: other,
                        nodes: nodes.clone(),
                        sig,
                    }
                    .verify_answer(&a.public_key()),
                    "hashed tree {} coordinate",
                    i + 1
                );
            }
            assert!(tampered(0x23, coord, nodes.clone()), "route back");
            assert!(tampered(back, None, nodes.clone()), "coordinate");
            let mut n2 = nodes.clone();
            n2[0].label = 0x15;
            assert!(tampered(back, coord, n2), "labels");
            let mut n3 = nodes;
            n3[0].coord = Route::from(Label(0x15));
            assert!(tampered(back, coord, n3.clone()), "record coordinates");
            n3[0].coord = Route::new(&[Label(0x41), Label(0x41)]).unwrap();
            assert!(
                tampered(back, coord, n3.clone()),
                "record coordinates: a segment more"
            );
            n3[0].coord = Route::from(Label(0x41));
            for i in 0..ALT_TREES {
                let mut n4 = n3.clone();
                n4[0].alts[i] = Route::from(Label(0x45));
                assert!(
                    tampered(back, coord, n4),
                    "record hashed tree {} coordinates",
                    i + 1
                );
            }
        }
        let p = Control::pong(&b, 7, [None; crate::tree::TREES]);
        assert!(p.verify_answer(&b.public_key()));
        if let Control::Pong { responder, sig, .. } = p {
            assert!(
                !Control::Pong {
                    txid: 8,
                    responder,
                    coord: None,
                    alts: [None; ALT_TREES],
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
