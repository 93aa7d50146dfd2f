use std::fmt;

/// An interface index on one node: which link a hop sends a frame out of.
pub type Director = u16;

/// The largest director a label can encode (so a node can have 1096 links).
pub const MAX_DIRECTOR: Director = 72 + 1023;

/// Errors building or reading labels.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum LabelError {
    /// The route doesn't fit in 63 bits; it is refused rather than truncated, so a label
    /// never silently names another route.
    #[error("route too long for a 64-bit label")]
    Overflow,
    /// Director beyond [`MAX_DIRECTOR`].
    #[error("director {0} too large")]
    Director(u32),
    /// The bits don't decode (zero label, or a code cut off by the marker bit).
    #[error("malformed label")]
    Malformed,
}

/// A source route: a stack of directors in 64 bits.
///
/// Bits are read from the least significant end. The highest set bit is a marker that ends
/// the route; `Label(1)` ([`Label::SELF`]) is the empty route ("here") and `Label(0)` is
/// invalid. Each director is a prefix-free code, small indices short:
///
/// | low bits | width | directors |
/// |---|---|---|
/// | `…x0` | 2 | 0–1 |
/// | `…xx01` | 4 | 2–5 |
/// | `…x011` | 4 | 6–7 |
/// | `…xxxxxx0111` | 10 | 8–71 |
/// | `…xxxxxxxxxx1111` | 14 | 72–1095 |
///
/// So 15 hops through nodes with ≤ 8 links always fit, 31 through nodes with 2 (a line, the
/// sparse parts of real networks), and a node with a thousand peers is still routable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label(pub u64);

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Label({:016x})", self.0)
    }
}
impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Encodes a director as (code bits, width). Low bits first (see [`Label`]).
fn encode(d: Director) -> Result<(u64, u32), LabelError> {
    let d = d as u64;
    if d < 2 {
        Ok((d << 1, 2))
    } else if d < 6 {
        Ok((((d - 2) << 2) | 0b01, 4))
    } else if d < 8 {
        Ok((((d - 6) << 3) | 0b011, 4))
    } else if d < 72 {
        Ok((((d - 8) << 4) | 0b0111, 10))
    } else if d <= MAX_DIRECTOR as u64 {
        Ok((((d - 72) << 4) | 0b1111, 14))
    } else {
        Err(LabelError::Director(d as u32))
    }
}

/// Decodes the director at the low end of `v`: (director, width).
fn decode(v: u64) -> (u64, u32) {
    if v & 1 == 0 {
        ((v >> 1) & 1, 2)
    } else if v & 0b10 == 0 {
        (2 + ((v >> 2) & 0b11), 4)
    } else if v & 0b100 == 0 {
        (6 + ((v >> 3) & 1), 4)
    } else if v & 0b1000 == 0 {
        (8 + ((v >> 4) & 0x3f), 10)
    } else {
        (72 + ((v >> 4) & 0x3ff), 14)
    }
}

impl Label {
    /// The empty route: the frame has arrived.
    pub const SELF: Label = Label(1);
    /// No route (e.g. a reverse route that overflowed).
    pub const INVALID: Label = Label(0);

    /// Whether the label has a marker bit.
    pub fn is_valid(self) -> bool {
        self.0 != 0
    }
    /// Bits used by directors (excluding the marker).
    pub fn bit_len(self) -> u32 {
        63 - self.0.leading_zeros()
    }
    fn payload(self) -> u64 {
        self.0 & !(1u64 << self.bit_len())
    }

    /// The label for a one-hop route out of interface `d`.
    pub fn single(d: Director) -> Result<Label, LabelError> {
        Label::SELF.push(d)
    }

    /// Builds a route from directors, first hop first.
    pub fn from_directors(ds: &[Director]) -> Result<Label, LabelError> {
        ds.iter().rev().try_fold(Label::SELF, |l, &d| l.push(d))
    }

    /// Puts `d` in front of the route (it becomes the next hop).
    pub fn push(self, d: Director) -> Result<Label, LabelError> {
        if !self.is_valid() {
            return Err(LabelError::Malformed);
        }
        let (code, width) = encode(d)?;
        if self.bit_len() + width > 63 {
            return Err(LabelError::Overflow);
        }
        Ok(Label((self.0 << width) | code))
    }

    /// Takes the next hop off the route: `None` for [`Label::SELF`].
    pub fn pop(self) -> Option<Result<(Director, Label), LabelError>> {
        if self.0 == 1 {
            return None;
        }
        if self.0 == 0 {
            return Some(Err(LabelError::Malformed));
        }
        let avail = self.bit_len();
        let v = self.0;
        let (d, width) = decode(v);
        if width > avail {
            return Some(Err(LabelError::Malformed));
        }
        Some(Ok((d as Director, Label(v >> width))))
    }

    /// The directors, first hop first. Stops at a malformed tail.
    pub fn directors(self) -> impl Iterator<Item = Director> {
        let mut l = self;
        std::iter::from_fn(move || match l.pop()? {
            Ok((d, rest)) => {
                l = rest;
                Some(d)
            }
            Err(_) => None,
        })
    }

    /// Whether every bit decodes.
    pub fn is_well_formed(self) -> bool {
        let mut l = self;
        loop {
            match l.pop() {
                None => return true,
                Some(Ok((_, r))) => l = r,
                Some(Err(_)) => return false,
            }
        }
    }

    /// Number of hops.
    pub fn hops(self) -> usize {
        self.directors().count()
    }

    /// The route `self` followed by `then` (path to X, then X's path to Y).
    pub fn splice(self, then: Label) -> Result<Label, LabelError> {
        if !self.is_valid() || !then.is_valid() {
            return Err(LabelError::Malformed);
        }
        let a = self.bit_len();
        if a + then.bit_len() > 63 {
            return Err(LabelError::Overflow);
        }
        Ok(Label((then.0 << a) | self.payload()))
    }

    /// If `self` starts with the route `prefix`, what remains after it.
    pub fn strip_prefix(self, prefix: Label) -> Option<Label> {
        let n = prefix.bit_len();
        if !prefix.is_valid()
            || n > self.bit_len()
            || self.payload() & ((1u64 << n) - 1) != prefix.payload()
        {
            return None;
        }
        let rest = Label(self.0 >> n);
        rest.is_valid().then_some(rest)
    }

    /// Whether `self` ends with the route `suffix` (the hops after some point are `suffix`).
    pub fn ends_with(self, suffix: Label) -> bool {
        let (n, m) = (self.bit_len(), suffix.bit_len());
        m <= n && (self.0 >> (n - m)) == suffix.0 && self.truncate_bits(n - m).is_well_formed()
    }

    /// The first `bits` bits of the route as a label of their own.
    fn truncate_bits(self, bits: u32) -> Label {
        Label((self.payload() & ((1u64 << bits) - 1)) | (1u64 << bits))
    }

    /// The first `n` hops of the route.
    pub fn prefix(self, n: usize) -> Label {
        let mut bits = 0;
        let mut l = self;
        for _ in 0..n {
            match l.pop() {
                Some(Ok((d, r))) => {
                    bits += encode(d).map(|(_, w)| w).unwrap_or(0);
                    l = r;
                }
                _ => break,
            }
        }
        self.truncate_bits(bits)
    }

    /// The route `self` (to X) followed by `then` (X's route to Y), without the detour where
    /// `then` first walks back along `self`. `back` is X's route back to us: the reverse label
    /// X saw on a frame that came over `self`. When `then` starts with the first k directors
    /// of `back`, its first k hops retrace the last k hops of `self`, so the result is the
    /// first n − k hops of `self` and then `then` without its first k hops. With a `back` that
    /// is not a complete reverse of `self` (wrong hop count, malformed) this is a plain
    /// [`Label::splice`].
    pub fn splice_unlooped(self, back: Label, then: Label) -> Result<Label, LabelError> {
        let n = self.hops();
        if !back.is_valid() || !back.is_well_formed() || back.hops() != n {
            return self.splice(then);
        }
        let mut rest = then;
        let mut k = 0;
        for d in back.directors() {
            match rest.pop() {
                Some(Ok((e, r))) if e == d => {
                    rest = r;
                    k += 1;
                }
                _ => break,
            }
        }
        self.prefix(n - k).splice(rest)
    }

    /// The same directors in the opposite order. (A reply route needs each hop's *reverse*
    /// director, which the switch collects in the frame's reverse label; this reorders a
    /// list of directors, e.g. to turn a collected reverse route back into a forward one.)
    pub fn reversed(self) -> Result<Label, LabelError> {
        self.directors().try_fold(Label::SELF, |l, d| l.push(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn directors() -> impl Strategy<Value = Director> {
        prop_oneof![0u16..2, 2u16..8, 8u16..72, 72u16..=MAX_DIRECTOR]
    }

    #[test]
    fn widths_and_limits() {
        assert_eq!(Label::single(0).unwrap().bit_len(), 2);
        assert_eq!(Label::single(1).unwrap().bit_len(), 2);
        assert_eq!(Label::single(5).unwrap().bit_len(), 4);
        assert_eq!(Label::single(7).unwrap().bit_len(), 4);
        assert_eq!(Label::single(71).unwrap().bit_len(), 10);
        assert_eq!(Label::single(MAX_DIRECTOR).unwrap().bit_len(), 14);
        assert_eq!(
            Label::single(MAX_DIRECTOR + 1),
            Err(LabelError::Director(1096))
        );
        // 15 hops through small nodes (≤ 8 links) fit, whatever their directors.
        for d in 0..8 {
            assert_eq!(Label::from_directors(&[d; 15]).unwrap().hops(), 15);
        }
        assert_eq!(Label::from_directors(&[7; 16]), Err(LabelError::Overflow));
        // 31 hops through nodes with two links (a line).
        assert_eq!(Label::from_directors(&[1; 31]).unwrap().hops(), 31);
        assert_eq!(Label::from_directors(&[1; 32]), Err(LabelError::Overflow));
        // 4 hops through nodes with ~1000 peers fit.
        assert_eq!(Label::from_directors(&[1000; 4]).unwrap().hops(), 4);
        assert_eq!(Label::SELF.pop(), None);
        assert_eq!(Label(0b1111).pop(), Some(Err(LabelError::Malformed)));
        // Every director round-trips, and the code is prefix-free (Kraft sum exactly 1).
        let mut kraft = 0.0;
        for d in 0..=MAX_DIRECTOR {
            let l = Label::single(d).unwrap();
            assert_eq!(l.pop(), Some(Ok((d, Label::SELF))));
            kraft += 2f64.powi(-(l.bit_len() as i32));
        }
        assert!((kraft - 1.0).abs() < 1e-12, "{kraft}");
    }

    proptest! {
        #[test]
        fn directors_round_trip(ds in proptest::collection::vec(directors(), 0..20)) {
            match Label::from_directors(&ds) {
                Ok(l) => {
                    prop_assert_eq!(l.directors().collect::<Vec<_>>(), ds.clone());
                    prop_assert!(l.is_well_formed());
                }
                Err(e) => {
                    prop_assert_eq!(e, LabelError::Overflow);
                    let bits: u32 = ds.iter().map(|&d| encode(d).unwrap().1).sum();
                    prop_assert!(bits > 63);
                }
            }
        }

        #[test]
        fn splice_concatenates_or_refuses(
            a in proptest::collection::vec(directors(), 0..10),
            b in proptest::collection::vec(directors(), 0..10),
        ) {
            let (Ok(la), Ok(lb)) = (Label::from_directors(&a), Label::from_directors(&b)) else {
                return Ok(());
            };
            let joined: Vec<_> = a.iter().chain(b.iter()).copied().collect();
            match la.splice(lb) {
                Ok(s) => {
                    prop_assert_eq!(s.directors().collect::<Vec<_>>(), joined);
                    prop_assert_eq!(s.strip_prefix(la), Some(lb));
                    prop_assert!(s.ends_with(lb));
                    prop_assert_eq!(s.prefix(a.len()), la);
                }
                // Never a truncated label that would name some other route.
                Err(e) => {
                    prop_assert_eq!(e, LabelError::Overflow);
                    prop_assert!(Label::from_directors(&joined).is_err());
                }
            }
        }

        #[test]
        fn reverse_round_trips(ds in proptest::collection::vec(directors(), 0..20)) {
            if let Ok(l) = Label::from_directors(&ds) {
                let r = l.reversed().unwrap();
                let mut rev = ds.clone();
                rev.reverse();
                prop_assert_eq!(r.directors().collect::<Vec<_>>(), rev);
                prop_assert_eq!(r.reversed().unwrap(), l);
                prop_assert_eq!(r.bit_len(), l.bit_len());
            }
        }

        /// On a random graph, a spliced route with the retraced hops removed still leads from
        /// the start to the node `then` leads to, and is never longer than the plain splice.
        #[test]
        fn splice_unlooped_reaches_the_same_node(
            links in proptest::collection::vec((0usize..12, 0usize..12), 11..40),
            walk_a in proptest::collection::vec(any::<u16>(), 0..4),
            walk_b in proptest::collection::vec(any::<u16>(), 0..4),
        ) {
            // A connected graph: a path 0-1-..-11 plus random extra links. Each node numbers
            // its links in the order they were added (its directors).
            let mut adj: Vec<Vec<usize>> = vec![Vec::new(); 12];
            let add = |a: usize, b: usize, adj: &mut Vec<Vec<usize>>| {
                if a != b && !adj[a].contains(&b) {
                    adj[a].push(b);
                    adj[b].push(a);
                }
            };
            for i in 0..11 {
                add(i, i + 1, &mut adj);
            }
            for (a, b) in links {
                add(a, b, &mut adj);
            }
            // Walks: director choices by the random numbers; the reverse collected on the way.
            let walk = |from: usize, choices: &[u16]| {
                let (mut at, mut ds, mut back) = (from, Vec::new(), Vec::new());
                for c in choices {
                    let d = *c as usize % adj[at].len();
                    let next = adj[at][d];
                    ds.push(d as Director);
                    back.insert(0, adj[next].iter().position(|&x| x == at).unwrap() as Director);
                    at = next;
                }
                (at, ds, back)
            };
            let follow = |from: usize, l: Label| l.directors().fold(from, |at, d| adj[at][d as usize]);
            let (x, a, back) = walk(0, &walk_a);
            let (y, b, _) = walk(x, &walk_b);
            let (la, lback, lb) = (
                Label::from_directors(&a).unwrap(),
                Label::from_directors(&back).unwrap(),
                Label::from_directors(&b).unwrap(),
            );
            let plain = la.splice(lb).unwrap();
            let short = la.splice_unlooped(lback, lb).unwrap();
            prop_assert_eq!(follow(0, plain), y);
            prop_assert_eq!(follow(0, short), y);
            prop_assert!(short.hops() <= plain.hops());
            // Walking straight back and out again costs nothing.
            if let Ok(detour) = lback.splice(la).and_then(|l| l.splice(lb)) {
                let there_and_back = la.splice_unlooped(lback, detour).unwrap();
                prop_assert_eq!(follow(0, there_and_back), y);
                prop_assert!(there_and_back.hops() <= plain.hops());
            }
            // A `back` that can't be the reverse of `self` changes nothing.
            prop_assert_eq!(la.splice_unlooped(Label::INVALID, lb).unwrap(), plain);
        }

        /// Distinct routes never share a label.
        #[test]
        fn no_aliasing(
            a in proptest::collection::vec(directors(), 0..16),
            b in proptest::collection::vec(directors(), 0..16),
        ) {
            if let (Ok(la), Ok(lb)) = (Label::from_directors(&a), Label::from_directors(&b)) {
                prop_assert_eq!(la == lb, a == b);
            }
        }

        /// Any 64-bit value either decodes completely or is reported malformed; never panics.
        #[test]
        fn arbitrary_bits_never_panic(v in any::<u64>(), d in any::<u16>()) {
            let l = Label(v);
            let _ = l.hops();
            let _ = l.is_well_formed();
            let _ = l.push(d);
            let _ = l.splice(Label(v.rotate_left(7)));
            let _ = l.reversed();
            let _ = l.prefix(3);
        }
    }
}
