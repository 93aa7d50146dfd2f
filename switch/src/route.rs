use std::fmt;
use std::str::FromStr;

use crate::{Label, LabelError};

/// Most segments a [`Route`] has: a frame goes through at most fourteen relays. Fifteen
/// keep a `Route` at 128 bytes (the relay header's 4-bit count would hold sixteen, but at
/// 136 bytes every copy of a route became a `memmove` call: +17% CPU in a 3,000-node
/// simulation, docs/sims.md "eleventh session"). (Four until the tree's coordinates took
/// several labels: at 10,000 nodes a geometric mesh's tree is 110 hops deep, and four labels of ~16 hops
/// through its nodes of ~8 links left 38% of the nodes without a coordinate; with eight, the
/// tree routes between far ends of it, ~130 hops, did not fit, and 28% of pairs failed.)
pub const MAX_SEGMENTS: usize = 15;

/// A source route of one to [`MAX_SEGMENTS`] labels ("segments").
///
/// The first segment leads from the sender to the node where it ends; if more follow, that
/// node is a *relay*: it re-labels the frame with the next segment, its own route onward
/// (see [`crate::relay`]). Almost every route is a single label; segments are for routes
/// longer than a label holds (31 hops through nodes with two links, 15 through nodes with
/// up to eight), as in long physical meshes or between the edges of a large overlay.
///
/// Unused slots hold [`Label::INVALID`]. Equality, order and hash look at the used slots only
/// (most routes use one of fifteen; comparing all of them cost 14% of a simulation's CPU):
/// the order is the segments' lexicographic order, the same as over the whole array, as
/// unused slots hold the smallest label.
#[derive(Clone, Copy)]
pub struct Route {
    segs: [Label; MAX_SEGMENTS],
    len: u8,
}

impl From<Label> for Route {
    fn from(l: Label) -> Route {
        let mut segs = [Label::INVALID; MAX_SEGMENTS];
        segs[0] = l;
        Route { segs, len: 1 }
    }
}

impl Route {
    /// No route (e.g. a reverse route that overflowed on some segment).
    pub const INVALID: Route = Route {
        segs: [Label::INVALID; MAX_SEGMENTS],
        len: 1,
    };

    /// A route through the given segments, first traveled first. Empty segments ("here")
    /// are left out, as relaying to oneself does nothing. `None` for more than
    /// [`MAX_SEGMENTS`] segments or none; an invalid segment makes an invalid route.
    pub fn new(segments: &[Label]) -> Option<Route> {
        let mut segs = [Label::INVALID; MAX_SEGMENTS];
        let mut len = 0;
        for &s in segments.iter().filter(|&&s| s != Label::SELF) {
            if len == MAX_SEGMENTS {
                return None;
            }
            segs[len] = s;
            len += 1;
        }
        if len == 0 {
            if segments.is_empty() {
                return None;
            }
            return Some(Route::from(Label::SELF));
        }
        if segs[..len].iter().any(|s| !s.is_valid()) {
            return Some(Route::INVALID);
        }
        Some(Route {
            segs,
            len: len as u8,
        })
    }

    /// The segments, first traveled first.
    pub fn segments(&self) -> &[Label] {
        &self.segs[..self.len as usize]
    }

    /// The first segment: the label the frame leaves with.
    pub fn first(&self) -> Label {
        self.segs[0]
    }

    /// The label, if the route is a single segment.
    pub fn single(&self) -> Option<Label> {
        (self.len == 1).then_some(self.segs[0])
    }

    /// Whether every segment has a marker bit.
    pub fn is_valid(&self) -> bool {
        self.segments().iter().all(|s| s.is_valid())
    }

    /// Whether every segment decodes completely.
    pub fn is_well_formed(&self) -> bool {
        self.segments().iter().all(|s| s.is_well_formed())
    }

    /// Switch hops over all segments.
    pub fn hops(&self) -> usize {
        self.segments().iter().map(|s| s.hops()).sum()
    }

    /// The route to X (`self`) followed by X's route onward (`then`): spliced onto the last
    /// segment without the detour where `then` walks back along it ([`Label::splice_unlooped`];
    /// `back` is X's route back over that segment), or, where that overflows a label, with
    /// `then` as one more segment and X as its relay.
    pub fn extend(self, back: Label, then: Label) -> Result<Route, LabelError> {
        if !self.is_valid() || !then.is_valid() {
            return Err(LabelError::Malformed);
        }
        let n = self.len as usize;
        let mut segs = self.segs;
        match segs[n - 1].splice_unlooped(back, then) {
            Ok(l) => {
                segs[n - 1] = l;
                Route::new(&segs[..n]).ok_or(LabelError::Overflow)
            }
            Err(LabelError::Overflow) if n < MAX_SEGMENTS => {
                segs[n] = then;
                Route::new(&segs[..=n]).ok_or(LabelError::Overflow)
            }
            Err(e) => Err(e),
        }
    }

    /// The first `n` hops of the route (e.g. for a traceroute: each prefix ends at one hop).
    pub fn prefix(&self, n: usize) -> Route {
        let mut segs = [Label::INVALID; MAX_SEGMENTS];
        let mut left = n;
        let mut len = 0;
        for &s in self.segments() {
            let h = s.hops();
            segs[len] = if left >= h { s } else { s.prefix(left) };
            len += 1;
            if left <= h {
                break;
            }
            left -= h;
        }
        Route::new(&segs[..len]).unwrap_or(Route::INVALID)
    }

    /// The directors over all segments, first hop first.
    pub fn directors(&self) -> impl Iterator<Item = crate::Director> + '_ {
        self.segments().iter().flat_map(|s| s.directors())
    }

    /// The route through these directors, first hop first, packed into as few segments as
    /// hold them (each segment as full as it goes; any node can relay). `None` if they need
    /// more than [`MAX_SEGMENTS`] or a director is too large; no directors give
    /// [`Label::SELF`].
    pub fn from_directors(ds: impl IntoIterator<Item = crate::Director>) -> Option<Route> {
        let mut segs = [Label::INVALID; MAX_SEGMENTS];
        let mut len = 0;
        let mut cur = Label::SELF;
        for d in ds {
            let hop = Label::single(d).ok()?;
            match cur.splice(hop) {
                Ok(l) => cur = l,
                Err(_) => {
                    if len + 1 == MAX_SEGMENTS {
                        return None;
                    }
                    segs[len] = cur;
                    len += 1;
                    cur = hop;
                }
            }
        }
        segs[len] = cur;
        Route::new(&segs[..=len])
    }

    /// One more hop out of director `d` at the end: onto the last segment, or as a segment
    /// of its own (relayed where the route ended) where that overflows. `None` past
    /// [`MAX_SEGMENTS`] or for an invalid route.
    pub fn then_hop(&self, d: crate::Director) -> Option<Route> {
        if !self.is_valid() {
            return None;
        }
        let hop = Label::single(d).ok()?;
        let n = self.len as usize;
        let mut segs = self.segs;
        if let Ok(l) = segs[n - 1].splice(hop) {
            segs[n - 1] = l;
            return Route::new(&segs[..n]);
        }
        if n == MAX_SEGMENTS {
            return None;
        }
        segs[n] = hop;
        Route::new(&segs[..=n])
    }

    /// One hop out of director `d` before the route: onto the first segment, or as a
    /// segment of its own (relayed one hop on) where that overflows. `None` past
    /// [`MAX_SEGMENTS`] or for an invalid route.
    pub fn hop_then(&self, d: crate::Director) -> Option<Route> {
        if !self.is_valid() {
            return None;
        }
        let n = self.len as usize;
        if let Ok(l) = self.segs[0].push(d) {
            let mut segs = self.segs;
            segs[0] = l;
            return Route::new(&segs[..n]);
        }
        if n == MAX_SEGMENTS {
            return None;
        }
        let mut segs = [Label::INVALID; MAX_SEGMENTS];
        segs[0] = Label::single(d).ok()?;
        segs[1..=n].copy_from_slice(self.segments());
        Route::new(&segs[..=n])
    }

    /// Encoded length of the relay header this route needs (0 for a single segment).
    pub fn relay_header_len(&self) -> usize {
        match self.len {
            1 => 0,
            n => 2 + 8 * (n as usize - 1),
        }
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Route) -> bool {
        self.segments() == other.segments()
    }
}

impl Eq for Route {}

impl std::hash::Hash for Route {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.segments().hash(state);
    }
}

impl PartialOrd for Route {
    fn partial_cmp(&self, other: &Route) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Route {
    fn cmp(&self, other: &Route) -> std::cmp::Ordering {
        self.segments().cmp(other.segments())
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Route({self})")
    }
}

/// Segments in hex, joined by `+` (a single-segment route prints as its label).
impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.segments().iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

impl FromStr for Route {
    type Err = LabelError;
    /// Parses what [`Route`]'s `Display` prints: hex labels joined by `+`.
    fn from_str(s: &str) -> Result<Route, LabelError> {
        let mut segs = Vec::new();
        for part in s.split('+') {
            let v = u64::from_str_radix(part.trim(), 16).map_err(|_| LabelError::Malformed)?;
            segs.push(Label(v));
        }
        let r = Route::new(&segs).ok_or(LabelError::Overflow)?;
        if r.is_well_formed() {
            Ok(r)
        } else {
            Err(LabelError::Malformed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_longer_than_a_label_takes_two_segments() {
        let near = Label::from_directors(&[1; 30]).unwrap();
        let on = Label::from_directors(&[1; 10]).unwrap();
        let r = Route::from(near).extend(Label::INVALID, on).unwrap();
        assert_eq!(r.segments(), &[near, on]);
        assert_eq!(r.hops(), 40);
        assert_eq!(r.relay_header_len(), 10);
        // A short hop more fits in the last segment.
        let r2 = r.extend(Label::INVALID, Label::single(1).unwrap()).unwrap();
        assert_eq!(r2.segments().len(), 2);
        assert_eq!(r2.hops(), 41);
        // Printing and parsing round-trip.
        assert_eq!(r2.to_string().parse::<Route>().unwrap(), r2);
        assert_eq!(
            near.to_string().parse::<Route>().unwrap(),
            Route::from(near)
        );
        assert!("zz".parse::<Route>().is_err());
        // Prefixes cross into the second segment.
        assert_eq!(r2.prefix(5), Route::from(near.prefix(5)));
        assert_eq!(r2.prefix(30), Route::from(near));
        assert_eq!(r2.prefix(31).segments().len(), 2);
        assert_eq!(r2.prefix(31).hops(), 31);
        assert_eq!(r2.prefix(41), r2);
        assert_eq!(r2.prefix(99), r2);
        assert!("1+".parse::<Route>().is_err());
    }

    #[test]
    fn directors_pack_into_as_few_segments_as_hold_them() {
        // 40 hops through two-link nodes: 31 in the first label, 9 in the second.
        let r = Route::from_directors([1; 40]).unwrap();
        assert_eq!(r.segments().len(), 2);
        assert_eq!(r.segments()[0].hops(), 31);
        assert_eq!(r.hops(), 40);
        assert!(r.directors().eq([1; 40]));
        assert_eq!(Route::from_directors([]), Some(Route::from(Label::SELF)));
        assert_eq!(
            Route::from_directors([1; 31 * MAX_SEGMENTS])
                .unwrap()
                .hops(),
            31 * MAX_SEGMENTS
        );
        assert_eq!(Route::from_directors([1; 31 * MAX_SEGMENTS + 1]), None);
        assert_eq!(Route::from_directors([5000]), None);
        // Hop by hop from either end gives the same directors, the same packing from the end
        // that was built first.
        let mut down = Route::from(Label::SELF);
        let mut up = Route::from(Label::SELF);
        let ds: Vec<crate::Director> = (0..40).map(|i| (i * 7 % 11) as crate::Director).collect();
        for &d in &ds {
            down = down.then_hop(d).unwrap();
            up = up.hop_then(d).unwrap();
        }
        assert!(down.directors().eq(ds.iter().copied()));
        assert!(up.directors().eq(ds.iter().rev().copied()));
        assert_eq!(down, Route::from_directors(ds.iter().copied()).unwrap());
        // Both packed from the root's end (ds[0]): the segments there hold the same hops.
        assert_eq!(up.segments().len(), down.segments().len());
        assert_eq!(
            up.segments().last().unwrap().hops(),
            down.segments()[0].hops()
        );
        let full = Route::from_directors([1; 31 * MAX_SEGMENTS]).unwrap();
        assert_eq!(full.then_hop(1), None);
        assert_eq!(full.hop_then(1), None);
        assert_eq!(Route::INVALID.then_hop(1), None);
    }

    #[test]
    fn at_most_max_segments_and_no_empty_ones() {
        let full = Label::from_directors(&[1; 31]).unwrap();
        let mut r = Route::from(full);
        for _ in 1..MAX_SEGMENTS {
            r = r.extend(Label::INVALID, full).unwrap();
        }
        assert_eq!(r.segments().len(), MAX_SEGMENTS);
        assert_eq!(r.hops(), 31 * MAX_SEGMENTS);
        assert_eq!(r.extend(Label::INVALID, full), Err(LabelError::Overflow));
        assert_eq!(
            Route::new(&[Label::SELF, full, Label::SELF]).unwrap(),
            Route::from(full)
        );
        assert_eq!(
            Route::new(&[Label::SELF]).unwrap(),
            Route::from(Label::SELF)
        );
        assert!(!Route::new(&[full, Label::INVALID]).unwrap().is_valid());
        assert_eq!(Route::new(&[]), None);
        assert_eq!(Route::new(&[full; MAX_SEGMENTS + 1]), None);
    }
}
