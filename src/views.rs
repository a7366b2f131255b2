//! The JSON shapes of hosts, leases and events that the API serves and the CLI prints. Field
//! names are a stable interface (scripts parse them): hosts `name, state, macs, ip, rack,
//! role`; leases `ip, mac, state, starts, ends, host`; events `time, kind, ip, mac, host,
//! detail`. Fields may be added, never renamed.

use std::net::Ipv4Addr;

use comfy_table::{Table, presets::NOTHING};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::model::{Event, HostRecord, Lease};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostView {
    pub name: String,
    pub state: String,
    pub macs: Vec<String>,
    pub ip: Option<Ipv4Addr>,
    pub rack: Option<String>,
    pub role: Option<String>,
    pub source: String,
    pub updated: Timestamp,
}

impl From<&HostRecord> for HostView {
    fn from(h: &HostRecord) -> Self {
        HostView {
            name: h.name.clone(),
            state: h.state.to_string(),
            macs: h.macs.iter().map(|m| m.to_string()).collect(),
            ip: h.ip,
            rack: h.rack.clone(),
            role: h.role.map(|r| r.to_string()),
            source: h.source.to_string(),
            updated: h.updated,
        }
    }
}

/// One host with its full declaration and recent history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostDetail {
    #[serde(flatten)]
    pub host: HostView,
    pub created: Timestamp,
    /// The inventory entry as declared.
    pub spec: serde_json::Value,
    /// Newest events about this host (oldest first).
    pub events: Vec<EventView>,
}

impl HostDetail {
    pub fn new(h: &HostRecord, events: &[Event]) -> Self {
        HostDetail {
            host: h.into(),
            created: h.created,
            spec: h.spec.clone(),
            events: events.iter().map(EventView::from).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseView {
    pub ip: Ipv4Addr,
    pub mac: String,
    pub state: String,
    pub starts: Timestamp,
    pub ends: Timestamp,
    pub host: Option<String>,
    pub subnet: String,
    pub client_id: Option<String>,
    pub giaddr: Option<Ipv4Addr>,
    pub circuit_id: Option<String>,
    pub remote_id: Option<String>,
}

impl From<&Lease> for LeaseView {
    fn from(l: &Lease) -> Self {
        LeaseView {
            ip: l.ip,
            mac: l.mac.to_string(),
            state: l.state.to_string(),
            starts: l.starts,
            ends: l.ends,
            host: l.host.clone(),
            subnet: l.subnet.clone(),
            client_id: l.client_id.clone(),
            giaddr: l.relay.giaddr,
            circuit_id: l.relay.circuit_id.clone(),
            remote_id: l.relay.remote_id.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    pub id: i64,
    pub time: Timestamp,
    pub kind: String,
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<String>,
    pub host: Option<String>,
    pub actor: String,
    pub detail: serde_json::Value,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        EventView {
            id: e.id,
            time: e.time,
            kind: e.kind.to_string(),
            ip: e.ip,
            mac: e.mac.map(|m| m.to_string()),
            host: e.host.clone(),
            actor: e.actor.clone(),
            detail: e.detail.clone(),
        }
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|x| x.to_string())
        .unwrap_or_else(|| "-".into())
}

/// Seconds are enough for operators; the JSON keeps full precision.
fn time(t: &Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(NOTHING).set_header(header.to_vec());
    t
}

pub fn hosts_table(hosts: &[HostView]) -> String {
    let mut t = table(&["NAME", "STATE", "ROLE", "RACK", "IP", "MACS", "SOURCE"]);
    for h in hosts {
        t.add_row(vec![
            h.name.clone(),
            h.state.clone(),
            opt(&h.role),
            opt(&h.rack),
            opt(&h.ip),
            h.macs.join(","),
            h.source.clone(),
        ]);
    }
    t.to_string()
}

pub fn host_detail_text(h: &HostDetail) -> String {
    let mut out = hosts_table(std::slice::from_ref(&h.host));
    out.push_str("\n\ndeclaration:\n");
    out.push_str(&serde_json::to_string_pretty(&h.spec).unwrap_or_default());
    out.push_str("\n\nrecent events:\n");
    out.push_str(&events_table(&h.events));
    out
}

pub fn leases_table(leases: &[LeaseView]) -> String {
    let mut t = table(&[
        "IP", "MAC", "STATE", "HOST", "SUBNET", "STARTS", "ENDS", "RELAY",
    ]);
    for l in leases {
        t.add_row(vec![
            l.ip.to_string(),
            l.mac.clone(),
            l.state.clone(),
            opt(&l.host),
            l.subnet.clone(),
            time(&l.starts),
            time(&l.ends),
            opt(&l.giaddr),
        ]);
    }
    t.to_string()
}

pub fn events_table(events: &[EventView]) -> String {
    let mut t = table(&["TIME", "KIND", "IP", "MAC", "HOST", "ACTOR", "DETAIL"]);
    for e in events {
        let detail = match &e.detail {
            serde_json::Value::Null => "-".to_string(),
            d => d.to_string(),
        };
        t.add_row(vec![
            time(&e.time),
            e.kind.clone(),
            opt(&e.ip),
            opt(&e.mac),
            opt(&e.host),
            e.actor.clone(),
            detail,
        ]);
    }
    t.to_string()
}

/// `bootgate power` results.
pub fn power_table(results: &[crate::power::ActionResult]) -> String {
    let mut t = table(&[
        "HOST", "ACTION", "RESULT", "STATE", "APPLIED", "BMC", "TIME",
    ]);
    for r in results {
        t.add_row(vec![
            r.host.clone(),
            r.action.to_string(),
            if r.ok {
                "ok".to_string()
            } else {
                format!("FAILED: {}", r.error.as_deref().unwrap_or("?"))
            },
            r.state.map_or("-".into(), |s| s.to_string()),
            r.applied.clone().unwrap_or_else(|| "-".into()),
            r.bmc.clone().unwrap_or_else(|| "-".into()),
            format!("{:.1}s", r.elapsed_ms as f64 / 1000.0),
        ]);
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    format!("{t}\n{} host(s), {failed} failed", results.len())
}

/// `bootgate reset`: the timeline, then the verdict.
pub fn reset_table(r: &crate::power::ResetReport) -> String {
    let mut t = table(&["T+", "TIME", "WHAT"]);
    for m in &r.timeline {
        t.add_row(vec![
            format!("{:.1}s", m.t),
            m.at.to_string(),
            m.what.clone(),
        ]);
    }
    let verdict = if r.came_back {
        format!("{} came back", r.host)
    } else {
        format!("{} did NOT come back: {}", r.host, r.outcome)
    };
    format!("{t}\n{verdict}")
}
