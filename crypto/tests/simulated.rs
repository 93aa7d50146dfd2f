//! The simulator's stand-ins for signatures and Diffie-Hellman (its own process: the switch
//! is process-wide, so one test checks before and after it).

use meshd_crypto::noise::{Handshake, Pattern, MAX_HANDSHAKE_LEN};
use meshd_crypto::{simulated, Identity};
use rand::SeedableRng;

#[test]
fn simulated_signatures_check_key_and_message() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let a = Identity::generate(&mut rng);
    let b = Identity::generate(&mut rng);
    let real = a.sign(b"hello");
    assert!(a.public_key().verify(b"hello", &real).is_ok());
    assert!(!simulated::signatures(), "off unless asked for");

    simulated::use_for_simulation();
    assert!(simulated::signatures());
    let sim = a.sign(b"hello");
    assert_ne!(sim, real, "not an ed25519 signature any more");
    assert!(a.public_key().verify(b"hello", &sim).is_ok());
    assert!(
        a.public_key().verify(b"hellO", &sim).is_err(),
        "other message"
    );
    assert!(b.public_key().verify(b"hello", &sim).is_err(), "other key");
    assert!(a.public_key().validate().is_ok());

    // Handshakes with the stand-in Diffie-Hellman: XX and IK complete, bind each side's
    // identity, and give transports that talk to each other.
    for pattern in [Pattern::XX, Pattern::IK] {
        let remote = b.public_key();
        let mut i = Handshake::initiator(&a, pattern, Some(&remote), None).unwrap();
        let mut r = Handshake::responder(&b, pattern, None).unwrap();
        let mut buf = [0u8; MAX_HANDSHAKE_LEN];
        let mut initiator_turn = true;
        while !(i.is_finished() && r.is_finished()) {
            let (w, rd) = if initiator_turn {
                (&mut i, &mut r)
            } else {
                (&mut r, &mut i)
            };
            let n = w.write_message(&mut buf).unwrap();
            rd.read_message(&buf[..n]).unwrap();
            initiator_turn = !initiator_turn;
        }
        let (mut ti, ki) = i.into_transport().unwrap();
        let (mut tr, kr) = r.into_transport().unwrap();
        assert_eq!((ki, kr), (b.public_key(), a.public_key()), "{pattern:?}");
        let mut sealed = [0u8; 64];
        let (counter, n) = ti.encrypt(b"over the stand-in", &mut sealed).unwrap();
        let mut opened = [0u8; 64];
        let m = tr.decrypt(counter, &sealed[..n], &mut opened).unwrap();
        assert_eq!(&opened[..m], b"over the stand-in");
    }

    // An IK initiator that pins the wrong identity never completes.
    let c = Identity::generate(&mut rng);
    let mut i = Handshake::initiator(&a, Pattern::IK, Some(&c.public_key()), None).unwrap();
    let mut r = Handshake::responder(&b, Pattern::IK, None).unwrap();
    let mut buf = [0u8; MAX_HANDSHAKE_LEN];
    let n = i.write_message(&mut buf).unwrap();
    assert!(r.read_message(&buf[..n]).is_err());
}
