//! The TOML config file, the identity on disk, and how command-line flags override them.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use crypto::{Identity, PublicKey};
use serde::Deserialize;

/// Default UDP listen address.
pub const DEFAULT_LISTEN: &str = "[::]:7400";
/// Default TUN name.
pub const DEFAULT_TUN: &str = "meshd0";
/// Default admin API address.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:7401";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/meshd";

/// The config file. Every field is optional; flags override it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The node's ed25519 seed (64 hex digits). Secret.
    pub private_key: Option<String>,
    /// UDP listen address.
    pub listen: Option<String>,
    /// Peers: `HOST:PORT` or `PUBKEY@HOST:PORT`.
    #[serde(default)]
    pub peers: Vec<String>,
    /// TUN device name.
    pub tun: Option<String>,
    /// Admin API address.
    pub admin: Option<String>,
    /// Allow the admin API on a non-loopback address.
    #[serde(default)]
    pub admin_allow_remote: bool,
    /// Admin token (else generated into STATE_DIR/admin.token).
    pub admin_token: Option<String>,
    /// Also serve the admin API on this unix socket (mode 0600).
    pub admin_socket: Option<PathBuf>,
    /// State directory.
    pub state_dir: Option<PathBuf>,
    /// Network secret: only nodes with the same secret can link.
    pub network_secret: Option<String>,
    /// If non-empty, only these keys may link to us.
    #[serde(default)]
    pub allowed_keys: Vec<String>,
    /// Find and link to meshd nodes on the local network (default: on).
    pub lan_discovery: Option<bool>,
    /// Interfaces to beacon on (`*` wildcards); empty: all.
    #[serde(default)]
    pub lan_interfaces: Vec<String>,
    /// Interfaces never to beacon on.
    #[serde(default)]
    pub lan_exclude: Vec<String>,
}

impl ConfigFile {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<ConfigFile> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let cfg: ConfigFile =
            toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
        for p in &cfg.peers {
            PeerSpec::parse(p).with_context(|| format!("in config {}", path.display()))?;
        }
        cfg.allowed()?;
        Ok(cfg)
    }

    /// The allow-list, parsed.
    pub fn allowed(&self) -> Result<Option<std::collections::HashSet<PublicKey>>> {
        if self.allowed_keys.is_empty() {
            return Ok(None);
        }
        let mut set = std::collections::HashSet::new();
        for k in &self.allowed_keys {
            let key: PublicKey = k
                .parse()
                .with_context(|| format!("allowed_keys: bad key {k:?}"))?;
            key.validate()
                .with_context(|| format!("allowed_keys: {k}"))?;
            set.insert(key);
        }
        Ok(Some(set))
    }
}

/// A peer as written by the user: `HOST:PORT` or `PUBKEY@HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    /// Pinned key.
    pub key: Option<PublicKey>,
    /// Host name or IP literal.
    pub host: String,
    /// UDP port.
    pub port: u16,
}

impl PeerSpec {
    /// Parses `[KEY@]HOST:PORT`; HOST may be a name, an IPv4 literal or `[IPv6]`.
    pub fn parse(s: &str) -> Result<PeerSpec> {
        let (key, rest) = match s.split_once('@') {
            Some((k, r)) => {
                let key: PublicKey = k
                    .parse()
                    .with_context(|| format!("peer {s:?}: the key must be 64 hex digits"))?;
                key.validate().with_context(|| format!("peer {s:?}"))?;
                (Some(key), r)
            }
            None => (None, s),
        };
        let (host, port) = rest
            .rsplit_once(':')
            .with_context(|| format!("peer {s:?}: expected HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .with_context(|| format!("peer {s:?}: bad port"))?;
        let host = if let Some(h) = host.strip_prefix('[') {
            h.strip_suffix(']')
                .with_context(|| format!("peer {s:?}: unclosed ["))?
                .to_string()
        } else {
            if host.contains(':') {
                bail!("peer {s:?}: write IPv6 literals in brackets, like [::1]:7400");
            }
            host.to_string()
        };
        if host.is_empty() {
            bail!("peer {s:?}: empty host");
        }
        Ok(PeerSpec { key, host, port })
    }

    /// Resolves the host (names through the system resolver).
    pub async fn resolve(&self) -> Result<SocketAddr> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("resolving {}", self.host))?;
        addrs
            .next()
            .with_context(|| format!("{} has no address", self.host))
    }
}

/// Loads the identity from `STATE_DIR/identity`, creating it (mode 0600) on first start.
pub fn load_or_create_identity(state_dir: &Path) -> Result<Identity> {
    let path = state_dir.join("identity");
    if path.exists() {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        return identity_from_hex(text.trim()).with_context(|| format!("in {}", path.display()));
    }
    fs::create_dir_all(state_dir)
        .with_context(|| format!("creating state dir {}", state_dir.display()))?;
    let id = Identity::generate(&mut rand::rngs::OsRng);
    write_secret(&path, &format!("{}\n", hex::encode(id.seed())))?;
    tracing::info!(address = %id.address(), "created a new identity in {}", path.display());
    Ok(id)
}

/// The admin token in `STATE_DIR/admin.token`, generated (mode 0600) on first start.
pub fn load_or_create_admin_token(state_dir: &Path) -> Result<String> {
    let path = state_dir.join("admin.token");
    if path.exists() {
        let t = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(t.trim().to_string());
    }
    fs::create_dir_all(state_dir)
        .with_context(|| format!("creating state dir {}", state_dir.display()))?;
    let mut b = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    let token = hex::encode(b);
    write_secret(&path, &format!("{token}\n"))?;
    Ok(token)
}

/// Writes a secret file with mode 0600.
pub fn write_secret(path: &Path, contents: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// An identity from a hex seed.
pub fn identity_from_hex(s: &str) -> Result<Identity> {
    let mut seed = [0u8; 32];
    hex::decode_to_slice(s, &mut seed).context("private key must be 64 hex digits")?;
    Identity::from_seed(&seed).context("this private key's address is not in fc00::/8")
}

/// A complete, commented config with a fresh identity.
pub fn generate_config() -> String {
    let id = Identity::generate(&mut rand::rngs::OsRng);
    format!(
        r#"# meshd configuration (TOML). Every setting can be overridden on the command line.

# This node's identity: an ed25519 seed. Keep it secret; it *is* the node.
# Address: {addr}
# Public key: {key}
private_key = "{seed}"

# UDP address to listen on for peers ([::] takes IPv4 and IPv6).
listen = "{listen}"

# Peers to dial and keep linked: "HOST:PORT", or "PUBKEY@HOST:PORT" to pin the peer's key.
# HOST may be a name, an IPv4 address, or an IPv6 address in brackets.
peers = [
  # "203.0.113.7:7400",
  # "0123...cdef@[2001:db8::1]:7400",
]

# Name of the TUN device that carries this node's fc00::/8 address.
tun = "{tun}"

# Admin JSON API. It refuses non-loopback addresses unless admin_allow_remote = true.
admin = "{admin}"
admin_allow_remote = false
# Bearer token for the admin API; if unset, one is generated into STATE_DIR/admin.token.
# admin_token = "..."
# Also serve the admin API on a unix socket (mode 0600).
# admin_socket = "/run/meshd/admin.sock"

# Where runtime state (admin token, saved peers) lives.
state_dir = "{state}"

# Only nodes with the same secret can link: one machine can belong to separate meshes.
# network_secret = "..."

# If non-empty, only these public keys may link to this node.
allowed_keys = []

# Find meshd nodes on the local network by IPv6 link-local multicast beacons and link to
# them without any peers entry. Beacons carry no secret: network_secret and allowed_keys
# still decide who may link. Interface names may use * wildcards.
lan_discovery = true
lan_interfaces = []          # empty: every interface with multicast
lan_exclude = ["docker*"]
"#,
        addr = id.address(),
        key = id.public_key(),
        seed = hex::encode(id.seed()),
        listen = DEFAULT_LISTEN,
        tun = DEFAULT_TUN,
        admin = DEFAULT_ADMIN,
        state = DEFAULT_STATE_DIR,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_specs() {
        let p = PeerSpec::parse("example.org:7400").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.key),
            ("example.org", 7400, None)
        );
        let p = PeerSpec::parse("[::1]:7400").unwrap();
        assert_eq!(p.host, "::1");
        let p = PeerSpec::parse("10.0.0.1:1").unwrap();
        assert_eq!(p.host, "10.0.0.1");
        let key = "71d0c74b105f51884f5849366f8ba7968141ffc0846de4f3a3682ae5d0fe833e";
        let p = PeerSpec::parse(&format!("{key}@[fe80::1]:7400")).unwrap();
        assert_eq!(p.key.unwrap().to_hex(), key);
        for bad in [
            "nohost",
            "::1:7400",
            "h:port",
            "zz@h:1",
            "[::1:7400",
            ":7400",
        ] {
            assert!(PeerSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_config_parses() {
        let text = generate_config();
        let cfg: ConfigFile = toml::from_str(&text).unwrap();
        assert!(identity_from_hex(cfg.private_key.as_deref().unwrap()).is_ok());
        assert_eq!(cfg.listen.as_deref(), Some(DEFAULT_LISTEN));
    }

    #[test]
    fn broken_configs_are_refused_clearly() {
        assert!(toml::from_str::<ConfigFile>("listen = 5").is_err());
        assert!(
            toml::from_str::<ConfigFile>("lisen = \"x\"").is_err(),
            "unknown keys are errors"
        );
        assert!(identity_from_hex("abc").is_err());
    }
}
