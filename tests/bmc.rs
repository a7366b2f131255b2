//! BMC power control against real peers: sushy-emulator (Redfish, fake driver), pyghmi's
//! BMC and OpenIPMI's ipmi_sim (IPMI lanplus through ipmitool), an HTTPS server with a
//! locally made CA (TLS policies), a TCP peer that never answers (deadlines), and vendor
//! fixtures (captured-style JSON in tests/fixtures/redfish/<vendor>/, DMTF mockup layout)
//! served from 127.0.0.1 by a small in-test axum server that records every request.
//!
//! All traffic stays on 127.0.0.1; every process started here is killed by PID on drop.

#[path = "support/sushy.rs"]
mod sushy;

#[path = "support/libvirt.rs"]
mod libvirt;
mod support;

use support::Netns;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bootgate::bmc::{
    BmcError, BmcSettings, BmcTarget, Bmcs, BootSource, Credential, OverrideMode, PowerControl,
    PowerState, ResetType, TlsPolicy, wait_for_power,
};
use bootgate::inventory::{BmcProtocol, BmcVendor};
use bootgate::secrets::{Secret, Secrets, SecretsSource, read_private_file};
use reqwest::Url;
use serde_json::{Value, json};

const USER: &str = "admin";
const PASSWORD: &str = "s3cret-Passw0rd";

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn settings(timeout_s: u64) -> BmcSettings {
    BmcSettings {
        timeout: Duration::from_secs(timeout_s),
        retries: 2,
        concurrency: 8,
        task_timeout: Duration::from_secs(10),
    }
}

/// A Redfish target at `addr`.
fn target(
    scheme: &str,
    addr: SocketAddr,
    vendor: BmcVendor,
    system: Option<&str>,
    password: &str,
    tls: TlsPolicy,
) -> BmcTarget {
    BmcTarget {
        host: "node7".into(),
        endpoint: Url::parse(&format!("{scheme}://{addr}/")).unwrap(),
        address: Ipv4Addr::LOCALHOST,
        port: addr.port(),
        system: system.map(str::to_string),
        vendor,
        protocol: BmcProtocol::Redfish,
        credential: Credential {
            name: "test".into(),
            username: USER.into(),
            password: Secret::new(password),
        },
        tls,
    }
}

fn assert_no_password(text: &str, password: &str) {
    assert!(!text.contains(password), "the password leaked into: {text}");
}

// =======================================================================================
// Vendor fixtures: a fake BMC serving tests/fixtures/redfish/<vendor>/ (DMTF mockup
// layout: <path>/index.json) with in-memory power/boot state and scripted vendor behaviour.
// =======================================================================================

mod fake {
    use super::*;

    /// Vendor behaviour the fake applies on top of the fixture files.
    #[derive(Debug, Clone, Default)]
    pub struct Behavior {
        /// PATCH without If-Match → 428; with a stale ETag → 412 (Lenovo XCC, OpenBMC, AMI).
        pub require_if_match: bool,
        /// `BootSourceOverrideEnabled: Once` → 400 PropertyValueNotInList.
        pub reject_once: bool,
        /// `Disabled` without a target → 400 (HPE iLO).
        pub clear_needs_target: bool,
        /// A boot PATCH without `BootSourceOverrideMode` → 400 (Supermicro).
        pub needs_mode: bool,
        /// The first N GETs of a system answer 503 + Retry-After: 1 (AMI while the host is off).
        pub busy_503: u32,
        /// Reset answers 202 + a task monitor, polled this many times before it completes.
        pub reset_task_polls: Option<u32>,
        /// The task ends in Exception (tests/fixtures/redfish/generic/errors/task-exception.json).
        pub task_fails: bool,
        /// The task never ends.
        pub task_never_ends: bool,
        /// Reset answers this status with this error fixture (errors/<name>.json).
        pub reset_error: Option<(u16, &'static str)>,
        /// HPE iLO answers a reset with 200 and a Success message body.
        pub reset_200_body: Option<&'static str>,
        /// POST to Sessions answers this status instead of creating a session.
        pub session_status: Option<u16>,
        /// Every answer takes this long (to see how many requests overlap).
        pub delay: Option<Duration>,
        /// A reset is answered only after this long (past the client's deadline).
        pub reset_hang: Option<Duration>,
        /// The first N resets answer 503 (the BMC did not act).
        pub reset_503: u32,
    }

    #[derive(Debug, Clone)]
    pub struct Req {
        pub method: String,
        pub path: String,
        pub headers: HeaderMap,
        pub body: Value,
    }

    struct Sys {
        power: String,
        boot: serde_json::Map<String, Value>,
        etag: u32,
    }

    struct Inner {
        dir: PathBuf,
        b: Behavior,
        reqs: Vec<Req>,
        systems: HashMap<String, Sys>,
        tokens: HashSet<String>,
        next: u32,
        busy_left: u32,
        polls_left: u32,
        resets_503_left: u32,
    }

    #[derive(Clone)]
    pub struct Fake(Arc<Mutex<Inner>>, Arc<[std::sync::atomic::AtomicUsize; 2]>);

    pub const MONITOR: &str = "/redfish/v1/TaskService/TaskMonitors/1";

    impl Fake {
        pub async fn start(vendor: &str, b: Behavior) -> (Fake, SocketAddr) {
            let fake = Fake(
                Arc::new(Mutex::new(Inner {
                    dir: repo("tests/fixtures/redfish").join(vendor),
                    busy_left: b.busy_503,
                    polls_left: b.reset_task_polls.unwrap_or(0),
                    resets_503_left: b.reset_503,
                    b,
                    reqs: Vec::new(),
                    systems: HashMap::new(),
                    tokens: HashSet::new(),
                    next: 1,
                })),
                Arc::new(Default::default()),
            );
            let app = axum::Router::new()
                .fallback(handle)
                .with_state(fake.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            (fake, addr)
        }

        pub fn requests(&self) -> Vec<Req> {
            self.0.lock().unwrap().reqs.clone()
        }

        /// The most requests that were in progress at once.
        pub fn max_in_flight(&self) -> usize {
            self.1[1].load(std::sync::atomic::Ordering::SeqCst)
        }

        pub fn open_sessions(&self) -> usize {
            self.0.lock().unwrap().tokens.len()
        }
    }

    fn file(dir: &Path, path: &str) -> Option<Value> {
        let rel = path.trim_matches('/');
        let text = std::fs::read_to_string(dir.join(rel).join("index.json")).ok()?;
        Some(serde_json::from_str(&text).expect("fixture is JSON"))
    }

    fn error_file(dir: &Path, name: &str) -> Value {
        let text = std::fs::read_to_string(dir.join("errors").join(format!("{name}.json")))
            .unwrap_or_else(|e| panic!("fixture errors/{name}.json: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    fn reply(status: u16, headers: &[(&str, String)], body: Option<Value>) -> Response {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let status = StatusCode::from_u16(status).unwrap();
        match body {
            Some(b) => {
                h.insert("content-type", "application/json".parse().unwrap());
                (status, h, b.to_string()).into_response()
            }
            None => (status, h).into_response(),
        }
    }

    fn authorized(inner: &Inner, headers: &HeaderMap) -> bool {
        use base64_lite::encode;
        if let Some(t) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
            return inner.tokens.contains(t);
        }
        let want = format!("Basic {}", encode(&format!("{USER}:{PASSWORD}")));
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(want.as_str())
    }

    async fn handle(
        axum::extract::State(fake): axum::extract::State<Fake>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        use std::sync::atomic::Ordering::SeqCst;
        let (delay, hang) = {
            let inner = fake.0.lock().unwrap();
            (inner.b.delay, inner.b.reset_hang)
        };
        if let Some(h) = hang
            && uri.path().ends_with("/Actions/ComputerSystem.Reset")
        {
            fake.0.lock().unwrap().reqs.push(Req {
                method: method.to_string(),
                path: uri.path().to_string(),
                headers: headers.clone(),
                body: Value::Null,
            });
            tokio::time::sleep(h).await;
            return reply(204, &[], None);
        }
        if let Some(d) = delay {
            let now = fake.1[0].fetch_add(1, SeqCst) + 1;
            fake.1[1].fetch_max(now, SeqCst);
            tokio::time::sleep(d).await;
            fake.1[0].fetch_sub(1, SeqCst);
        }
        let mut inner = fake.0.lock().unwrap();
        let path = match uri.path().trim_end_matches('/') {
            "" => "/".to_string(),
            p => p.to_string(),
        };
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        inner.reqs.push(Req {
            method: method.to_string(),
            path: path.clone(),
            headers: headers.clone(),
            body: body.clone(),
        });
        let dir = inner.dir.clone();
        let root = file(&dir, "redfish/v1").unwrap();
        let sessions = "/redfish/v1/SessionService/Sessions";

        if method == Method::GET && path == "/redfish/v1" {
            return reply(200, &[], Some(root));
        }
        if method == Method::POST && path == sessions {
            if root.get("SessionService").is_none() {
                return reply(404, &[], None);
            }
            if let Some(s) = inner.b.session_status {
                return reply(s, &[], None);
            }
            if body["UserName"] != USER || body["Password"] != PASSWORD {
                return reply(
                    401,
                    &[],
                    Some(error_file(
                        &repo("tests/fixtures/redfish/dell"),
                        "unauthorized",
                    )),
                );
            }
            let n = inner.next;
            inner.next += 1;
            let token = format!("tok{n}");
            inner.tokens.insert(token.clone());
            let loc = format!("{sessions}/{n}");
            return reply(
                201,
                &[("x-auth-token", token), ("location", loc.clone())],
                Some(json!({"@odata.id": loc, "Id": n.to_string(), "UserName": USER})),
            );
        }
        if !authorized(&inner, &headers) {
            return reply(401, &[], None);
        }
        if method == Method::DELETE && path.starts_with(sessions) {
            let n = path.rsplit('/').next().unwrap();
            let token = format!("tok{n}");
            return if inner.tokens.remove(&token) {
                reply(204, &[], None)
            } else {
                reply(404, &[], None)
            };
        }
        if method == Method::GET && path == MONITOR {
            if inner.b.task_never_ends || inner.polls_left > 0 {
                inner.polls_left = inner.polls_left.saturating_sub(1);
                return reply(
                    202,
                    &[("retry-after", "0".into()), ("location", MONITOR.into())],
                    Some(json!({"TaskState": "Running"})),
                );
            }
            if inner.b.task_fails {
                return reply(
                    200,
                    &[],
                    Some(error_file(
                        &repo("tests/fixtures/redfish/generic"),
                        "task-exception",
                    )),
                );
            }
            return reply(
                200,
                &[],
                Some(json!({"TaskState": "Completed", "TaskStatus": "OK"})),
            );
        }
        if method == Method::POST && path.ends_with("/Actions/ComputerSystem.Reset") {
            if inner.resets_503_left > 0 {
                inner.resets_503_left -= 1;
                return reply(503, &[("retry-after", "0".into())], None);
            }
            if let Some((status, name)) = inner.b.reset_error {
                return reply(status, &[], Some(error_file(&dir, name)));
            }
            let sys_path = path
                .trim_end_matches("/Actions/ComputerSystem.Reset")
                .to_string();
            let kind = body["ResetType"].as_str().unwrap_or("").to_string();
            let sys = load_sys(&mut inner, &dir, &sys_path);
            sys.power = match kind.as_str() {
                "ForceOff" | "GracefulShutdown" => "Off".into(),
                _ => "On".into(),
            };
            if inner.b.reset_task_polls.is_some() {
                return reply(202, &[("location", MONITOR.into())], None);
            }
            if let Some(name) = inner.b.reset_200_body {
                return reply(200, &[], Some(error_file(&dir, name)));
            }
            return reply(204, &[], None);
        }
        if method == Method::PATCH {
            if file(&dir, &path).is_none() {
                return reply(404, &[], None);
            }
            let b = inner.b.clone();
            let sys = load_sys(&mut inner, &dir, &path);
            let want_tag = format!("\"{}\"", sys.etag);
            match headers.get("if-match").and_then(|v| v.to_str().ok()) {
                None if b.require_if_match => {
                    return reply(428, &[], Some(error_file(&dir, "precondition-required")));
                }
                Some(tag) if b.require_if_match && tag != want_tag && tag != "*" => {
                    return reply(412, &[], None);
                }
                _ => {}
            }
            let patch = body["Boot"].as_object().cloned().unwrap_or_default();
            if b.reject_once && patch.get("BootSourceOverrideEnabled") == Some(&json!("Once")) {
                return reply(400, &[], Some(error_file(&dir, "once-not-allowed")));
            }
            if b.clear_needs_target
                && patch.get("BootSourceOverrideEnabled") == Some(&json!("Disabled"))
                && !patch.contains_key("BootSourceOverrideTarget")
            {
                return reply(400, &[], Some(error_file(&dir, "clear-needs-target")));
            }
            if b.needs_mode && !patch.contains_key("BootSourceOverrideMode") {
                return reply(400, &[], Some(error_file(&dir, "mode-required")));
            }
            for (k, v) in patch {
                sys.boot.insert(k, v);
            }
            sys.etag += 1;
            return reply(204, &[], None);
        }
        if method == Method::GET {
            let Some(mut v) = file(&dir, &path) else {
                return reply(404, &[], None);
            };
            let is_system = v["@odata.type"]
                .as_str()
                .is_some_and(|t| t.starts_with("#ComputerSystem.v"));
            if !is_system {
                return reply(200, &[], Some(v));
            }
            if inner.busy_left > 0 {
                inner.busy_left -= 1;
                return reply(
                    503,
                    &[("retry-after", "1".into())],
                    Some(error_file(&dir, "host-off")),
                );
            }
            let sys = load_sys(&mut inner, &dir, &path);
            v["PowerState"] = json!(sys.power);
            for (k, val) in &sys.boot {
                v["Boot"][k] = val.clone();
            }
            let tag = format!("\"{}\"", sys.etag);
            if v.get("@odata.etag").is_some() {
                v["@odata.etag"] = json!(tag);
            }
            return reply(200, &[("etag", tag)], Some(v));
        }
        reply(405, &[], None)
    }

    fn load_sys<'a>(inner: &'a mut Inner, dir: &Path, path: &str) -> &'a mut Sys {
        inner.systems.entry(path.to_string()).or_insert_with(|| {
            let v = file(dir, path).unwrap_or_else(|| panic!("no fixture for {path}"));
            Sys {
                power: v["PowerState"].as_str().unwrap_or("Off").to_string(),
                boot: v["Boot"].as_object().cloned().unwrap_or_default(),
                etag: 1,
            }
        })
    }

    /// Just enough base64 for a Basic header (no extra dependency).
    mod base64_lite {
        pub fn encode(s: &str) -> String {
            const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let b = s.as_bytes();
            let mut out = String::new();
            for chunk in b.chunks(3) {
                let n = (u32::from(chunk[0]) << 16)
                    | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                    | u32::from(*chunk.get(2).unwrap_or(&0));
                for i in 0..4 {
                    if i <= chunk.len() {
                        out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                    } else {
                        out.push('=');
                    }
                }
            }
            out
        }
    }
}

use fake::{Behavior, Fake};

/// What one vendor fixture should yield.
struct VendorCase {
    vendor: &'static str,
    kind: BmcVendor,
    system: Option<&'static str>,
    behavior: Behavior,
    power: PowerState,
    reset_types: &'static [ResetType],
    /// The boot override PATCH body bootgate must send.
    boot_patch: Value,
    /// The clear PATCH body (the last one sent).
    clear_patch: Value,
    if_match: bool,
    sessions: bool,
}

async fn check_vendor(c: VendorCase) {
    let (fake, addr) = Fake::start(c.vendor, c.behavior.clone()).await;
    let t = target("http", addr, c.kind, c.system, PASSWORD, TlsPolicy::Plain);
    let bmcs = Bmcs::new(settings(5));
    let v = c.vendor;

    assert_eq!(bmcs.power_state(&t).await.unwrap(), c.power, "{v}: power");
    assert_eq!(
        bmcs.reset_types(&t).await.unwrap(),
        c.reset_types,
        "{v}: reset types"
    );
    bmcs.reset(&t, ResetType::ForceRestart).await.unwrap();
    let mode = bmcs
        .set_boot_override(&t, BootSource::Pxe)
        .await
        .unwrap_or_else(|e| panic!("{v}: {e}"));
    assert_eq!(mode, OverrideMode::Once, "{v}");
    bmcs.clear_boot_override(&t)
        .await
        .unwrap_or_else(|e| panic!("{v}: {e}"));

    let reqs = fake.requests();
    let patches: Vec<&fake::Req> = reqs.iter().filter(|r| r.method == "PATCH").collect();
    let accepted: Vec<&&fake::Req> = patches
        .iter()
        .filter(|r| !c.if_match || r.headers.contains_key("if-match"))
        .collect();
    assert_eq!(
        accepted.first().map(|r| &r.body),
        Some(&c.boot_patch),
        "{v}: boot PATCH"
    );
    assert_eq!(
        patches.last().map(|r| &r.body),
        Some(&c.clear_patch),
        "{v}: clear PATCH"
    );
    if c.if_match {
        assert!(
            patches.iter().all(|r| r.headers.contains_key("if-match")),
            "{v}: every PATCH carries If-Match (known from the GET's ETag)"
        );
    }
    let reset = reqs
        .iter()
        .find(|r| r.path.ends_with("ComputerSystem.Reset"))
        .expect("a reset POST");
    assert_eq!(reset.body, json!({"ResetType": "ForceRestart"}), "{v}");
    if c.sessions {
        let logins = reqs
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/Sessions"))
            .count();
        let logouts = reqs.iter().filter(|r| r.method == "DELETE").count();
        assert_eq!(logins, 5, "{v}: one session per operation");
        assert_eq!(logouts, 5, "{v}: every session deleted");
        assert_eq!(fake.open_sessions(), 0, "{v}");
        assert!(
            reqs.iter()
                .all(|r| !r.headers.contains_key("authorization")),
            "{v}: sessions, not basic auth"
        );
    } else {
        assert!(
            reqs.iter()
                .filter(|r| r.path != "/redfish/v1")
                .all(|r| r.headers.contains_key("authorization")),
            "{v}: basic auth on every request"
        );
    }
    for r in &reqs {
        if let Some(t) = r.headers.get("x-auth-token") {
            assert!(t.to_str().unwrap().starts_with("tok"));
        }
    }
}

#[tokio::test]
async fn vendor_dell_idrac() {
    use ResetType::*;
    check_vendor(VendorCase {
        vendor: "dell",
        kind: BmcVendor::Dell,
        system: None,
        behavior: Behavior::default(),
        power: PowerState::On,
        reset_types: &[
            On,
            ForceOff,
            ForceRestart,
            GracefulRestart,
            GracefulShutdown,
            PushPowerButton,
            Nmi,
            PowerCycle,
        ],
        boot_patch: json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}),
        clear_patch: json!({"Boot": {"BootSourceOverrideEnabled": "Disabled"}}),
        if_match: false,
        sessions: true,
    })
    .await;
}

#[tokio::test]
async fn vendor_hpe_ilo_keeps_target_when_clearing_and_answers_reset_with_200() {
    use ResetType::*;
    check_vendor(VendorCase {
        vendor: "hpe",
        kind: BmcVendor::Hpe,
        system: None,
        behavior: Behavior {
            clear_needs_target: true,
            reset_200_body: Some("reset-success"),
            ..Default::default()
        },
        power: PowerState::Off,
        reset_types: &[
            On,
            ForceOff,
            GracefulShutdown,
            ForceRestart,
            Nmi,
            PushPowerButton,
            GracefulRestart,
        ],
        boot_patch: json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}),
        clear_patch: json!({"Boot": {"BootSourceOverrideEnabled": "Disabled", "BootSourceOverrideTarget": "Pxe"}}),
        if_match: false,
        sessions: true,
    })
    .await;
}

#[tokio::test]
async fn vendor_lenovo_xcc_needs_if_match() {
    use ResetType::*;
    check_vendor(VendorCase {
        vendor: "lenovo",
        kind: BmcVendor::Lenovo,
        system: None,
        behavior: Behavior {
            require_if_match: true,
            ..Default::default()
        },
        power: PowerState::On,
        reset_types: &[
            On,
            Nmi,
            GracefulShutdown,
            GracefulRestart,
            ForceOff,
            ForceRestart,
        ],
        boot_patch: json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}),
        clear_patch: json!({"Boot": {"BootSourceOverrideEnabled": "Disabled"}}),
        if_match: true,
        sessions: true,
    })
    .await;
}

#[tokio::test]
async fn vendor_supermicro_action_info_and_uefi_mode() {
    use ResetType::*;
    check_vendor(VendorCase {
        vendor: "supermicro",
        kind: BmcVendor::Supermicro,
        system: None,
        behavior: Behavior {
            needs_mode: true,
            ..Default::default()
        },
        power: PowerState::Off,
        reset_types: &[
            On,
            ForceOff,
            GracefulShutdown,
            GracefulRestart,
            ForceRestart,
            Nmi,
        ],
        boot_patch: json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once", "BootSourceOverrideMode": "UEFI"}}),
        clear_patch: json!({"Boot": {"BootSourceOverrideEnabled": "Disabled", "BootSourceOverrideMode": "UEFI"}}),
        if_match: false,
        sessions: true,
    })
    .await;
}

#[tokio::test]
async fn vendor_nvidia_dgx_openbmc_system_by_name_and_if_match() {
    use ResetType::*;
    check_vendor(VendorCase {
        vendor: "nvidia",
        kind: BmcVendor::Nvidia,
        system: Some("DGX"),
        behavior: Behavior {
            require_if_match: true,
            ..Default::default()
        },
        power: PowerState::On,
        reset_types: &[
            On,
            ForceOff,
            ForceRestart,
            GracefulRestart,
            GracefulShutdown,
            PowerCycle,
            Nmi,
        ],
        boot_patch: json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}),
        clear_patch: json!({"Boot": {"BootSourceOverrideEnabled": "Disabled"}}),
        if_match: true,
        sessions: true,
    })
    .await;
}

#[tokio::test]
async fn vendor_ami_megarac_503_while_host_off() {
    use ResetType::*;
    let start = Instant::now();
    check_vendor(VendorCase {
        vendor: "ami",
        kind: BmcVendor::Ami,
        system: None,
        behavior: Behavior {
            require_if_match: true,
            needs_mode: true,
            busy_503: 1,
            ..Default::default()
        },
        power: PowerState::Off,
        reset_types: &[
            On,
            ForceOff,
            GracefulShutdown,
            GracefulRestart,
            ForceRestart,
            Nmi,
        ],
        boot_patch: json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once", "BootSourceOverrideMode": "UEFI"}}),
        clear_patch: json!({"Boot": {"BootSourceOverrideEnabled": "Disabled", "BootSourceOverrideMode": "UEFI"}}),
        if_match: true,
        sessions: true,
    })
    .await;
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "the 503's Retry-After: 1 was honoured"
    );
}

#[tokio::test]
async fn vendor_generic_without_sessions_uses_basic_auth() {
    use ResetType::*;
    check_vendor(VendorCase {
        vendor: "generic",
        kind: BmcVendor::Generic,
        system: None,
        behavior: Behavior::default(),
        power: PowerState::On,
        reset_types: &[
            On,
            ForceOff,
            GracefulShutdown,
            GracefulRestart,
            ForceRestart,
            Nmi,
            PushPowerButton,
            PowerCycle,
        ],
        boot_patch: json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}),
        clear_patch: json!({"Boot": {"BootSourceOverrideEnabled": "Disabled"}}),
        if_match: false,
        sessions: false,
    })
    .await;
}

#[tokio::test]
async fn several_systems_need_a_name() {
    let (_fake, addr) = Fake::start("nvidia", Behavior::default()).await;
    let bmcs = Bmcs::new(settings(5));
    let t = target(
        "http",
        addr,
        BmcVendor::Nvidia,
        None,
        PASSWORD,
        TlsPolicy::Plain,
    );
    let e = bmcs.power_state(&t).await.unwrap_err();
    assert!(matches!(e, BmcError::AmbiguousSystem { .. }), "{e}");
    let shown = e.to_string();
    for w in ["node7", "DGX", "HGX_Baseboard_0", "bmc.system"] {
        assert!(shown.contains(w), "{w} in {shown}");
    }
    let t = target(
        "http",
        addr,
        BmcVendor::Nvidia,
        Some("HGX"),
        PASSWORD,
        TlsPolicy::Plain,
    );
    let e = bmcs.power_state(&t).await.unwrap_err();
    assert!(matches!(e, BmcError::NoSuchSystem { .. }), "{e}");
    assert!(e.to_string().contains("\"HGX\""), "{e}");
    assert!(e.to_string().contains("HGX_Baseboard_0"), "{e}");
    let t = target(
        "http",
        addr,
        BmcVendor::Nvidia,
        Some("HGX_Baseboard_0"),
        PASSWORD,
        TlsPolicy::Plain,
    );
    assert_eq!(
        bmcs.reset_types(&t).await.unwrap(),
        [ResetType::ForceRestart]
    );
}

#[tokio::test]
async fn reset_follows_the_task_monitor() {
    let bmcs = Bmcs::new(settings(5));
    // Completes after three polls.
    let (fake, addr) = Fake::start(
        "generic",
        Behavior {
            reset_task_polls: Some(3),
            ..Default::default()
        },
    )
    .await;
    let t = target(
        "http",
        addr,
        BmcVendor::Generic,
        None,
        PASSWORD,
        TlsPolicy::Plain,
    );
    bmcs.reset(&t, ResetType::On).await.unwrap();
    let polls = fake
        .requests()
        .iter()
        .filter(|r| r.path == fake::MONITOR)
        .count();
    assert_eq!(polls, 4, "three 202s, then 200 Completed");

    // Ends in Exception: the task's messages are in the error.
    let (_fake, addr) = Fake::start(
        "generic",
        Behavior {
            reset_task_polls: Some(1),
            task_fails: true,
            ..Default::default()
        },
    )
    .await;
    let t = target(
        "http",
        addr,
        BmcVendor::Generic,
        None,
        PASSWORD,
        TlsPolicy::Plain,
    );
    let e = bmcs.reset(&t, ResetType::On).await.unwrap_err();
    assert!(matches!(e, BmcError::TaskFailed { .. }), "{e}");
    assert!(e.to_string().contains("internal service error"), "{e}");
    assert!(e.to_string().contains("Exception"), "{e}");

    // Never ends: bounded by task_timeout.
    let (_fake, addr) = Fake::start(
        "generic",
        Behavior {
            reset_task_polls: Some(0),
            task_never_ends: true,
            ..Default::default()
        },
    )
    .await;
    let t = target(
        "http",
        addr,
        BmcVendor::Generic,
        None,
        PASSWORD,
        TlsPolicy::Plain,
    );
    let short = Bmcs::new(BmcSettings {
        task_timeout: Duration::from_secs(2),
        ..settings(5)
    });
    let start = Instant::now();
    let e = short.reset(&t, ResetType::On).await.unwrap_err();
    assert!(matches!(e, BmcError::TaskTimeout { .. }), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn once_refused_falls_back_to_continuous() {
    let (fake, addr) = Fake::start(
        "generic",
        Behavior {
            reject_once: true,
            ..Default::default()
        },
    )
    .await;
    let t = target(
        "http",
        addr,
        BmcVendor::Generic,
        None,
        PASSWORD,
        TlsPolicy::Plain,
    );
    let bmcs = Bmcs::new(settings(5));
    let mode = bmcs
        .set_boot_override(&t, BootSource::UefiHttp)
        .await
        .unwrap();
    assert_eq!(mode, OverrideMode::Continuous);
    let bodies: Vec<Value> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.body)
        .collect();
    assert_eq!(
        bodies,
        [
            json!({"Boot": {"BootSourceOverrideTarget": "UefiHttp", "BootSourceOverrideEnabled": "Once"}}),
            json!({"Boot": {"BootSourceOverrideTarget": "UefiHttp", "BootSourceOverrideEnabled": "Continuous"}}),
        ]
    );
}

#[tokio::test]
async fn http_errors_carry_status_url_and_extended_info() {
    let (_fake, addr) = Fake::start(
        "dell",
        Behavior {
            reset_error: Some((409, "reset-in-progress")),
            ..Default::default()
        },
    )
    .await;
    let t = target(
        "http",
        addr,
        BmcVendor::Dell,
        None,
        PASSWORD,
        TlsPolicy::Plain,
    );
    let e = Bmcs::new(settings(5))
        .reset(&t, ResetType::On)
        .await
        .unwrap_err();
    match &e {
        BmcError::Http {
            status,
            messages,
            url,
            ..
        } => {
            assert_eq!(*status, 409);
            assert!(url.ends_with("/Actions/ComputerSystem.Reset"), "{url}");
            assert!(messages[0].contains("already in the requested power state"));
            assert!(messages[0].contains("IDRAC.2.9.PSU501"));
        }
        other => panic!("expected Http, got {other:?}"),
    }
    let shown = e.to_string();
    assert!(shown.starts_with("node7: "), "{shown}");
    assert!(shown.contains("HTTP 409"), "{shown}");
    assert_eq!(e.kind(), "http");
}

#[tokio::test]
async fn unsupported_reset_names_what_the_bmc_offers() {
    let (fake, addr) = Fake::start("hpe", Behavior::default()).await;
    let t = target(
        "http",
        addr,
        BmcVendor::Hpe,
        None,
        PASSWORD,
        TlsPolicy::Plain,
    );
    let e = Bmcs::new(settings(5))
        .reset(&t, ResetType::PowerCycle)
        .await
        .unwrap_err();
    assert!(matches!(e, BmcError::UnsupportedReset { .. }), "{e}");
    assert!(e.to_string().contains("PowerCycle"), "{e}");
    assert!(e.to_string().contains("GracefulRestart"), "{e}");
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.path.ends_with("ComputerSystem.Reset")),
        "nothing was sent"
    );
}

#[tokio::test]
async fn session_refused_falls_back_to_basic_auth() {
    let (fake, addr) = Fake::start(
        "dell",
        Behavior {
            session_status: Some(405),
            ..Default::default()
        },
    )
    .await;
    let t = target(
        "http",
        addr,
        BmcVendor::Dell,
        None,
        PASSWORD,
        TlsPolicy::Plain,
    );
    assert_eq!(
        Bmcs::new(settings(5)).power_state(&t).await.unwrap(),
        PowerState::On
    );
    let reqs = fake.requests();
    let sys = reqs
        .iter()
        .find(|r| r.path.ends_with("System.Embedded.1"))
        .unwrap();
    assert!(sys.headers.contains_key("authorization"));
    assert!(!sys.headers.contains_key("x-auth-token"));
}

#[tokio::test]
async fn wrong_password_in_a_session_login_is_401_naming_bmc_and_user() {
    let (_fake, addr) = Fake::start("dell", Behavior::default()).await;
    let t = target(
        "http",
        addr,
        BmcVendor::Dell,
        None,
        "wrong-Passw0rd-xyz",
        TlsPolicy::Plain,
    );
    let e = Bmcs::new(settings(5)).power_state(&t).await.unwrap_err();
    assert!(matches!(e, BmcError::Unauthorized { .. }), "{e}");
    let shown = e.to_string();
    assert!(shown.contains(&addr.to_string()), "{shown}");
    assert!(shown.contains("\"admin\""), "{shown}");
    assert_no_password(&shown, "wrong-Passw0rd-xyz");
    assert_no_password(&format!("{e:?}"), "wrong-Passw0rd-xyz");
}

#[tokio::test]
async fn concurrency_is_bounded() {
    // Twenty operations through a gateway bound of 2 against a fake that records overlap.
    let (fake, addr) = Fake::start(
        "generic",
        Behavior {
            delay: Some(Duration::from_millis(20)),
            ..Default::default()
        },
    )
    .await;
    let bmcs = Arc::new(Bmcs::new(BmcSettings {
        concurrency: 2,
        ..settings(5)
    }));
    let t = target(
        "http",
        addr,
        BmcVendor::Generic,
        None,
        PASSWORD,
        TlsPolicy::Plain,
    );
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (b, t) = (Arc::clone(&bmcs), t.clone());
        tasks.push(tokio::spawn(async move { b.power_state(&t).await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), PowerState::On);
    }
    assert_eq!(
        fake.requests().len(),
        20 * 3,
        "root, collection, system each"
    );
    assert_eq!(fake.max_in_flight(), 2);
}

#[tokio::test]
async fn a_reset_is_resent_after_a_503_but_never_after_a_timeout() {
    let count = |fake: &Fake| {
        fake.requests()
            .iter()
            .filter(|r| r.path.ends_with("ComputerSystem.Reset"))
            .count()
    };
    // 503: the BMC says it did not act, so the same reset goes again.
    let (fake, addr) = Fake::start(
        "generic",
        Behavior {
            reset_503: 1,
            ..Default::default()
        },
    )
    .await;
    let t = target(
        "http",
        addr,
        BmcVendor::Generic,
        None,
        PASSWORD,
        TlsPolicy::Plain,
    );
    Bmcs::new(settings(5))
        .reset(&t, ResetType::ForceRestart)
        .await
        .unwrap();
    assert_eq!(count(&fake), 2);
    // No answer within the deadline: the reset may have landed; it is not sent twice.
    let (fake, addr) = Fake::start(
        "generic",
        Behavior {
            reset_hang: Some(Duration::from_secs(3)),
            ..Default::default()
        },
    )
    .await;
    let t = target(
        "http",
        addr,
        BmcVendor::Generic,
        None,
        PASSWORD,
        TlsPolicy::Plain,
    );
    let e = Bmcs::new(settings(1))
        .reset(&t, ResetType::ForceRestart)
        .await
        .unwrap_err();
    assert!(matches!(e, BmcError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("ComputerSystem.Reset"), "{e}");
    assert_eq!(count(&fake), 1);
}

// =======================================================================================
// Deadlines: a BMC that accepts TCP and never answers.
// =======================================================================================

#[tokio::test]
async fn silent_bmc_times_out_within_the_deadline() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts and holds every connection without a byte in reply.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let deadline = Duration::from_secs(1);
    let bmcs = Bmcs::new(BmcSettings {
        timeout: deadline,
        ..settings(1)
    });
    let t = target(
        "http",
        addr,
        BmcVendor::Dell,
        None,
        PASSWORD,
        TlsPolicy::Plain,
    );
    let start = Instant::now();
    let e = bmcs.power_state(&t).await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, BmcError::Timeout { .. }), "{e}");
    assert!(took < deadline + Duration::from_secs(2), "took {took:?}");
    let shown = e.to_string();
    assert!(shown.contains(&addr.to_string()), "{shown}");
    assert!(shown.contains("within 1 s"), "{shown}");
    // A reset is never re-sent after a timeout either.
    let start = Instant::now();
    let e = bmcs.reset(&t, ResetType::On).await.unwrap_err();
    assert!(matches!(e, BmcError::Timeout { .. }), "{e}");
    assert!(start.elapsed() < deadline + Duration::from_secs(2));
}

// =======================================================================================
// TLS: an HTTPS BMC whose certificate a local CA signed (openssl CLI).
// =======================================================================================

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut a = vec![
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=bootgate test BMC CA",
        ];
        a.extend(ec);
        a.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        run(&a);
        let mut a = vec!["req", "-subj", "/CN=127.0.0.1"];
        a.extend(ec);
        a.extend(["-keyout", "bmc.key", "-out", "bmc.csr"]);
        run(&a);
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "bmc.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "bmc.pem",
        ]);
        Pki { dir }
    }
    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }
}

/// A blocking HTTPS server (rustls) serving the generic fixture's GETs, one request per
/// connection. Runs on its own thread until the test process ends.
fn https_fixture_server(pki: &Pki) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::{Read, Write};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.path("bmc.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.path("bmc.key")).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = repo("tests/fixtures/redfish/generic");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(tcp) = stream else { continue };
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
            let Ok(conn) = rustls::ServerConnection::new(Arc::clone(&config)) else {
                continue;
            };
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head);
            let path = text
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("/")
                .trim_end_matches('/')
                .to_string();
            let file = dir.join(path.trim_start_matches('/')).join("index.json");
            let (status, body) = match std::fs::read_to_string(&file) {
                Ok(b) => ("200 OK", b),
                Err(_) => ("404 Not Found", String::new()),
            };
            let _ = write!(
                tls,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    addr
}

#[tokio::test]
async fn tls_verifies_by_default_and_takes_a_ca_file_or_insecure() {
    let pki = Pki::new();
    let addr = https_fixture_server(&pki);
    let bmcs = Bmcs::new(settings(5));

    // Default: system roots do not know the lab CA.
    let t = target(
        "https",
        addr,
        BmcVendor::Generic,
        None,
        PASSWORD,
        TlsPolicy::Verify { ca_file: None },
    );
    let e = bmcs.power_state(&t).await.unwrap_err();
    assert!(matches!(e, BmcError::Tls { .. }), "{e}");
    let shown = e.to_string();
    assert!(shown.contains("certificate not trusted"), "{shown}");
    assert!(shown.contains("ca_file"), "{shown}");
    assert!(shown.contains(&addr.to_string()), "{shown}");

    // A CA file that is not the BMC's: refused as well.
    let other = Pki::new();
    let t = target(
        "https",
        addr,
        BmcVendor::Generic,
        None,
        PASSWORD,
        TlsPolicy::Verify {
            ca_file: Some(other.path("ca.pem")),
        },
    );
    assert!(matches!(
        bmcs.power_state(&t).await.unwrap_err(),
        BmcError::Tls { .. }
    ));

    // The BMC's CA: verified.
    let t = target(
        "https",
        addr,
        BmcVendor::Generic,
        None,
        PASSWORD,
        TlsPolicy::Verify {
            ca_file: Some(pki.path("ca.pem")),
        },
    );
    assert_eq!(bmcs.power_state(&t).await.unwrap(), PowerState::On);

    // insecure = true: anything goes (and is logged once).
    let t = target(
        "https",
        addr,
        BmcVendor::Generic,
        None,
        PASSWORD,
        TlsPolicy::Insecure,
    );
    assert_eq!(bmcs.power_state(&t).await.unwrap(), PowerState::On);

    // A CA file that is not PEM: a clear error naming it.
    let junk = pki.path("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let t = target(
        "https",
        addr,
        BmcVendor::Generic,
        None,
        PASSWORD,
        TlsPolicy::Verify {
            ca_file: Some(junk.clone()),
        },
    );
    let e = bmcs.power_state(&t).await.unwrap_err();
    assert!(e.to_string().contains(&junk.display().to_string()), "{e}");
}

// =======================================================================================
// sushy-emulator (a real Redfish service), fake driver.
// =======================================================================================

fn sushy_target(s: &sushy::Sushy, system: Option<&str>, password: &str) -> BmcTarget {
    let mut t = target(
        "http",
        SocketAddr::from(([127, 0, 0, 1], s.port)),
        BmcVendor::Generic,
        system,
        password,
        TlsPolicy::Plain,
    );
    t.credential.username = sushy::USER.into();
    t
}

/// Reads Boot as a third party would (plain reqwest, basic auth).
async fn sushy_boot(s: &sushy::Sushy, system: &str) -> Value {
    let url = format!("http://127.0.0.1:{}/redfish/v1/Systems/{system}", s.port);
    let v: Value = reqwest::Client::builder()
        .tls_backend_preconfigured(bootgate::bmc::tls::plain().unwrap())
        .build()
        .unwrap()
        .get(url)
        .basic_auth(sushy::USER, Some(sushy::PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["Boot"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sushy_power_on_restart_off_with_polling() {
    let s = sushy::Sushy::start(&["vm0", "vm1"]);
    let t = sushy_target(&s, Some("vm0"), sushy::PASSWORD);
    let bmcs = Bmcs::new(settings(10));
    assert_eq!(bmcs.power_state(&t).await.unwrap(), PowerState::Off);
    // The fake driver applies a change 1-11 s after accepting it: poll.
    for (kind, want) in [
        (ResetType::On, PowerState::On),
        (ResetType::ForceRestart, PowerState::On),
        (ResetType::ForceOff, PowerState::Off),
    ] {
        bmcs.reset(&t, kind)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}\n{}", s.log()));
        let got = wait_for_power(
            &bmcs,
            &t,
            want,
            Duration::from_secs(30),
            Duration::from_millis(250),
        )
        .await
        .unwrap();
        assert_eq!(got, want, "after {kind}");
    }
    // vm1 was never touched.
    let t1 = sushy_target(&s, Some("vm1"), sushy::PASSWORD);
    assert_eq!(bmcs.power_state(&t1).await.unwrap(), PowerState::Off);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sushy_pxe_override_is_reported_continuous_and_cleared() {
    let s = sushy::Sushy::start(&["vm0"]);
    let t = sushy_target(&s, Some("vm0"), sushy::PASSWORD);
    let bmcs = Bmcs::new(settings(10));
    // sushy accepts Once but always keeps Continuous: bootgate reports what was applied.
    let mode = bmcs.set_boot_override(&t, BootSource::Pxe).await.unwrap();
    assert_eq!(mode, OverrideMode::Continuous);
    let boot = sushy_boot(&s, &sushy::uuid_of("vm0")).await;
    assert_eq!(boot["BootSourceOverrideTarget"], "Pxe");
    bmcs.clear_boot_override(&t)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log()));
    let boot = sushy_boot(&s, &sushy::uuid_of("vm0")).await;
    // sushy lists no "None" target: the clear falls back to the disk.
    assert_eq!(boot["BootSourceOverrideTarget"], "Hdd", "{boot}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sushy_several_systems_by_name_or_uuid() {
    let s = sushy::Sushy::start(&["vm0", "vm1", "vm2", "vm3"]);
    let bmcs = Bmcs::new(settings(10));
    let e = bmcs
        .power_state(&sushy_target(&s, None, sushy::PASSWORD))
        .await
        .unwrap_err();
    assert!(matches!(e, BmcError::AmbiguousSystem { .. }), "{e}");
    assert!(e.to_string().contains(&sushy::uuid_of("vm3")), "{e}");
    // By Name (sushy redirects /Systems/vm2 to the UUID URL) and by Id (the UUID).
    for sys in ["vm2".to_string(), sushy::uuid_of("vm3")] {
        let t = sushy_target(&s, Some(&sys), sushy::PASSWORD);
        assert_eq!(
            bmcs.power_state(&t).await.unwrap(),
            PowerState::Off,
            "{sys}"
        );
    }
    let e = bmcs
        .power_state(&sushy_target(&s, Some("vm9"), sushy::PASSWORD))
        .await
        .unwrap_err();
    assert!(matches!(e, BmcError::NoSuchSystem { .. }), "{e}");
    assert!(e.to_string().contains("(vm1)"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sushy_reset_types_and_an_unadvertised_power_cycle() {
    use ResetType::*;
    let s = sushy::Sushy::start(&["vm0"]);
    let t = sushy_target(&s, None, sushy::PASSWORD);
    let bmcs = Bmcs::new(settings(10));
    // sushy also lists ForceOn, which bootgate does not model.
    assert_eq!(
        bmcs.reset_types(&t).await.unwrap(),
        [
            On,
            ForceOff,
            GracefulShutdown,
            GracefulRestart,
            ForceRestart,
            Nmi
        ]
    );
    let e = bmcs.reset(&t, PowerCycle).await.unwrap_err();
    assert!(matches!(e, BmcError::UnsupportedReset { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sushy_wrong_credentials_give_401_naming_bmc_and_user_not_password() {
    let s = sushy::Sushy::start(&["vm0"]);
    let bad = "not-the-Passw0rd";
    let t = sushy_target(&s, Some("vm0"), bad);
    let e = Bmcs::new(settings(10)).power_state(&t).await.unwrap_err();
    assert!(matches!(e, BmcError::Unauthorized { .. }), "{e}");
    assert_eq!(e.status(), Some(401));
    let shown = e.to_string();
    assert!(shown.contains("node7"), "{shown}");
    assert!(
        shown.contains(&format!("http://127.0.0.1:{}", s.port)),
        "{shown}"
    );
    assert!(shown.contains("\"admin\""), "{shown}");
    assert!(shown.contains("401"), "{shown}");
    assert_no_password(&shown, bad);
    assert_no_password(&format!("{e:?}"), bad);
    assert_no_password(&format!("{t:?}"), bad);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_inventory_bmcs_resolve_and_reach_sushy() {
    let s = sushy::Sushy::start(&["vm0", "vm1", "vm2", "vm3"]);
    let inv = bootgate::inventory::load::load_dir(&repo("inventory/lab")).unwrap();
    // The demo installs the example secrets with mode 0600.
    let dir = tempfile::tempdir().unwrap();
    let secrets_path = dir.path().join("secrets.toml");
    std::fs::copy(repo("inventory/lab/secrets.example.toml"), &secrets_path).unwrap();
    std::fs::set_permissions(&secrets_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let secrets = Secrets::load(&secrets_path).unwrap();
    let bmcs = Arc::new(Bmcs::new(BmcSettings {
        concurrency: 2,
        ..settings(10)
    }));
    let mut tasks = Vec::new();
    for name in ["vm0", "vm1", "vm2", "vm3"] {
        let host = inv.host(name).unwrap();
        let mut t = BmcTarget::resolve(host, &inv, &secrets).unwrap();
        assert_eq!(t.endpoint.as_str(), "http://127.0.0.1:8000/");
        assert_eq!(t.system.as_deref(), Some(name));
        assert_eq!(t.tls, TlsPolicy::Plain);
        // The lab runs sushy on 8000 inside the gw namespace; this one is on a free port.
        t.endpoint.set_port(Some(s.port)).unwrap();
        let b = Arc::clone(&bmcs);
        tasks.push(tokio::spawn(async move { b.power_state(&t).await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), PowerState::Off);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirt_vm_powers_on_and_off_through_redfish() {
    support::require_root!("network namespaces, libvirtd");
    // The lab topology (rack namespace with bridge br0), a private libvirtd in it, one PXE VM.
    let lab = support::Lab::new();
    let lv = libvirt::Libvirt::start(&lab.rack);
    let name = format!("bgt{}vm", std::process::id());
    lv.define_vm(&lab.rack, "br0", &name);
    assert_eq!(lv.domstate(&name), "shut off");
    let s = sushy::Sushy::start_libvirt(&lv.uri);
    let bmcs = Bmcs::new(settings(30));
    let t = sushy_target(&s, Some(&name), sushy::PASSWORD);
    assert_eq!(
        bmcs.power_state(&t)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", s.log())),
        PowerState::Off
    );
    // The libvirt driver keeps the boot device persistently: Continuous.
    let mode = bmcs.set_boot_override(&t, BootSource::Pxe).await.unwrap();
    assert_eq!(mode, OverrideMode::Continuous);
    bmcs.reset(&t, ResetType::On).await.unwrap();
    let on = wait_for_power(
        &bmcs,
        &t,
        PowerState::On,
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    assert_eq!(on, PowerState::On);
    assert_eq!(lv.domstate(&name), "running");
    bmcs.reset(&t, ResetType::ForceOff).await.unwrap();
    let off = wait_for_power(
        &bmcs,
        &t,
        PowerState::Off,
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    assert_eq!(off, PowerState::Off);
    assert_eq!(lv.domstate(&name), "shut off");
    // Cleared: the domain boots from its disk again.
    bmcs.clear_boot_override(&t)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log()));
    drop(s);
    drop(lv);
    drop(lab);
}

// =======================================================================================
// IPMI through ipmitool: pyghmi's BMC (the engine VirtualBMC runs) and OpenIPMI's ipmi_sim.
// =======================================================================================

/// A pyghmi BMC (pyghmi.cmd.fakebmc's in-memory power/bootdev) bound to 127.0.0.1 only.
struct PyghmiBmc {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl PyghmiBmc {
    fn start() -> PyghmiBmc {
        let bin = sushy::venv();
        if !bin.join("fakebmc").exists() {
            let ok = Command::new(bin.join("pip"))
                .args(["install", "-q", "pyghmi==1.6.19"])
                .status()
                .unwrap()
                .success();
            assert!(ok, "pip install pyghmi");
        }
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("bmc.py");
        std::fs::write(
            &script,
            "import sys\nimport pyghmi.ipmi.bmc as bmc\nfrom pyghmi.cmd.fakebmc import FakeBmc\n\
             class LoopbackBmc(FakeBmc):\n    def __init__(self, authdata, port):\n        \
             bmc.Bmc.__init__(self, authdata, port, address='::ffff:127.0.0.1')\n        \
             self.powerstate = 'off'\n        self.bootdevice = 'default'\n\
             LoopbackBmc({'admin': sys.argv[2]}, int(sys.argv[1])).listen()\n",
        )
        .unwrap();
        let port = sushy::free_port();
        let child = Command::new(bin.join("python"))
            .arg(&script)
            .arg(port.to_string())
            .arg(PASSWORD)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python pyghmi BMC");
        let b = PyghmiBmc {
            port,
            child,
            _dir: dir,
        };
        // Ready when ipmitool gets an answer.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            let ok = Command::new("ipmitool")
                .args(["-I", "lanplus", "-C", "3", "-N", "1", "-R", "1"])
                .args(["-H", "127.0.0.1", "-p", &port.to_string(), "-U", USER, "-E"])
                .args(["chassis", "power", "status"])
                .env("IPMI_PASSWORD", PASSWORD)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("ipmitool (apt-get install ipmitool)")
                .success();
            if ok {
                return b;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("pyghmi BMC did not answer on 127.0.0.1:{port}");
    }
}

impl Drop for PyghmiBmc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ipmi_target(port: u16, password: &str) -> BmcTarget {
    BmcTarget {
        host: "node9".into(),
        endpoint: Url::parse(&format!("ipmi://127.0.0.1:{port}/")).unwrap(),
        address: Ipv4Addr::LOCALHOST,
        port,
        system: None,
        vendor: BmcVendor::Generic,
        protocol: BmcProtocol::Ipmi,
        credential: Credential {
            name: "ipmi".into(),
            username: USER.into(),
            password: Secret::new(password),
        },
        tls: TlsPolicy::Plain,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmi_power_and_pxe_bootdev_through_ipmitool() {
    let bmc = PyghmiBmc::start();
    let t = ipmi_target(bmc.port, PASSWORD);
    let bmcs = Bmcs::new(settings(10));
    assert_eq!(bmcs.power_state(&t).await.unwrap(), PowerState::Off);
    bmcs.reset(&t, ResetType::On).await.unwrap();
    assert_eq!(bmcs.power_state(&t).await.unwrap(), PowerState::On);
    assert_eq!(
        bmcs.set_boot_override(&t, BootSource::Pxe).await.unwrap(),
        OverrideMode::Once
    );
    bmcs.clear_boot_override(&t).await.unwrap();
    bmcs.reset(&t, ResetType::GracefulShutdown).await.unwrap();
    assert_eq!(bmcs.power_state(&t).await.unwrap(), PowerState::Off);

    // What IPMI cannot express is refused before anything is sent.
    let e = bmcs
        .reset(&t, ResetType::GracefulRestart)
        .await
        .unwrap_err();
    assert!(matches!(e, BmcError::UnsupportedReset { .. }), "{e}");
    let e = bmcs
        .set_boot_override(&t, BootSource::UefiHttp)
        .await
        .unwrap_err();
    assert!(matches!(e, BmcError::Unsupported { .. }), "{e}");
    // This BMC refuses `power cycle`: the error carries ipmitool's stderr.
    let e = bmcs.reset(&t, ResetType::PowerCycle).await.unwrap_err();
    assert!(matches!(e, BmcError::Ipmi { .. }), "{e}");
    assert!(e.to_string().contains("Invalid data field"), "{e}");
    assert!(e.to_string().contains("chassis power cycle"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmi_wrong_password_names_the_user_never_the_password() {
    let bmc = PyghmiBmc::start();
    let bad = "wr0ng-ipmi-pass";
    let t = ipmi_target(bmc.port, bad);
    let e = Bmcs::new(settings(4)).power_state(&t).await.unwrap_err();
    let shown = e.to_string();
    assert!(shown.contains("node9"), "{shown}");
    assert!(shown.contains("\"admin\""), "{shown}");
    assert_no_password(&shown, bad);
    // The password travels in the environment, never in argv.
    let argv =
        bootgate::bmc::ipmi::Ipmitool::new(settings(4)).argv(&t, &["chassis", "power", "status"]);
    assert!(argv.iter().all(|a| !a.contains(bad)), "{argv:?}");
    assert!(argv.contains(&"-E".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmitool_gets_the_password_by_environment_and_is_killed_at_the_deadline() {
    // A stand-in ipmitool that records its argv and environment, then hangs.
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record");
    let fake = dir.path().join("ipmitool");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"pid=$$\" > {r}\necho \"argv=$*\" >> {r}\necho \"env=$IPMI_PASSWORD\" >> {r}\nexec sleep 30\n",
            r = record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bmcs = Bmcs::with_ipmitool(settings(1), fake);
    let t = ipmi_target(623, PASSWORD);
    let start = Instant::now();
    let e = bmcs.power_state(&t).await.unwrap_err();
    assert!(matches!(e, BmcError::Timeout { .. }), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    let text = std::fs::read_to_string(&record).unwrap();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(field("env="), PASSWORD);
    let argv = field("argv=");
    assert!(argv.contains("-E") && argv.contains("-U admin"), "{argv}");
    assert_no_password(&argv, PASSWORD);
    // The hung process was killed (gone, or a zombie awaiting its reaper).
    let pid = field("pid=");
    let gone = support::wait_for(Duration::from_secs(3), || {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => Some(()),
            Ok(stat) if stat.split_whitespace().nth(2) == Some("Z") => Some(()),
            Ok(_) => None,
        }
    });
    assert!(gone.is_some(), "ipmitool stand-in {pid} still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmi_sim_status_bootdev_and_a_refused_cycle() {
    // OpenIPMI's ipmi_sim with no machine attached: status and bootdev work, a power
    // cycle of the (absent) chassis is refused.
    let dir = tempfile::tempdir().unwrap();
    let port = sushy::free_port();
    let lan = dir.path().join("lan.conf");
    std::fs::write(
        &lan,
        format!(
            "name \"bgtsim\"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {port}\n    priv_limit admin\n    allowed_auths_callback none md2 md5 straight\n    allowed_auths_user none md2 md5 straight\n    allowed_auths_operator none md2 md5 straight\n    allowed_auths_admin none md2 md5 straight\n    guid a123456789abcdefa123456789abcdef\n  endlan\n  poweroff_wait 5\n  kill_wait 5\n  user 2 true \"admin\" \"{PASSWORD}\" admin 10 none md2 md5 straight\n"
        ),
    )
    .unwrap();
    let emu = dir.path().join("sim.emu");
    std::fs::write(
        &emu,
        "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nsel_enable 0x20 1000 0x0a\nmc_enable 0x20\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mut child = Command::new("ipmi_sim")
        .arg("-c")
        .arg(&lan)
        .arg("-f")
        .arg(&emu)
        .arg("-n")
        .arg("-s")
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ipmi_sim (apt-get install openipmi)");
    let t = ipmi_target(port, PASSWORD);
    let bmcs = Bmcs::new(settings(4));
    let mut state_seen = None;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if let Ok(s) = bmcs.power_state(&t).await {
            state_seen = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let bootdev = bmcs.set_boot_override(&t, BootSource::Pxe).await;
    let cycle = bmcs.reset(&t, ResetType::PowerCycle).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(state_seen, Some(PowerState::Off));
    assert_eq!(bootdev.unwrap(), OverrideMode::Once);
    let e = cycle.unwrap_err();
    assert!(matches!(e, BmcError::Ipmi { .. }), "{e}");
    assert!(e.to_string().contains("chassis power cycle"), "{e}");
    assert!(e.to_string().contains("Invalid data field"), "{e}");
}

// =======================================================================================
// Secrets
// =======================================================================================

#[test]
fn secrets_file_readable_by_others_is_refused_naming_path_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("secrets.toml");
    std::fs::write(
        &p,
        format!("[bmc.dell]\nusername = \"root\"\npassword = \"{PASSWORD}\"\n"),
    )
    .unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = Secrets::load(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
        assert!(e.contains(&format!("{mode:04o}")), "{e}");
        assert_no_password(&e, PASSWORD);
        assert!(read_private_file(&p).is_err());
    }
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = Secrets::load(&p).unwrap();
    let login = s.bmc("dell").unwrap();
    assert_eq!(login.username, "root");
    assert_eq!(login.password.expose(), PASSWORD);
    assert_no_password(&format!("{s:?}"), PASSWORD);
}

#[test]
fn secrets_file_must_belong_to_the_reader() {
    // Only meaningful as root (chown to another uid).
    support::require_root!("chown to another uid");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("secrets.toml");
    std::fs::write(&p, "[bmc.x]\nusername = \"u\"\npassword = \"p\"\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
    let e = Secrets::load(&p).unwrap_err().to_string();
    assert!(e.contains("owned by uid 65534"), "{e}");
    assert!(e.contains(&p.display().to_string()), "{e}");
}

#[test]
fn secret_debug_and_display_never_leak() {
    let s = Secret::new(PASSWORD);
    assert_eq!(format!("{s}"), "***");
    assert_eq!(format!("{s:?}"), "***");
    let t = target(
        "https",
        "127.0.0.1:443".parse().unwrap(),
        BmcVendor::Dell,
        None,
        PASSWORD,
        TlsPolicy::Verify { ca_file: None },
    );
    assert_no_password(&format!("{t:?}"), PASSWORD);
    assert_no_password(&format!("{t:#?}"), PASSWORD);
    assert!(format!("{t:?}").contains("***"));
}

#[test]
fn config_secrets_credential_form() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("inv")).unwrap();
    std::fs::create_dir(dir.path().join("img")).unwrap();
    let cfg = dir.path().join("bootgate.toml");
    let write = |secrets: &str| {
        std::fs::write(
            &cfg,
            format!(
                "state_dir = \"/tmp/x\"\ninventory = \"inv\"\nboot_images = \"img\"\nsecrets = \"{secrets}\"\n[http]\nlisten = \"127.0.0.1:8080\"\n"
            ),
        )
        .unwrap();
    };
    write("credential:bootgate-secrets");
    let c = bootgate::config::Config::load(&cfg).unwrap();
    let src = c.secrets.clone().unwrap();
    assert_eq!(src, SecretsSource::Credential("bootgate-secrets".into()));
    assert_eq!(
        src.path_with(Some(std::ffi::OsStr::new(
            "/run/credentials/bootgate.service"
        )))
        .unwrap(),
        PathBuf::from("/run/credentials/bootgate.service/bootgate-secrets")
    );
    if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
        let e = c.secrets_path().unwrap_err().to_string();
        assert!(e.contains("CREDENTIALS_DIRECTORY"), "{e}");
        assert!(e.contains("LoadCredential"), "{e}");
        assert!(c.load_secrets().is_err());
        assert_eq!(c.secrets_file, None);
    }
    // A bad credential name is a config problem naming the field.
    write("credential:../etc/shadow");
    let e = bootgate::config::Config::load(&cfg).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].field, "secrets");
    // A path stays a path, relative to the config's directory.
    write("secrets.toml");
    let c = bootgate::config::Config::load(&cfg).unwrap();
    assert_eq!(c.secrets_file, Some(dir.path().join("secrets.toml")));
    assert_eq!(
        c.secrets,
        Some(SecretsSource::File(dir.path().join("secrets.toml")))
    );
}

#[test]
fn target_resolution_from_inventory_and_secrets() {
    let inv = bootgate::inventory::load::load_dir(&repo("inventory/example")).unwrap();
    let host = inv.hosts.iter().find(|h| h.bmc.is_some()).unwrap();
    let cred = host.bmc.as_ref().unwrap().credential.clone();
    // Unknown credential: names host and credential.
    let e = BmcTarget::resolve(host, &inv, &Secrets::default()).unwrap_err();
    assert!(matches!(e, BmcError::UnknownCredential { .. }), "{e}");
    assert!(e.to_string().contains(&host.name), "{e}");
    assert!(e.to_string().contains(&cred), "{e}");
    let secrets = Secrets::default().with_bmc(&cred, "bootgate", PASSWORD);
    let t = BmcTarget::resolve(host, &inv, &secrets).unwrap();
    assert_eq!(t.endpoint.scheme(), "https");
    assert_eq!(t.port, 443);
    assert_eq!(t.tls, TlsPolicy::Verify { ca_file: None });
    assert_eq!(t.credential.username, "bootgate");
    // No BMC at all.
    let mut bare = host.clone();
    bare.bmc = None;
    assert!(matches!(
        BmcTarget::resolve(&bare, &inv, &secrets),
        Err(BmcError::NoBmc { .. })
    ));
    // Site CA as the default; a BMC's own CA and insecure win.
    let mut inv2 = inv.clone();
    inv2.site.bmc_ca_file = Some("/etc/bootgate/bmc-ca.pem".into());
    let t = BmcTarget::resolve(host, &inv2, &secrets).unwrap();
    assert_eq!(
        t.tls,
        TlsPolicy::Verify {
            ca_file: Some("/etc/bootgate/bmc-ca.pem".into())
        }
    );
    let mut h = host.clone();
    h.bmc.as_mut().unwrap().insecure = true;
    assert_eq!(
        BmcTarget::resolve(&h, &inv2, &secrets).unwrap().tls,
        TlsPolicy::Insecure
    );
    let mut h = host.clone();
    h.bmc.as_mut().unwrap().protocol = BmcProtocol::Ipmi;
    let t = BmcTarget::resolve(&h, &inv2, &secrets).unwrap();
    assert_eq!((t.port, t.tls.clone()), (623, TlsPolicy::Plain));
}

// =======================================================================================
// Credentials stay with their BMC: links (`@odata.id`, session and task `Location`) and
// redirects that leave the BMC's origin are refused. No real BMC redirects on demand, so
// the "BMC" is a scripted in-test server on 127.0.0.1 and the "other host" a second
// listener on another port (another origin) that records whatever reaches it.
// =======================================================================================

mod offsite {
    use super::*;

    /// One request as a listener saw it: method, path and its credentials, if any.
    #[derive(Debug, Clone)]
    pub struct Seen {
        pub method: String,
        pub path: String,
        pub authorization: Option<String>,
        pub token: Option<String>,
    }

    type Script = Arc<dyn Fn(&Method, &str) -> Response + Send + Sync>;

    /// A listener answering with `script` and recording every request.
    #[derive(Clone)]
    pub struct Listener {
        pub addr: SocketAddr,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Listener {
        pub async fn start(
            script: impl Fn(&Method, &str) -> Response + Send + Sync + 'static,
        ) -> Listener {
            let script: Script = Arc::new(script);
            let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
            let (s, rec) = (script.clone(), seen.clone());
            let app = axum::Router::new().fallback(
                move |method: Method, uri: Uri, headers: HeaderMap| {
                    let (s, rec) = (s.clone(), rec.clone());
                    async move {
                        let header = |n: &str| {
                            headers
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string)
                        };
                        rec.lock().unwrap().push(Seen {
                            method: method.to_string(),
                            path: uri.path().to_string(),
                            authorization: header("authorization"),
                            token: header("x-auth-token"),
                        });
                        s(&method, uri.path())
                    }
                },
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Listener { addr, seen }
        }

        pub fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    pub fn json_reply(v: Value) -> Response {
        (StatusCode::OK, axum::Json(v)).into_response()
    }

    pub fn redirect(status: StatusCode, to: &str) -> Response {
        (status, [(axum::http::header::LOCATION, to.to_string())]).into_response()
    }

    pub fn system(reset_target: &str) -> Value {
        json!({
            "@odata.id": "/redfish/v1/Systems/1",
            "Id": "1",
            "PowerState": "On",
            "Actions": {"#ComputerSystem.Reset": {
                "target": reset_target,
                "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "ForceRestart"]
            }}
        })
    }

    /// The "other host": answers anything as if it were the BMC, so a client that went
    /// there would get on; the test reads what it was sent.
    pub async fn other_host() -> Listener {
        Listener::start(|_, path| {
            if path.ends_with("/Systems") {
                json_reply(json!({"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]}))
            } else {
                json_reply(system("/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"))
            }
        })
        .await
    }

    /// A service root without sessions (basic auth on every request) linking Systems at `systems`.
    pub fn root(systems: &str) -> Value {
        json!({"@odata.id": "/redfish/v1/", "RedfishVersion": "1.6.0", "Systems": {"@odata.id": systems}})
    }
}

/// The BMC target for a scripted listener (basic auth, plain HTTP, the generic vendor).
fn offsite_target(bmc: &offsite::Listener) -> BmcTarget {
    target(
        "http",
        bmc.addr,
        BmcVendor::Generic,
        None,
        PASSWORD,
        TlsPolicy::Plain,
    )
}

/// The refusal names the host, the BMC and the link; the other host saw nothing at all
/// (so no credential); the password is in no message.
fn assert_refused_off_bmc(e: &BmcError, bmc: &offsite::Listener, other: &offsite::Listener) {
    let msg = e.to_string();
    assert!(matches!(e, BmcError::OffBmc { .. }), "{e:?}");
    assert_eq!(e.kind(), "off_bmc");
    assert!(msg.contains("node7"), "{msg}");
    assert!(
        msg.contains(&format!("http://{}", bmc.addr)),
        "names the BMC: {msg}"
    );
    assert!(
        msg.contains(&other.addr.to_string()),
        "names the link: {msg}"
    );
    assert_no_password(&msg, PASSWORD);
    assert!(
        other.seen().is_empty(),
        "the other host was sent {:?}",
        other.seen()
    );
}

#[tokio::test]
async fn an_odata_link_to_another_host_is_refused_and_gets_no_credentials() {
    let other = offsite::other_host().await;
    let systems = format!("http://{}/redfish/v1/Systems", other.addr);
    let bmc = offsite::Listener::start(move |_, path| match path {
        "/redfish/v1/" => offsite::json_reply(offsite::root(&systems)),
        _ => (StatusCode::NOT_FOUND, "no").into_response(),
    })
    .await;
    let pc = Bmcs::new(settings(5));
    let e = pc.power_state(&offsite_target(&bmc)).await.unwrap_err();
    assert_refused_off_bmc(&e, &bmc, &other);
}

#[tokio::test]
async fn a_redirect_to_another_host_is_refused_and_gets_no_credentials() {
    let other = offsite::other_host().await;
    for status in [
        StatusCode::FOUND,
        StatusCode::TEMPORARY_REDIRECT,
        StatusCode::PERMANENT_REDIRECT,
    ] {
        let to = format!("http://{}/redfish/v1/Systems", other.addr);
        let bmc = offsite::Listener::start(move |_, path| match path {
            "/redfish/v1/" => offsite::json_reply(offsite::root("/redfish/v1/Systems")),
            _ => offsite::redirect(status, &to),
        })
        .await;
        let pc = Bmcs::new(settings(5));
        let e = pc.power_state(&offsite_target(&bmc)).await.unwrap_err();
        assert_refused_off_bmc(&e, &bmc, &other);
        // The BMC itself did get the basic login (it is the BMC).
        let seen = bmc.seen();
        assert!(
            seen.iter()
                .any(|s| s.path == "/redfish/v1/Systems" && s.authorization.is_some()),
            "{seen:?}"
        );
    }
}

/// A redirect on the BMC's own origin (sushy-emulator sends a system's Name to its Id)
/// is still followed, credentials and all.
#[tokio::test]
async fn a_redirect_on_the_bmc_itself_is_followed() {
    let bmc = offsite::Listener::start(|_, path| match path {
        "/redfish/v1/" => offsite::json_reply(offsite::root("/redfish/v1/Systems")),
        "/redfish/v1/Systems" => {
            offsite::redirect(StatusCode::MOVED_PERMANENTLY, "/redfish/v1/Systems/")
        }
        "/redfish/v1/Systems/" => {
            offsite::json_reply(json!({"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]}))
        }
        _ => offsite::json_reply(offsite::system(
            "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
        )),
    })
    .await;
    let pc = Bmcs::new(settings(5));
    assert_eq!(
        pc.power_state(&offsite_target(&bmc)).await.unwrap(),
        PowerState::On
    );
    let seen = bmc.seen();
    let followed = seen
        .iter()
        .find(|s| s.path == "/redfish/v1/Systems/")
        .expect("redirect followed");
    assert!(
        followed
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Basic ")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_task_monitor_on_another_host_is_refused_and_gets_no_credentials() {
    let other = offsite::other_host().await;
    let monitor = format!(
        "http://{}/redfish/v1/TaskService/TaskMonitors/1",
        other.addr
    );
    let bmc = offsite::Listener::start(move |method, path| match (method.as_str(), path) {
        (_, "/redfish/v1/") => offsite::json_reply(offsite::root("/redfish/v1/Systems")),
        (_, "/redfish/v1/Systems") => {
            offsite::json_reply(json!({"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]}))
        }
        ("POST", _) => (
            StatusCode::ACCEPTED,
            [(axum::http::header::LOCATION, monitor.clone())],
            axum::Json(json!({})),
        )
            .into_response(),
        _ => offsite::json_reply(offsite::system(
            "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
        )),
    })
    .await;
    let pc = Bmcs::new(settings(5));
    let e = pc
        .reset(&offsite_target(&bmc), ResetType::ForceRestart)
        .await
        .unwrap_err();
    assert_refused_off_bmc(&e, &bmc, &other);
    assert!(
        bmc.seen().iter().any(|s| s.method == "POST"),
        "the reset itself went to the BMC"
    );
}

/// A session whose `Location` is on another host: the token would be sent there at
/// logout, so the login is refused and nothing goes there.
#[tokio::test]
async fn a_session_location_on_another_host_is_refused_and_gets_no_token() {
    let other = offsite::other_host().await;
    let location = format!("http://{}/redfish/v1/SessionService/Sessions/7", other.addr);
    let bmc = offsite::Listener::start(move |method, path| match (method.as_str(), path) {
        (_, "/redfish/v1/") => offsite::json_reply(json!({
            "@odata.id": "/redfish/v1/",
            "Systems": {"@odata.id": "/redfish/v1/Systems"},
            "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}
        })),
        ("POST", "/redfish/v1/SessionService/Sessions") => (
            StatusCode::CREATED,
            [
                (axum::http::header::LOCATION, location.clone()),
                (
                    axum::http::HeaderName::from_static("x-auth-token"),
                    "tok-123".to_string(),
                ),
            ],
            axum::Json(json!({"@odata.id": location.clone()})),
        )
            .into_response(),
        _ => offsite::json_reply(json!({"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]})),
    })
    .await;
    let pc = Bmcs::new(settings(5));
    let e = pc.power_state(&offsite_target(&bmc)).await.unwrap_err();
    assert_refused_off_bmc(&e, &bmc, &other);
    assert!(
        !bmc.seen().iter().any(|s| s.token.is_some()),
        "{:?}",
        bmc.seen()
    );
}

// =======================================================================================
// The secrets file is re-read on reload: a file that fails to load refuses the whole
// reload (exit 1, event, /healthz) and the logins in force stay; a good one is taken.
// The daemon runs in the lab's gw namespace; its BMC (127.0.0.1:8000 there, as the lab
// inventory says) is a listener that answers 401 and records the basic login it was sent.
// =======================================================================================

/// A BMC at 127.0.0.1:`port` inside `ns` that answers every request 401 and records each
/// `Authorization` header; stops when the returned flag is set.
fn recording_bmc_in(
    ns: &Netns,
    port: u16,
) -> (Arc<Mutex<Vec<String>>>, Arc<std::sync::atomic::AtomicBool>) {
    use std::io::{Read, Write};
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let listener = support::in_netns(ns, move || {
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the BMC in the namespace")
    });
    listener.set_nonblocking(true).unwrap();
    let (rec, halt) = (seen.clone(), stop.clone());
    std::thread::spawn(move || {
        while !halt.load(std::sync::atomic::Ordering::SeqCst) {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head).to_string();
            if let Some(auth) = text.lines().find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                    .map(|(_, v)| v.trim().to_string())
            }) {
                rec.lock().unwrap().push(auth);
            }
            let _ = conn.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (seen, stop)
}

fn basic(user: &str, password: &str) -> String {
    let out = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{user}:{password}").as_bytes())?;
            c.wait_with_output()
        })
        .expect("base64");
    format!("Basic {}", String::from_utf8_lossy(&out.stdout).trim())
}

/// `curl -X METHOD` with a bearer token inside the gw namespace: (status, body).
fn api_call(lab: &support::Lab, method: &str, path: &str, token: &str) -> (u16, String) {
    let out = support::sh(lab.gw.cmd("curl").args([
        "-s",
        "-m",
        "30",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("http://{}:{}{path}", support::GW_IP, support::HTTP_PORT),
    ]));
    let text = support::stdout(&out);
    let (body, code) = text.rsplit_once('\n').expect("curl output");
    (code.trim().parse().unwrap(), body.to_string())
}

#[test]
fn a_secrets_file_that_fails_on_reload_fails_the_reload_and_a_good_one_is_taken() {
    support::require_root!();
    let lab = support::Lab::new();
    let site = support::Site::from_inventory("lab");
    site.use_bmc_port(8000, "first-Passw0rd");
    let secrets = site.dir.path().join("secrets.toml");
    // An admin token for the power endpoint.
    let out = support::sh(Command::new(support::bootgate_bin()).args([
        "token", "new", "ops", "--scope", "admin", "--output", "json",
    ]));
    let v: Value = serde_json::from_str(&support::stdout(&out)).unwrap();
    let admin = v["token"].as_str().unwrap().to_string();
    let tokens = site.dir.path().join("tokens.toml");
    std::fs::write(&tokens, v["entry"].as_str().unwrap()).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = std::fs::read_to_string(site.config()).unwrap();
    std::fs::write(
        site.config(),
        cfg.replace(
            "[http]\n",
            &format!("[http]\ntokens = \"{}\"\n", tokens.display()),
        ),
    )
    .unwrap();
    let (seen, stop) = recording_bmc_in(&lab.gw, 8000);
    let _daemon = support::Daemon::start(&lab, &site);

    let last_login = |expect: &str| {
        seen.lock().unwrap().clear();
        let (code, body) = api_call(&lab, "POST", "/api/v1/hosts/vm0/power/status", &admin);
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("401"), "the BMC refused the login: {body}");
        let logins = seen.lock().unwrap().clone();
        assert!(
            logins.iter().any(|a| *a == basic("admin", expect)),
            "expected the login with {expect:?}; the BMC got {logins:?}"
        );
    };
    last_login("first-Passw0rd");

    // A new password, in a file others can read: the reload is refused as a whole.
    std::fs::write(
        &secrets,
        "[bmc.lab]\nusername = \"admin\"\npassword = \"second-Passw0rd\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = support::bootgate(&[
        "--config",
        support::path_str(&site.config()),
        "reload",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", support::stderr(&out));
    let v: Value = serde_json::from_str(&support::stdout(&out)).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["generation"], 1, "nothing swapped: {v}");
    let problems = v["problems"].to_string();
    assert!(
        problems.contains("secrets.toml") && problems.contains("0644"),
        "{v}"
    );
    assert_no_password(&problems, "second-Passw0rd");
    let (code, body) = api_call(&lab, "POST", "/api/v1/reload", &admin);
    assert_eq!(code, 422, "{body}");
    let health = support::curl(
        &lab.gw,
        &format!("http://{}:{}/healthz", support::GW_IP, support::HTTP_PORT),
    )
    .expect("healthz");
    let health: Value = serde_json::from_str(&health.1).unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["inventory"]["last_reload_error"]
            .to_string()
            .contains("secrets.toml"),
        "{health}"
    );
    let (_, events) = api_call(
        &lab,
        "GET",
        "/api/v1/events?kind=inventory-rejected",
        &admin,
    );
    assert!(
        events.contains("secrets.toml"),
        "an event names the file: {events}"
    );
    // The logins in force stay.
    last_login("first-Passw0rd");

    // Fixed: the reload goes through and the new password is the one sent.
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = support::bootgate(&["--config", support::path_str(&site.config()), "reload"]);
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    last_login("second-Passw0rd");
    let health = support::curl(
        &lab.gw,
        &format!("http://{}:{}/healthz", support::GW_IP, support::HTTP_PORT),
    )
    .expect("healthz");
    let health: Value = serde_json::from_str(&health.1).unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
}
