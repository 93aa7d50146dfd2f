//! `/metrics` in Prometheus text format, one registry per node.

use std::sync::atomic::Ordering;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use router::Counters;

/// What the node reports at a scrape.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The node's counters.
    pub counters: Counters,
    /// Links up.
    pub peers_up: u64,
    /// Routing table entries.
    pub table_entries: u64,
    /// End-to-end sessions.
    pub sessions: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

/// The node's metric registry.
pub struct Metrics {
    registry: Registry,
    packets: Family<Direction, Counter>,
    bytes: Family<Direction, Counter>,
    drops: Family<Reason, Counter>,
    forwarded: Counter,
    relayed: Counter,
    handshakes: Family<Reason, Counter>,
    lookups: Family<Reason, Counter>,
    path_switches: Counter,
    peers_up: Gauge,
    table_entries: Gauge,
    sessions: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meshd");
        let m = Metrics {
            registry: Registry::default(),
            packets: Family::default(),
            bytes: Family::default(),
            drops: Family::default(),
            forwarded: Counter::default(),
            relayed: Counter::default(),
            handshakes: Family::default(),
            lookups: Family::default(),
            path_switches: Counter::default(),
            peers_up: Gauge::default(),
            table_entries: Gauge::default(),
            sessions: Gauge::default(),
        };
        registry.register(
            "udp_packets",
            "UDP datagrams by direction",
            m.packets.clone(),
        );
        registry.register("udp_bytes", "UDP bytes by direction", m.bytes.clone());
        registry.register("drops", "Packets dropped, by reason", m.drops.clone());
        registry.register(
            "forwarded_frames",
            "Switch frames forwarded for other nodes",
            m.forwarded.clone(),
        );
        registry.register(
            "relayed_frames",
            "Switch frames relayed for other nodes onto the next segment of their route",
            m.relayed.clone(),
        );
        registry.register(
            "handshakes",
            "Noise handshakes by kind",
            m.handshakes.clone(),
        );
        registry.register("lookups", "DHT lookups by outcome", m.lookups.clone());
        registry.register(
            "path_switches",
            "Sessions moved to another path",
            m.path_switches.clone(),
        );
        registry.register("peers_up", "Links up", m.peers_up.clone());
        registry.register(
            "routing_table_entries",
            "Routing table size",
            m.table_entries.clone(),
        );
        registry.register("sessions", "End-to-end sessions", m.sessions.clone());
        Metrics { registry, ..m }
    }

    /// Sets every metric from a snapshot and renders the text format.
    pub fn render(&self, s: &Snapshot) -> String {
        let c = &s.counters;
        let set = |ctr: &Counter, v: u64| ctr.inner().store(v, Ordering::Relaxed);
        set(
            &self.packets.get_or_create(&Direction { direction: "rx" }),
            c.rx_datagrams,
        );
        set(
            &self.packets.get_or_create(&Direction { direction: "tx" }),
            c.tx_datagrams,
        );
        set(
            &self.bytes.get_or_create(&Direction { direction: "rx" }),
            c.rx_bytes,
        );
        set(
            &self.bytes.get_or_create(&Direction { direction: "tx" }),
            c.tx_bytes,
        );
        for (reason, v) in [
            ("malformed", c.drop_malformed),
            ("unknown_index", c.drop_unknown_index),
            ("decrypt", c.drop_decrypt),
            ("replay", c.drop_replay),
            ("handshake_failed", c.drop_handshake_failed),
            ("handshake_rate", c.drop_handshake_rate),
            ("not_allowed", c.drop_not_allowed),
            ("no_route", c.drop_no_route),
            ("control_rate", c.drop_control_rate),
            ("bad_control", c.drop_bad_control),
            ("forged", c.drop_forged),
            ("spoofed", c.drop_spoofed),
            ("queue_full", c.drop_queue_full),
            ("tun_invalid", c.drop_tun_invalid),
            ("too_big", c.drop_too_big),
            ("unreachable", c.drop_unreachable),
        ] {
            set(&self.drops.get_or_create(&Reason { reason }), v);
        }
        set(&self.forwarded, c.forwarded);
        set(&self.relayed, c.relayed);
        for (reason, v) in [
            ("link_sent", c.handshakes_sent),
            ("link_completed", c.handshakes_completed),
            ("session_sent", c.session_handshakes_sent),
            ("session_completed", c.sessions_established),
        ] {
            set(&self.handshakes.get_or_create(&Reason { reason }), v);
        }
        for (reason, v) in [
            ("started", c.lookups),
            ("found", c.lookups_found),
            ("failed", c.lookups_failed),
        ] {
            set(&self.lookups.get_or_create(&Reason { reason }), v);
        }
        set(&self.path_switches, c.path_switches);
        self.peers_up.set(s.peers_up as i64);
        self.table_entries.set(s.table_entries as i64);
        self.sessions.set(s.sessions as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}
