//! Replays the saved fuzz corpus (`fuzz/corpus/<target>/*`) through the same entry points as
//! the cargo-fuzz targets, as an ordinary test on the stable toolchain.

use std::path::Path;

use meshd_router::fuzzing;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        f(&data);
        n += 1;
    }
    assert!(n > 0, "empty corpus for {target}");
}

#[test]
fn tunnel_msg_corpus() {
    replay("tunnel_msg", fuzzing::tunnel_msg);
}

#[test]
fn switch_frame_corpus() {
    replay("switch_frame", fuzzing::switch_frame);
}

#[test]
fn control_corpus() {
    replay("control", fuzzing::control);
}

#[test]
fn node_datagram_corpus() {
    replay("node_datagram", fuzzing::node_datagram);
}
