//! The simulator's stand-in signatures (its own process: the switch is process-wide).

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
}
