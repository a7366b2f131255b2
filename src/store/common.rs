//! Backend-independent pieces of the store implementations (SQLite and PostgreSQL share
//! them so both write the same events, timestamps and errors).

use jiff::Timestamp;
use serde_json::json;

use super::{EventKind, HostRecord, NewEvent, StoreError};
use crate::types::{HostState, MacAddr};

pub(crate) fn corrupt(column: &'static str, value: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        column,
        value: value.into(),
    }
}

pub(crate) fn millis(t: Timestamp) -> i64 {
    t.as_millisecond()
}

/// Now, at the precision the store keeps (milliseconds).
pub(crate) fn now() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_millisecond(now.as_millisecond()).unwrap_or(now)
}

/// The MACs of a record in order, each once.
pub(crate) fn unique_macs(macs: &[MacAddr]) -> Vec<MacAddr> {
    let mut out: Vec<MacAddr> = Vec::with_capacity(macs.len());
    for mac in macs {
        if !out.contains(mac) {
            out.push(*mac);
        }
    }
    out
}

/// An event about `host`, naming its first MAC and its address when it has them.
pub(crate) fn host_event(kind: EventKind, host: &HostRecord, actor: &str) -> NewEvent {
    let mut event = NewEvent::new(kind, actor).host(host.name.clone());
    event.mac = host.macs.first().copied();
    event.ip = host.ip;
    event
}

/// `{"from": .., "to": ..}` plus the caller's detail: an object's keys are merged in (the
/// transition itself wins a clash), any other non-null value is kept under `"detail"`.
pub(crate) fn state_change_detail(
    from: HostState,
    to: HostState,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut out = match extra {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => serde_json::Map::new(),
        other => {
            let mut map = serde_json::Map::new();
            map.insert("detail".into(), other);
            map
        }
    };
    out.insert("from".into(), json!(from));
    out.insert("to".into(), json!(to));
    serde_json::Value::Object(out)
}
