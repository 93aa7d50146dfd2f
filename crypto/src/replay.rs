/// Sliding replay window over 64-bit packet counters (RFC 6479 style, 1984 packets wide).
///
/// Accepts counters in any order within the window, each at most once; counters older than
/// the window are refused. `check` does not change state, so a caller can check, then
/// authenticate, then `commit` — a forged packet never moves the window.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Highest counter committed, plus one (0: nothing seen yet).
    next: u64,
    bits: [u64; WORDS],
}

const WORDS: usize = 32;
/// One word of the ring is always being refilled, so the usable window is one word short.
const WINDOW: u64 = (WORDS as u64 - 1) * 64;

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window.
    pub fn new() -> Self {
        ReplayWindow {
            next: 0,
            bits: [0; WORDS],
        }
    }

    /// Would `counter` be accepted?
    pub fn check(&self, counter: u64) -> bool {
        if counter == u64::MAX {
            return false;
        }
        if counter >= self.next {
            return true;
        }
        if self.next - counter > WINDOW {
            return false;
        }
        let (w, b) = Self::slot(counter);
        self.bits[w] & (1 << b) == 0
    }

    /// Records `counter` as seen. Returns false (and changes nothing) if `check` would fail.
    pub fn commit(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if counter >= self.next {
            // Clear the words the window slides over.
            let old_word = if self.next == 0 {
                None
            } else {
                Some((self.next - 1) / 64)
            };
            let new_word = counter / 64;
            match old_word {
                Some(ow) if new_word - ow < WORDS as u64 => {
                    for wi in (ow + 1)..=new_word {
                        self.bits[(wi % WORDS as u64) as usize] = 0;
                    }
                }
                _ => self.bits = [0; WORDS],
            }
            self.next = counter + 1;
        }
        let (w, b) = Self::slot(counter);
        self.bits[w] |= 1 << b;
        true
    }

    fn slot(counter: u64) -> (usize, u32) {
        (
            ((counter / 64) % WORDS as u64) as usize,
            (counter % 64) as u32,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn replays_refused() {
        let mut w = ReplayWindow::new();
        assert!(w.commit(0));
        assert!(!w.commit(0));
        assert!(w.commit(5));
        assert!(w.commit(3));
        assert!(!w.commit(3));
        assert!(w.commit(100_000));
        assert!(!w.commit(5), "far behind the window");
        assert!(w.commit(100_000 - (WINDOW - 1)));
        assert!(!w.commit(100_000 - WINDOW));
        assert!(!w.check(u64::MAX));
    }

    proptest! {
        /// Against a model: accepted iff never seen and within WINDOW of the highest seen.
        #[test]
        fn matches_model(seq in proptest::collection::vec(0u64..6000, 1..400)) {
            let mut w = ReplayWindow::new();
            let mut seen = HashSet::new();
            let mut highest: Option<u64> = None;
            for c in seq {
                let fresh = !seen.contains(&c);
                let in_window = match highest { None => true, Some(h) => c > h || h - c < WINDOW };
                let want = fresh && in_window;
                prop_assert_eq!(w.commit(c), want, "counter {}", c);
                if want {
                    seen.insert(c);
                    highest = Some(highest.map_or(c, |h| h.max(c)));
                }
            }
        }
    }
}
