//! The MQTT topics of the swarm (the contract of the original Python swarm, kept so its
//! tools still work).

/// Retained: the target list (space-separated names/addresses, or a JSON array).
pub const WATCH: &str = "watch";
/// Prefix of the result topics: one `ping/<target>` message per target and round, QoS 1.
pub const PING_PREFIX: &str = "ping/";
/// All result topics.
pub const PING_ALL: &str = "ping/+";
/// Prefix of a bee's last will: `rip/agent/<agent>`.
pub const RIP_AGENT_PREFIX: &str = "rip/agent/";
/// All last wills.
pub const RIP_ALL: &str = "rip/#";
/// Every bee's last will, `rip/agent/+` (what a sharing bee watches, [`crate::share`]).
pub const RIP_AGENTS: &str = "rip/agent/+";
/// Prefix of a bee's retained presence, `bees/alive/<agent>` ([`crate::share::Presence`]).
pub const ALIVE_PREFIX: &str = "bees/alive/";
/// Every bee's presence.
pub const ALIVE_ALL: &str = "bees/alive/+";

/// Prefix of an indexer's retained presence on each broker it is connected to,
/// `indexers/alive/<client id>` (payload: the client id; cleared by an empty retained
/// message, or by its last will when the connection dies): a stopping indexer gives up its
/// shared subscription only once another indexer is present (`INDEXER_HANDOVER`), or the
/// broker drops what nobody subscribes to.
pub const INDEXERS_ALIVE_PREFIX: &str = "indexers/alive/";
/// Every indexer's presence.
pub const INDEXERS_ALIVE_ALL: &str = "indexers/alive/+";

/// Prefix of a broker's announcement, `tyrell/brokers/<instance-id>`: retained, MQTT 5
/// message expiry 180 s, re-published every 60 s, cleared (empty) when the broker stops;
/// JSON `{"host": private IP, "port": 1883, "tls_port": 8883, "version": V}` (`tls_port`
/// only from a broker that ends the clients' TLS itself; [`crate::mqtt::Announcement`];
/// published by roles/broker/tyrell-broker-announce, read by tyrell-broker-bridge and the
/// indexers).
pub const BROKERS_PREFIX: &str = "tyrell/brokers/";
/// Every broker's announcement.
pub const BROKERS_ALL: &str = "tyrell/brokers/+";

/// Not retained, never bridged, sent by a broker to its own clients only: "another broker
/// version is live, move to it" (roles/broker: `tyrell-broker-state move`, run every 10 s
/// while this broker's version is not the one `tyrell traffic brokers` made live). JSON
/// `{"live": V, "this": V}`. The clients that reach the broker through the NLB (bees,
/// routers: [`crate::mqtt::drive_v4`]) end their connection cleanly (DISCONNECT, so no last
/// will fires) and connect again through the NLB, which forwards to the live version. The
/// MQTT 5 way, a server DISCONNECT with reason 0x9C "Use another server" (MQTT 5.0
/// §4.11), is not something mosquitto can be told to send.
pub const MOVE: &str = "tyrell/move";

/// The broker (instance id) of a `tyrell/brokers/<id>` topic.
pub fn broker_id(topic: &str) -> Option<&str> {
    topic.strip_prefix(BROKERS_PREFIX).filter(|a| !a.is_empty() && !a.contains('/'))
}

/// The result topic of a target, `ping/<target>`; `target` is in its canonical spelling
/// ([`crate::targets::canonical`]) so that one target has one topic.
pub fn ping(target: &str) -> String {
    format!("{PING_PREFIX}{target}")
}

/// A bee's last-will topic, `rip/agent/<agent>`.
pub fn rip(agent: &str) -> String {
    format!("{RIP_AGENT_PREFIX}{agent}")
}

/// A bee's retained presence topic, `bees/alive/<agent>`.
pub fn alive(agent: &str) -> String {
    format!("{ALIVE_PREFIX}{agent}")
}

/// The agent of a `bees/alive/<agent>` topic.
pub fn alive_agent(topic: &str) -> Option<&str> {
    topic.strip_prefix(ALIVE_PREFIX).filter(|a| !a.is_empty() && !a.contains('/'))
}

/// The target of a `ping/<target>` topic, as written (canonicalise it with
/// [`crate::targets::canonical`] before comparing).
pub fn ping_target(topic: &str) -> Option<&str> {
    topic.strip_prefix(PING_PREFIX).filter(|t| !t.is_empty() && !t.contains('/'))
}

/// The agent of a `rip/agent/<agent>` topic.
pub fn rip_agent(topic: &str) -> Option<&str> {
    topic.strip_prefix(RIP_AGENT_PREFIX).filter(|a| !a.is_empty() && !a.contains('/'))
}

/// A shared subscription (`$share/<group>/<filter>`, MQTT 5) or the plain filter when
/// `group` is empty.
pub fn shared(group: &str, filter: &str) -> String {
    if group.is_empty() {
        filter.to_string()
    } else {
        format!("$share/{group}/{filter}")
    }
}

/// Whether a string may be an agent name: it becomes a topic level and a client id.
pub fn valid_agent(agent: &str) -> bool {
    !agent.is_empty()
        && agent.len() <= 128
        && agent.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        assert_eq!(ping_target(&ping("::1")), Some("::1"));
        assert_eq!(ping_target("ping/a/b"), None);
        assert_eq!(ping_target("ping/"), None);
        assert_eq!(rip_agent(&rip("bee-1")), Some("bee-1"));
        assert_eq!(alive_agent(&alive("bee-1")), Some("bee-1"));
        assert_eq!(broker_id("tyrell/brokers/i-0abc"), Some("i-0abc"));
        assert_eq!(broker_id("tyrell/brokers/a/b"), None);
        assert_eq!(alive_agent("bees/alive/a/b"), None);
        assert_eq!(shared("indexers", PING_ALL), "$share/indexers/ping/+");
        assert_eq!(shared("", PING_ALL), "ping/+");
        assert!(valid_agent("bee-i-0abc.eu-west-1"));
        assert!(!valid_agent("bee/x") && !valid_agent("bee+") && !valid_agent(""));
    }
}
