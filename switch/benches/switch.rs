//! The label switch's per-packet work: the forwarding step on a full-size frame, and the
//! label arithmetic the router does when it learns paths.
//!
//! `cargo bench -p meshd-switch`; under `cargo test` each benchmark runs once.

use divan::counter::BytesCount;
use divan::{black_box, Bencher};
use meshd_switch::{forward, Decision, FrameKind, Label, SwitchHeader};

fn main() {
    divan::main();
}

fn frame(route: Label) -> Vec<u8> {
    let mut f = vec![0x5au8; 1400];
    SwitchHeader {
        route,
        reverse: Label::SELF,
        kind: FrameKind::Session,
    }
    .write(&mut f);
    f
}

/// One forwarding hop on a 1400-byte frame: parse the header, pop this hop's director, push
/// the reverse one, write the header back. The header is restored each iteration (a 17-byte
/// write, part of the measured time) so every iteration forwards the same route.
#[divan::bench]
fn forward_1400(b: Bencher) {
    let route = Label::from_directors(&[5, 100, 3]).unwrap();
    let mut f = frame(route);
    let h = SwitchHeader::parse(&f).unwrap();
    b.counter(BytesCount::new(f.len())).bench_local(|| {
        h.write(&mut f);
        let d = forward(black_box(&mut f), Some(7));
        debug_assert_eq!(d, Decision::Forward(5));
        d
    });
}

/// The last hop: the route is spent, the frame is delivered.
#[divan::bench]
fn deliver_1400(b: Bencher) {
    let mut f = frame(Label::SELF);
    let h = SwitchHeader::parse(&f).unwrap();
    b.bench_local(|| {
        h.write(&mut f);
        forward(black_box(&mut f), Some(7))
    });
}

/// Path to X then X's path to Y, as a lookup answer is spliced.
#[divan::bench]
fn label_splice(b: Bencher) {
    let to_x = Label::from_directors(&[2, 5, 100]).unwrap();
    let x_to_y = Label::from_directors(&[7, 3, 1000, 12]).unwrap();
    b.bench_local(|| black_box(to_x).splice(black_box(x_to_y)));
}

/// Reversing a route (what a reply path needs).
#[divan::bench]
fn label_reverse(b: Bencher) {
    let l = Label::from_directors(&[2, 5, 100, 7, 3]).unwrap();
    b.bench_local(|| black_box(l).reversed());
}
