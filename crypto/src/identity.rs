use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use blake2::digest::consts::U16;
use blake2::{Blake2b, Digest};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

/// Errors from parsing or checking keys and addresses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The text is not 64 hex digits.
    #[error("a key is 64 hex digits")]
    BadHex,
    /// The bytes are not a valid ed25519 point.
    #[error("not a valid ed25519 public key")]
    BadPoint,
    /// The key's hash does not start with 0xfc, so it is no meshd node key.
    #[error("key does not hash to an fc00::/8 address")]
    NotMeshAddress,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
}

/// A node's ed25519 public key (32 bytes). The node's address is its hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

/// A 64-byte ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "sig_serde")] pub [u8; 64]);

mod sig_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: &[u8] = <&[u8]>::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::invalid_length(v.len(), &"64 bytes"))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", hex::encode(&self.0[..8]))
    }
}

/// A node's address: 16 bytes, the whole BLAKE2b-128 hash of its public key; always in fc00::/8.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Address(pub [u8; 16]);

impl PublicKey {
    /// The address this key owns: BLAKE2b with a 128-bit output over the 32 key bytes.
    pub fn address(&self) -> Address {
        let mut h = Blake2b::<U16>::new();
        h.update(self.0);
        Address(h.finalize().into())
    }

    /// Checks that this is a valid ed25519 point whose address is in fc00::/8; what every key
    /// arriving from the network must pass.
    pub fn validate(&self) -> Result<Address, KeyError> {
        if !crate::simulated::signatures() {
            VerifyingKey::from_bytes(&self.0).map_err(|_| KeyError::BadPoint)?;
        }
        let a = self.address();
        if a.0[0] != 0xfc {
            return Err(KeyError::NotMeshAddress);
        }
        Ok(a)
    }

    /// The Montgomery (x25519) form of this key: the Noise static key of the node.
    pub fn to_x25519(&self) -> Result<[u8; 32], KeyError> {
        let vk = VerifyingKey::from_bytes(&self.0).map_err(|_| KeyError::BadPoint)?;
        Ok(vk.to_montgomery().to_bytes())
    }

    /// Verifies an ed25519 signature made by this key over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> Result<(), KeyError> {
        if crate::simulated::signatures() {
            return (crate::simulated::sign(self, msg) == *sig)
                .then_some(())
                .ok_or(KeyError::BadSignature);
        }
        let vk = VerifyingKey::from_bytes(&self.0).map_err(|_| KeyError::BadPoint)?;
        let s = ed25519_dalek::Signature::from_bytes(&sig.0);
        vk.verify(msg, &s).map_err(|_| KeyError::BadSignature)
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut b).map_err(|_| KeyError::BadHex)?;
        Ok(PublicKey(b))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}..)", &self.to_hex()[..12])
    }
}

impl Address {
    /// As an IPv6 address.
    pub fn ip(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.0)
    }
    /// XOR distance to another address (Kademlia metric), as a big-endian integer.
    pub fn distance(&self, other: &Address) -> u128 {
        u128::from_be_bytes(self.0) ^ u128::from_be_bytes(other.0)
    }
    /// Number of leading bits shared with `other` (128 when equal).
    pub fn common_prefix_len(&self, other: &Address) -> u32 {
        self.distance(other).leading_zeros()
    }
}

impl From<Ipv6Addr> for Address {
    fn from(ip: Ipv6Addr) -> Self {
        Address(ip.octets())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.ip())
    }
}
impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.ip())
    }
}

/// A node's identity: an ed25519 signing key whose public key hashes into fc00::/8.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
    public: PublicKey,
    address: Address,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.address)
    }
}

impl Identity {
    /// Generates keys until one hashes into fc00::/8 (about 256 tries on average).
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Identity {
        loop {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            if let Ok(id) = Identity::from_seed(&seed) {
                return id;
            }
        }
    }

    /// The identity with this 32-byte ed25519 seed, if its address is in fc00::/8.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Identity, KeyError> {
        let signing = SigningKey::from_bytes(seed);
        let public = PublicKey(signing.verifying_key().to_bytes());
        let address = public.address();
        if address.0[0] != 0xfc {
            return Err(KeyError::NotMeshAddress);
        }
        Ok(Identity {
            signing,
            public,
            address,
        })
    }

    /// The secret seed (to store on disk).
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }
    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }
    /// The node's address.
    pub fn address(&self) -> Address {
        self.address
    }
    /// The x25519 secret used as the Noise static key: the clamped scalar that ed25519 derives
    /// from the seed (SHA-512 of the seed, first half), so its public half is
    /// [`PublicKey::to_x25519`] of our ed25519 key.
    pub fn x25519_secret(&self) -> [u8; 32] {
        self.signing.to_scalar_bytes()
    }
    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        if crate::simulated::signatures() {
            return crate::simulated::sign(&self.public_key(), msg);
        }
        Signature(self.signing.sign(msg).to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{RngCore, SeedableRng};

    /// Known answer: values computed independently (Python `cryptography` for ed25519, hashlib
    /// for BLAKE2b-128, the birational map u = (1+y)/(1-y) for x25519). Changing the derivation
    /// would move every deployed node's address.
    #[test]
    fn known_answer() {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(KAT_SEED, &mut seed).unwrap();
        let id = Identity::from_seed(&seed).unwrap();
        assert_eq!(id.public_key().to_hex(), KAT_PUB);
        assert_eq!(id.address().to_string(), KAT_ADDR);
        assert_eq!(id.public_key().address(), id.address());
        assert_eq!(
            hex::encode(id.public_key().to_x25519().unwrap()),
            KAT_X25519
        );
        assert_eq!(
            KAT_PUB.parse::<PublicKey>().unwrap().validate(),
            Ok(id.address())
        );
    }
    const KAT_SEED: &str = "705661afa67d79570e6be9813d479deb77112308ef8d1719efb400f925c4bdc2";
    const KAT_PUB: &str = "71d0c74b105f51884f5849366f8ba7968141ffc0846de4f3a3682ae5d0fe833e";
    const KAT_ADDR: &str = "fc01:762b:483a:d88f:1ef8:fbe2:af0e:9352";
    const KAT_X25519: &str = "87b50a1265c19824cbec1d89390f9cfe3058132df8a4a5be5e1cf8026b89fd79";

    #[test]
    fn generated_identities_are_mesh_keys() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let id = Identity::generate(&mut rng);
        assert_eq!(id.address().0[0], 0xfc);
        assert_eq!(
            Identity::from_seed(&id.seed()).unwrap().public_key(),
            id.public_key()
        );
    }

    #[test]
    fn blake2b_128_of_known_input() {
        // BLAKE2b-128 of 32 zero bytes, from an independent implementation (Python hashlib).
        let a = PublicKey([0u8; 32]).address();
        assert_eq!(hex::encode(a.0), KAT_ZERO_HASH);
    }
    const KAT_ZERO_HASH: &str = "ff0f22492f44bac4c4b30ae58d0e8daa";

    #[test]
    fn rejects_keys_outside_fc() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut seen_reject = false;
        for _ in 0..50 {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            let sk = SigningKey::from_bytes(&seed);
            let pk = PublicKey(sk.verifying_key().to_bytes());
            if pk.address().0[0] != 0xfc {
                assert_eq!(pk.validate(), Err(KeyError::NotMeshAddress));
                assert!(Identity::from_seed(&seed).is_err());
                seen_reject = true;
            }
        }
        assert!(seen_reject);
    }

    #[test]
    fn signatures() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let id = Identity::generate(&mut rng);
        let s = id.sign(b"hello");
        assert!(id.public_key().verify(b"hello", &s).is_ok());
        assert_eq!(
            id.public_key().verify(b"hellO", &s),
            Err(KeyError::BadSignature)
        );
    }

    proptest! {
        #[test]
        fn hex_round_trip(b in proptest::array::uniform32(any::<u8>())) {
            let k = PublicKey(b);
            prop_assert_eq!(k.to_hex().parse::<PublicKey>().unwrap(), k);
        }

        #[test]
        fn distance_is_xor_metric(a in any::<u128>(), b in any::<u128>()) {
            let x = Address(a.to_be_bytes());
            let y = Address(b.to_be_bytes());
            prop_assert_eq!(x.distance(&y), y.distance(&x));
            prop_assert_eq!(x.distance(&x), 0);
            prop_assert_eq!(x.common_prefix_len(&y), (a ^ b).leading_zeros());
        }
    }
}
