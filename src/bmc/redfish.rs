//! A small typed Redfish client (DSP0266) for the operations bootgate needs: service root,
//! Systems discovery, sessions (`X-Auth-Token`, basic-auth fallback, logout), PowerState,
//! `ComputerSystem.Reset`, the boot override PATCH and 202 task monitors. Vendor
//! differences come from [`super::quirks`]; parsing is in pure functions at the bottom.
//!
//! Every request has the per-call deadline; idempotent requests (GET, PATCH of an absolute
//! value, DELETE) are retried after a connection error or a 503, a reset POST only when it
//! cannot have landed (connect error, 503), and never after a timeout.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

use super::quirks::{Quirks, quirks};
use super::tls;
use super::{
    BmcError, BmcSettings, BmcTarget, BootSource, OverrideMode, PowerState, ResetType, TlsPolicy,
};
use crate::secrets::Secret;

/// Service root path (DSP0266 §6.3: the only fixed URI).
pub const SERVICE_ROOT: &str = "/redfish/v1/";
/// Bytes of a response body kept for an error message.
const EXCERPT: usize = 300;
/// Task monitor polling interval when the BMC gives no Retry-After.
const TASK_POLL: Duration = Duration::from_secs(1);
/// Cap on any Retry-After we honour.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Redirects followed for one request (all of them on the BMC's origin).
const MAX_REDIRECTS: usize = 5;

/// Whether `a` and `b` share an origin (RFC 6454 §4: scheme, host, port), the rule a BMC's
/// credentials follow: they go to the BMC's configured origin and nowhere else.
pub fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// A redirect that would leave the origin of the request that got it (see [`redirect_policy`]).
#[derive(Debug, thiserror::Error)]
#[error("redirect to {to} leaves the BMC")]
struct OffOriginRedirect {
    to: Url,
}

/// Follows redirects only on the origin of the original request (which [`Conn::call`]
/// has checked is the BMC's), at most [`MAX_REDIRECTS`]. reqwest drops `Authorization` on
/// a cross-host redirect but keeps other headers, `X-Auth-Token` among them: refusing the
/// redirect outright is what keeps a session token (and the basic login) on the BMC.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| match attempt.previous().first() {
        Some(first) if !same_origin(first, attempt.url()) => {
            let to = attempt.url().clone();
            attempt.error(OffOriginRedirect { to })
        }
        _ => reqwest::redirect::Policy::limited(MAX_REDIRECTS).redirect(attempt),
    })
}

/// The off-origin redirect behind a reqwest error, if that is what it is.
fn off_origin_redirect(e: &reqwest::Error) -> Option<&Url> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<OffOriginRedirect>() {
            return Some(&r.to);
        }
        cur = err.source();
    }
    None
}

/// The Redfish side of [`super::Bmcs`]: one reqwest client per TLS policy (connection
/// pools are shared between the BMCs with the same policy).
pub struct Redfish {
    settings: BmcSettings,
    /// Built on first use; the lock is only held to look up or insert, never across I/O.
    clients: Mutex<HashMap<TlsPolicy, reqwest::Client>>,
}

impl Redfish {
    pub fn new(settings: BmcSettings) -> Redfish {
        Redfish {
            settings,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, t: &BmcTarget) -> Result<reqwest::Client, BmcError> {
        if let Some(c) = self
            .clients
            .lock()
            .ok()
            .and_then(|m| m.get(&t.tls).cloned())
        {
            return Ok(c);
        }
        let config = match &t.tls {
            TlsPolicy::Plain => tls::plain(),
            TlsPolicy::Verify { ca_file } => tls::verifying(ca_file.as_deref()),
            TlsPolicy::Insecure => tls::insecure(),
        }
        .map_err(|e| BmcError::Tls {
            host: t.host.clone(),
            bmc: t.bmc_label(),
            reason: e.to_string(),
        })?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .connect_timeout(self.settings.timeout)
            .redirect(redirect_policy())
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("bootgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BmcError::Config {
                host: t.host.clone(),
                reason: format!("cannot build the HTTP client: {}", chain(&e)),
            })?;
        if let Ok(mut m) = self.clients.lock() {
            m.insert(t.tls.clone(), client.clone());
        }
        Ok(client)
    }

    async fn open<'a>(&'a self, t: &'a BmcTarget) -> Result<Conn<'a>, BmcError> {
        let mut conn = Conn {
            t,
            settings: &self.settings,
            http: self.client(t)?,
            q: quirks(t.vendor),
            auth: Auth::None,
            root: Value::Null,
        };
        conn.login().await?;
        Ok(conn)
    }

    /// Runs `f` on an open connection, then logs out whatever happened.
    async fn with_conn<T>(
        &self,
        t: &BmcTarget,
        f: impl AsyncFnOnce(&mut Conn<'_>) -> Result<T, BmcError>,
    ) -> Result<T, BmcError> {
        let mut conn = self.open(t).await?;
        let out = f(&mut conn).await;
        conn.logout().await;
        out
    }

    /// One GET of the service root, without logging in (DSP0266 §13.3.1: the root is
    /// readable unauthenticated): whether a Redfish service answers at `t` (the audit's BMC
    /// check). A 401 from a service that protects even its root counts as an answer
    /// (`Value::Null`): it speaks HTTP and refuses us, which `bootgate power` will report.
    pub async fn service_root(&self, t: &BmcTarget) -> Result<Value, BmcError> {
        let conn = Conn {
            t,
            settings: &self.settings,
            http: self.client(t)?,
            q: quirks(t.vendor),
            auth: Auth::None,
            root: Value::Null,
        };
        let url = conn.url(SERVICE_ROOT)?;
        let r = conn.call(Method::GET, &url, None, None, Idem::Safe).await?;
        if r.status == StatusCode::UNAUTHORIZED {
            return Ok(Value::Null);
        }
        Ok(conn.ok(r)?.body)
    }

    pub async fn power_state(&self, t: &BmcTarget) -> Result<PowerState, BmcError> {
        self.with_conn(t, async |c| {
            let sys = c.system().await?;
            Ok(sys
                .body
                .get("PowerState")
                .and_then(Value::as_str)
                .map_or(PowerState::Unknown, PowerState::from_redfish))
        })
        .await
    }

    pub async fn reset_types(&self, t: &BmcTarget) -> Result<Vec<ResetType>, BmcError> {
        self.with_conn(t, async |c| {
            let sys = c.system().await?;
            let (_, allowed) = c.reset_action(&sys).await?;
            Ok(allowed)
        })
        .await
    }

    pub async fn reset(&self, t: &BmcTarget, kind: ResetType) -> Result<(), BmcError> {
        self.with_conn(t, async |c| {
            let sys = c.system().await?;
            let (target, allowed) = c.reset_action(&sys).await?;
            if !allowed.contains(&kind) {
                return Err(BmcError::UnsupportedReset {
                    host: c.t.host.clone(),
                    bmc: c.t.bmc_label(),
                    kind,
                    allowed,
                });
            }
            let body = json!({ "ResetType": kind.as_str() });
            tracing::info!(host = %c.t.host, url = %target, reset = %kind, "Redfish reset");
            let r = c
                .call(Method::POST, &target, Some(&body), None, Idem::Unsafe)
                .await?;
            let r = c.ok(r)?;
            if r.status == StatusCode::ACCEPTED {
                c.follow_task(&r).await?;
            }
            Ok(())
        })
        .await
    }

    pub async fn set_boot_override(
        &self,
        t: &BmcTarget,
        source: BootSource,
    ) -> Result<OverrideMode, BmcError> {
        self.with_conn(t, async |c| {
            let sys = c.system().await?;
            let boot = sys.body.get("Boot").cloned().unwrap_or(Value::Null);
            if let Some(targets) =
                strings(&boot["BootSourceOverrideTarget@Redfish.AllowableValues"])
                && !targets.iter().any(|v| v == source.redfish_name())
            {
                return Err(BmcError::Unsupported {
                    host: c.t.host.clone(),
                    bmc: c.t.bmc_label(),
                    what: format!(
                        "boot from {} once: BootSourceOverrideTarget allows only {}",
                        source.redfish_name(),
                        targets.join(", ")
                    ),
                });
            }
            let enabled = strings(&boot["BootSourceOverrideEnabled@Redfish.AllowableValues"]);
            let mut mode = c.q.first_mode(source, enabled.as_deref());
            let mut r = c.patch_system(&sys, &c.q.boot_patch(source, mode)).await?;
            if mode == OverrideMode::Once && r.status == StatusCode::BAD_REQUEST {
                // The BMC refuses Once for this target: Continuous, cleared after the boot.
                tracing::info!(
                    host = %c.t.host,
                    messages = ?messages(&r.body),
                    "BMC refused a one-time boot override; using Continuous"
                );
                mode = OverrideMode::Continuous;
                let fresh = c.system_at(&sys.url).await?;
                r = c
                    .patch_system(&fresh, &c.q.boot_patch(source, mode))
                    .await?;
            }
            let r = c.ok(r)?;
            if r.status == StatusCode::ACCEPTED {
                c.follow_task(&r).await?;
            }
            let after = c.system_at(&sys.url).await?;
            applied_override(&after.body, source, mode).map_err(|e| BmcError::Protocol {
                host: c.t.host.clone(),
                url: after.url.to_string(),
                reason: e.to_string(),
            })
        })
        .await
    }

    pub async fn clear_boot_override(&self, t: &BmcTarget) -> Result<(), BmcError> {
        self.with_conn(t, async |c| {
            let sys = c.system().await?;
            let current = sys.body["Boot"]["BootSourceOverrideTarget"].as_str();
            let body = c.q.clear_patch(current);
            let mut r = c.patch_system(&sys, &body).await?;
            if r.status == StatusCode::BAD_REQUEST
                && body["Boot"].get("BootSourceOverrideTarget").is_none()
            {
                // Some services want a target with Disabled (sushy-emulator, some AMI
                // builds): "None", the schema's "boot normally", unless the BMC does not
                // list it; then the local disk, which is what a provisioned node boots.
                let mut with_none = body.clone();
                with_none["Boot"]["BootSourceOverrideTarget"] = json!(clear_target(&sys.body));
                let fresh = c.system_at(&sys.url).await?;
                r = c.patch_system(&fresh, &with_none).await?;
            }
            let r = c.ok(r)?;
            if r.status == StatusCode::ACCEPTED {
                c.follow_task(&r).await?;
            }
            let after = c.system_at(&sys.url).await?;
            still_overridden(&after.body).map_or(Ok(()), |reason| {
                Err(BmcError::Protocol {
                    host: c.t.host.clone(),
                    url: after.url.to_string(),
                    reason,
                })
            })
        })
        .await
    }
}

/// How requests authenticate.
enum Auth {
    /// Before login (the service root needs none).
    None,
    /// HTTP basic auth on every request (no SessionService, or it refused a session).
    Basic,
    /// A Redfish session; `location` is deleted at logout.
    Session {
        token: Secret,
        location: Option<Url>,
    },
}

/// Whether a request may be sent again after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idem {
    /// GET, DELETE, PATCH with absolute values: repeatable.
    Safe,
    /// POST of an action: only when it cannot have reached the BMC (connect error) or the
    /// BMC said it did not act (503).
    Unsafe,
}

/// A response, read whole (BMC responses are small).
struct Reply {
    method: Method,
    status: StatusCode,
    headers: HeaderMap,
    /// The final URL (after redirects).
    url: Url,
    body: Value,
    text: String,
}

/// One system resource as read.
struct System {
    url: Url,
    body: Value,
    etag: Option<String>,
}

/// One operation's connection to a BMC: the login and the helpers that need it.
struct Conn<'a> {
    t: &'a BmcTarget,
    settings: &'a BmcSettings,
    http: reqwest::Client,
    q: &'static Quirks,
    auth: Auth,
    /// The service root read at login (links to Systems, Sessions).
    root: Value,
}

impl Drop for Conn<'_> {
    /// A session left open (the operation was cancelled) is deleted in the background.
    fn drop(&mut self) {
        let Auth::Session {
            token,
            location: Some(url),
        } = std::mem::replace(&mut self.auth, Auth::None)
        else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let http = self.http.clone();
        let timeout = self.settings.timeout;
        handle.spawn(async move {
            let _ = http
                .delete(url)
                .header("X-Auth-Token", token.expose())
                .timeout(timeout)
                .send()
                .await;
        });
    }
}

impl Conn<'_> {
    fn url(&self, path: &str) -> Result<Url, BmcError> {
        self.t.endpoint.join(path).map_err(|e| BmcError::Protocol {
            host: self.t.host.clone(),
            url: self.t.bmc_label(),
            reason: format!("bad link {path:?}: {e}"),
        })
    }

    /// `url` if it is on the BMC's origin, else the refusal naming the BMC and the link.
    /// Every request passes here first (see [`Conn::call`]): a link a BMC (or whatever
    /// answers at its address) hands us, as an absolute `@odata.id`, a task monitor or
    /// session `Location`, can never carry the login or the session token elsewhere.
    fn on_bmc(&self, url: &Url) -> Result<(), BmcError> {
        if same_origin(url, &self.t.endpoint) {
            return Ok(());
        }
        metrics::counter!("bootgate_bmc_off_origin_refused_total").increment(1);
        tracing::warn!(host = %self.t.host, bmc = %self.t.bmc_label(), link = %url, "BMC link leaves the BMC: refused");
        Err(BmcError::OffBmc {
            host: self.t.host.clone(),
            bmc: self.t.bmc_label(),
            link: url.to_string(),
        })
    }

    /// Service root, then a session if the BMC offers one, else basic auth.
    async fn login(&mut self) -> Result<(), BmcError> {
        let root_url = self.url(SERVICE_ROOT)?;
        let mut root = self
            .call(Method::GET, &root_url, None, None, Idem::Safe)
            .await?;
        if root.status == StatusCode::UNAUTHORIZED {
            // Some services protect even the root; they all take basic auth there.
            self.auth = Auth::Basic;
            root = self
                .call(Method::GET, &root_url, None, None, Idem::Safe)
                .await?;
        }
        let root = self.ok(root)?;
        self.root = root.body;
        let sessions = sessions_link(&self.root);
        let Some(path) = sessions else {
            self.auth = Auth::Basic;
            return Ok(());
        };
        let url = self.url(&path)?;
        let body = json!({
            "UserName": self.t.credential.username,
            "Password": self.t.credential.password.expose(),
        });
        self.auth = Auth::None;
        let r = self
            .call(Method::POST, &url, Some(&body), None, Idem::Unsafe)
            .await?;
        let token = r
            .headers
            .get("X-Auth-Token")
            .and_then(|v| v.to_str().ok())
            .map(Secret::new);
        match (r.status, token) {
            (s, Some(token)) if s.is_success() => {
                let location = r
                    .headers
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .or_else(|| odata_id(&r.body).map(str::to_string))
                    .and_then(|l| r.url.join(&l).ok());
                // The token is sent to the session's Location at logout: only if that is
                // the BMC (else the session is left to time out on the BMC).
                if let Some(l) = &location {
                    self.on_bmc(l)?;
                }
                self.auth = Auth::Session { token, location };
                Ok(())
            }
            (StatusCode::UNAUTHORIZED, _) => Err(self.unauthorized(&r.url)),
            (s, _) => {
                tracing::debug!(host = %self.t.host, status = %s, "no Redfish session; using basic auth");
                self.auth = Auth::Basic;
                Ok(())
            }
        }
    }

    /// Deletes the session (best effort: it times out on the BMC anyway).
    async fn logout(&mut self) {
        if let Auth::Session {
            location: Some(url),
            ..
        } = &self.auth
        {
            let url = url.clone();
            let r = self
                .call(Method::DELETE, &url, None, None, Idem::Safe)
                .await;
            if let Err(e) = r {
                tracing::debug!(host = %self.t.host, error = %e, "Redfish logout failed");
            }
        }
        self.auth = Auth::None;
    }

    /// One request with retries (see [`Idem`]); any HTTP status is returned as a Reply.
    async fn call(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
        if_match: Option<&str>,
        idem: Idem,
    ) -> Result<Reply, BmcError> {
        self.on_bmc(url)?;
        let mut attempt = 0;
        loop {
            let retries_left = attempt < self.settings.retries;
            let resp = match self.request(&method, url, body, if_match).send().await {
                Ok(resp) => resp,
                Err(e) if e.is_timeout() => return Err(self.timed_out(url)),
                Err(e) if off_origin_redirect(&e).is_some() => {
                    let to = off_origin_redirect(&e)
                        .map(Url::to_string)
                        .unwrap_or_default();
                    metrics::counter!("bootgate_bmc_off_origin_refused_total").increment(1);
                    tracing::warn!(host = %self.t.host, bmc = %self.t.bmc_label(), from = %url, link = %to, "BMC redirect leaves the BMC: refused");
                    return Err(BmcError::OffBmc {
                        host: self.t.host.clone(),
                        bmc: self.t.bmc_label(),
                        link: to,
                    });
                }
                Err(e) => {
                    let retry = retries_left && (idem == Idem::Safe || e.is_connect());
                    if let Some(reason) = tls_failure(&e) {
                        return Err(BmcError::Tls {
                            host: self.t.host.clone(),
                            bmc: self.t.bmc_label(),
                            reason,
                        });
                    }
                    if !retry {
                        return Err(self.connect_failed(url, &e));
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
            };
            let status = resp.status();
            if status == StatusCode::SERVICE_UNAVAILABLE && retries_left {
                let wait = retry_after(resp.headers()).unwrap_or(self.q.busy_backoff);
                tracing::debug!(host = %self.t.host, url = %url, ?wait, "BMC busy (503); retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
                continue;
            }
            let headers = resp.headers().clone();
            let final_url = resp.url().clone();
            match resp.text().await {
                Ok(text) => {
                    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                    return Ok(Reply {
                        method: method.clone(),
                        status,
                        headers,
                        url: final_url,
                        body,
                        text,
                    });
                }
                Err(e) if e.is_timeout() => return Err(self.timed_out(url)),
                // The body broke off: a safe request is sent again.
                Err(_) if retries_left && idem == Idem::Safe => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(self.connect_failed(url, &e)),
            }
        }
    }

    /// The request with this connection's authentication, JSON body and `If-Match`.
    fn request(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .timeout(self.settings.timeout)
            .header("Accept", "application/json")
            .header("OData-Version", "4.0");
        req = match &self.auth {
            Auth::None => req,
            Auth::Basic => req.basic_auth(
                &self.t.credential.username,
                Some(self.t.credential.password.expose()),
            ),
            Auth::Session { token, .. } => req.header("X-Auth-Token", token.expose()),
        };
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(tag) = if_match {
            req = req.header("If-Match", tag);
        }
        req
    }

    fn timed_out(&self, url: &Url) -> BmcError {
        BmcError::Timeout {
            host: self.t.host.clone(),
            bmc: self.t.bmc_label(),
            url: url.to_string(),
            deadline: self.settings.timeout,
        }
    }

    fn connect_failed(&self, url: &Url, e: &reqwest::Error) -> BmcError {
        BmcError::Connect {
            host: self.t.host.clone(),
            bmc: self.t.bmc_label(),
            url: url.to_string(),
            reason: self.redact(&chain(e)),
        }
    }

    /// The reply if 2xx, else the error it means.
    fn ok(&self, r: Reply) -> Result<Reply, BmcError> {
        if r.status.is_success() {
            return Ok(r);
        }
        if r.status == StatusCode::UNAUTHORIZED {
            return Err(self.unauthorized(&r.url));
        }
        Err(BmcError::Http {
            host: self.t.host.clone(),
            method: r.method.to_string(),
            url: r.url.to_string(),
            status: r.status.as_u16(),
            messages: messages(&r.body)
                .into_iter()
                .map(|m| self.redact(&m))
                .collect(),
            body: self.redact(&excerpt(&r.text)),
        })
    }

    fn unauthorized(&self, url: &Url) -> BmcError {
        BmcError::Unauthorized {
            host: self.t.host.clone(),
            bmc: self.t.bmc_label(),
            url: url.to_string(),
            user: self.t.credential.username.clone(),
        }
    }

    /// Belt and braces: a BMC echoing the request must not put the password in a message.
    fn redact(&self, s: &str) -> String {
        let pw = self.t.credential.password.expose();
        if pw.len() >= 3 {
            s.replace(pw, "***")
        } else {
            s.to_string()
        }
    }

    async fn get(&self, url: &Url) -> Result<Reply, BmcError> {
        let r = self.call(Method::GET, url, None, None, Idem::Safe).await?;
        self.ok(r)
    }

    async fn system_at(&self, url: &Url) -> Result<System, BmcError> {
        let r = self.get(url).await?;
        Ok(System {
            etag: etag(&r.headers, &r.body),
            url: r.url,
            body: r.body,
        })
    }

    /// The system this target means: `system` by Id or Name, else the only one.
    async fn system(&self) -> Result<System, BmcError> {
        let systems_path = self.root["Systems"]["@odata.id"]
            .as_str()
            .unwrap_or("/redfish/v1/Systems")
            .to_string();
        let systems_url = self.url(&systems_path)?;
        if let Some(want) = &self.t.system {
            // Cheap path first: the Id is usually the last path segment (and some BMCs,
            // like sushy-emulator, redirect a Name there).
            let mut direct = systems_url.clone();
            if let Ok(mut segs) = direct.path_segments_mut() {
                segs.pop_if_empty().push(want);
            }
            let r = self
                .call(Method::GET, &direct, None, None, Idem::Safe)
                .await?;
            if r.status.is_success() && names_system(&r.body, want) {
                return Ok(System {
                    etag: etag(&r.headers, &r.body),
                    url: r.url,
                    body: r.body,
                });
            }
            if r.status == StatusCode::UNAUTHORIZED {
                return Err(self.unauthorized(&r.url));
            }
        }
        let coll = self.get(&systems_url).await?;
        let members = members(&coll.body);
        match &self.t.system {
            None => match members.as_slice() {
                [one] => self.system_at(&self.url(one)?).await,
                [] => Err(BmcError::Protocol {
                    host: self.t.host.clone(),
                    url: coll.url.to_string(),
                    reason: "the Systems collection is empty".to_string(),
                }),
                many => Err(BmcError::AmbiguousSystem {
                    host: self.t.host.clone(),
                    url: coll.url.to_string(),
                    systems: many.iter().map(|m| last_segment(m).to_string()).collect(),
                }),
            },
            Some(want) => {
                let mut seen = Vec::with_capacity(members.len());
                for m in &members {
                    let sys = self.system_at(&self.url(m)?).await?;
                    if names_system(&sys.body, want) {
                        return Ok(sys);
                    }
                    seen.push(describe_system(&sys.body, m));
                }
                Err(BmcError::NoSuchSystem {
                    host: self.t.host.clone(),
                    url: coll.url.to_string(),
                    wanted: want.clone(),
                    systems: seen,
                })
            }
        }
    }

    /// The reset action's target URL and the reset types to offer.
    async fn reset_action(&self, sys: &System) -> Result<(Url, Vec<ResetType>), BmcError> {
        let Some(action) = parse_reset_action(&sys.body) else {
            return Err(BmcError::Unsupported {
                host: self.t.host.clone(),
                bmc: self.t.bmc_label(),
                what: format!(
                    "reset: system {} has no #ComputerSystem.Reset action",
                    sys.url
                ),
            });
        };
        let mut advertised = action.allowed;
        if advertised.is_none()
            && let Some(info) = &action.action_info
        {
            let r = self
                .get(&sys.url.join(info).map_err(|e| BmcError::Protocol {
                    host: self.t.host.clone(),
                    url: sys.url.to_string(),
                    reason: format!("bad @Redfish.ActionInfo {info:?}: {e}"),
                })?)
                .await?;
            advertised = action_info_reset_types(&r.body);
        }
        let target = sys
            .url
            .join(&action.target)
            .map_err(|e| BmcError::Protocol {
                host: self.t.host.clone(),
                url: sys.url.to_string(),
                reason: format!("bad reset target {:?}: {e}", action.target),
            })?;
        Ok((target, self.q.reset_types(advertised)))
    }

    /// PATCHes the system, with If-Match where the vendor needs it; a 428 (precondition
    /// required) or 412 (stale ETag) gets one more try with a fresh ETag.
    async fn patch_system(&self, sys: &System, body: &Value) -> Result<Reply, BmcError> {
        let mut tag = if self.q.patch_if_match {
            sys.etag.clone()
        } else {
            None
        };
        let mut retried = false;
        loop {
            let r = self
                .call(
                    Method::PATCH,
                    &sys.url,
                    Some(body),
                    tag.as_deref(),
                    Idem::Safe,
                )
                .await?;
            let precondition = r.status == StatusCode::PRECONDITION_REQUIRED
                || r.status == StatusCode::PRECONDITION_FAILED;
            if !precondition || retried {
                return Ok(r);
            }
            retried = true;
            let fresh = self.system_at(&sys.url).await?;
            tag = Some(fresh.etag.unwrap_or_else(|| "*".to_string()));
        }
    }

    /// Polls a 202's task monitor until the task is done or `task_timeout` passes.
    async fn follow_task(&self, accepted: &Reply) -> Result<(), BmcError> {
        let Some(loc) = accepted
            .headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| odata_id(&accepted.body).map(str::to_string))
        else {
            // 202 without a monitor: accepted, nothing to follow.
            return Ok(());
        };
        let url = accepted.url.join(&loc).map_err(|e| BmcError::Protocol {
            host: self.t.host.clone(),
            url: accepted.url.to_string(),
            reason: format!("bad task monitor {loc:?}: {e}"),
        })?;
        let deadline = tokio::time::Instant::now() + self.settings.task_timeout;
        loop {
            let r = self.call(Method::GET, &url, None, None, Idem::Safe).await?;
            let wait = retry_after(&r.headers).unwrap_or(TASK_POLL);
            match r.status {
                StatusCode::ACCEPTED => {}
                // A monitor that is gone was deleted on completion (DSP0266 §13.2).
                StatusCode::NOT_FOUND | StatusCode::GONE | StatusCode::NO_CONTENT => {
                    return Ok(());
                }
                s if s.is_success() => match task_outcome(&r.body) {
                    TaskOutcome::Running => {}
                    TaskOutcome::Done => return Ok(()),
                    TaskOutcome::Failed { state, messages } => {
                        return Err(BmcError::TaskFailed {
                            host: self.t.host.clone(),
                            url: url.to_string(),
                            state,
                            messages,
                        });
                    }
                },
                _ => {
                    self.ok(r)?;
                }
            }
            if tokio::time::Instant::now() + wait > deadline {
                return Err(BmcError::TaskTimeout {
                    host: self.t.host.clone(),
                    url: url.to_string(),
                    deadline: self.settings.task_timeout,
                });
            }
            tokio::time::sleep(wait).await;
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.min(5)).min(Duration::from_secs(4))
}

/// `Retry-After` in seconds (the HTTP-date form is not used by BMCs), capped.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v: &HeaderValue = h.get(reqwest::header::RETRY_AFTER)?;
    let secs: u64 = v.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// An error and its causes, `a: b: c` (reqwest's own Display hides the cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}

/// A certificate problem in a reqwest error's causes, explained for the operator.
fn tls_failure(e: &reqwest::Error) -> Option<String> {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        let rustls_err = s.downcast_ref::<rustls::Error>().or_else(|| {
            s.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(r) = rustls_err {
            return Some(match r {
                rustls::Error::InvalidCertificate(why) => format!(
                    "certificate not trusted ({why:?}); give the BMC's CA as bmc.ca_file or [site] bmc_ca_file, or set insecure = true for this BMC"
                ),
                other => other.to_string(),
            });
        }
        src = s.source();
    }
    // The rustls error can sit behind a boxed connector error that hides its type; its
    // text is stable ("invalid peer certificate: UnknownIssuer").
    let text = chain(e);
    text.find("invalid peer certificate").map(|i| {
        format!(
            "certificate not trusted ({}); give the BMC's CA as bmc.ca_file or [site] bmc_ca_file, or set insecure = true for this BMC",
            &text[i..]
        )
    })
}

fn excerpt(text: &str) -> String {
    let t = text.trim();
    if t.len() <= EXCERPT {
        return t.to_string();
    }
    let mut end = EXCERPT;
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &t[..end])
}

// ---------------------------------------------------------------------------------------
// Pure parsing of Redfish JSON
// ---------------------------------------------------------------------------------------

pub(crate) fn odata_id(v: &Value) -> Option<&str> {
    v.get("@odata.id").and_then(Value::as_str)
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    })
}

/// `Links.Sessions` of the service root, or the SessionService's standard path when only
/// that is linked; None when the service has no sessions.
pub fn sessions_link(root: &Value) -> Option<String> {
    if let Some(s) = root["Links"]["Sessions"]["@odata.id"].as_str() {
        return Some(s.to_string());
    }
    root.get("SessionService")
        .and_then(odata_id)
        .map(|s| format!("{}/Sessions", s.trim_end_matches('/')))
}

/// Member links of a collection.
pub fn members(coll: &Value) -> Vec<String> {
    coll["Members"]
        .as_array()
        .map(|a| a.iter().filter_map(odata_id).map(str::to_string).collect())
        .unwrap_or_default()
}

fn last_segment(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
}

fn names_system(sys: &Value, want: &str) -> bool {
    sys["Id"].as_str() == Some(want) || sys["Name"].as_str() == Some(want)
}

fn describe_system(sys: &Value, link: &str) -> String {
    let id = sys["Id"].as_str().unwrap_or_else(|| last_segment(link));
    match sys["Name"].as_str() {
        Some(name) if name != id => format!("{id} ({name})"),
        _ => id.to_string(),
    }
}

/// The `#ComputerSystem.Reset` action of a system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetAction {
    pub target: String,
    /// `ResetType@Redfish.AllowableValues`, when given inline.
    pub allowed: Option<Vec<ResetType>>,
    /// `@Redfish.ActionInfo`, where the allowable values are otherwise.
    pub action_info: Option<String>,
}

pub fn parse_reset_action(system: &Value) -> Option<ResetAction> {
    let a = &system["Actions"]["#ComputerSystem.Reset"];
    let target = a["target"].as_str()?.to_string();
    Some(ResetAction {
        target,
        allowed: a
            .get("ResetType@Redfish.AllowableValues")
            .map(reset_types_of),
        action_info: a["@Redfish.ActionInfo"].as_str().map(str::to_string),
    })
}

/// Known ResetType strings in a JSON array (OEM and other values like `ForceOn` skipped).
fn reset_types_of(v: &Value) -> Vec<ResetType> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .filter_map(|s| s.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// ActionInfo: `Parameters[Name = ResetType].AllowableValues`.
pub fn action_info_reset_types(info: &Value) -> Option<Vec<ResetType>> {
    info["Parameters"]
        .as_array()?
        .iter()
        .find(|p| p["Name"].as_str() == Some("ResetType"))
        .map(|p| reset_types_of(&p["AllowableValues"]))
}

/// The messages of a Redfish error body: `error.message` and each
/// `@Message.ExtendedInfo[].Message` (also at the top level, as in a Task's `Messages`).
pub fn messages(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |v: &Value| {
        if let Some(list) = v.as_array() {
            for m in list {
                if let Some(text) = m["Message"].as_str() {
                    let text = match m["MessageId"].as_str() {
                        Some(id) => format!("{text} [{id}]"),
                        None => text.to_string(),
                    };
                    if !out.contains(&text) {
                        out.push(text);
                    }
                }
            }
        }
    };
    push(&body["error"]["@Message.ExtendedInfo"]);
    push(&body["@Message.ExtendedInfo"]);
    push(&body["Messages"]);
    if out.is_empty()
        && let Some(m) = body["error"]["message"].as_str()
    {
        out.push(m.to_string());
    }
    out
}

/// The resource's ETag: the header, else `@odata.etag`.
pub fn etag(headers: &HeaderMap, body: &Value) -> Option<String> {
    headers
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| body["@odata.etag"].as_str().map(str::to_string))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    Running,
    Done,
    Failed {
        state: String,
        messages: Vec<String>,
    },
}

/// A task monitor's 200 body: a Task resource (TaskState, Messages) or the action's result.
pub fn task_outcome(body: &Value) -> TaskOutcome {
    let Some(state) = body["TaskState"].as_str() else {
        return TaskOutcome::Done;
    };
    match state {
        "New" | "Starting" | "Running" | "Pending" | "Stopping" | "Suspended" | "Service" => {
            TaskOutcome::Running
        }
        "Completed" if body["TaskStatus"].as_str() != Some("Critical") => TaskOutcome::Done,
        other => TaskOutcome::Failed {
            state: other.to_string(),
            messages: messages(body),
        },
    }
}

/// Why the boot override the BMC reports is not the one asked for (`to`: the boot source
/// asked for).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideMismatch {
    #[error(
        "accepted the boot override to {} but reports BootSourceOverrideTarget {target:?}",
        .to.redfish_name()
    )]
    Target { to: BootSource, target: String },
    #[error(
        "accepted the boot override to {} ({}) but reports BootSourceOverrideEnabled {enabled:?}",
        .to.redfish_name(),
        .asked.redfish_name()
    )]
    Enabled {
        to: BootSource,
        asked: OverrideMode,
        enabled: String,
    },
}

/// What the BMC reports after the override PATCH: the mode in effect, or why it is not
/// what was asked.
pub fn applied_override(
    system: &Value,
    source: BootSource,
    asked: OverrideMode,
) -> Result<OverrideMode, OverrideMismatch> {
    let boot = &system["Boot"];
    let target = boot["BootSourceOverrideTarget"].as_str();
    if let Some(t) = target
        && t != source.redfish_name()
    {
        return Err(OverrideMismatch::Target {
            to: source,
            target: t.to_string(),
        });
    }
    match boot["BootSourceOverrideEnabled"].as_str() {
        Some("Once") => Ok(OverrideMode::Once),
        Some("Continuous") => Ok(OverrideMode::Continuous),
        None => Ok(asked),
        Some(other) => Err(OverrideMismatch::Enabled {
            to: source,
            asked,
            enabled: other.to_string(),
        }),
    }
}

/// The target to send next to `Disabled` when the BMC wants one.
pub fn clear_target(system: &Value) -> &'static str {
    match strings(&system["Boot"]["BootSourceOverrideTarget@Redfish.AllowableValues"]) {
        Some(list) if !list.iter().any(|v| v == "None") && list.iter().any(|v| v == "Hdd") => "Hdd",
        _ => "None",
    }
}

/// Why a system still boots from the network after a clear, if it does: an enabled
/// override whose target is one bootgate sets.
pub fn still_overridden(system: &Value) -> Option<String> {
    let boot = &system["Boot"];
    let enabled = boot["BootSourceOverrideEnabled"].as_str()?;
    let target = boot["BootSourceOverrideTarget"].as_str()?;
    let ours = [BootSource::Pxe, BootSource::UefiHttp]
        .iter()
        .any(|s| s.redfish_name() == target);
    (enabled != "Disabled" && ours).then(|| {
        format!("accepted clearing the boot override but still reports {target} ({enabled})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6454 §4 origins: scheme, host and port (a default port written out is the same).
    #[test]
    fn origins() {
        let u = |s: &str| Url::parse(s).unwrap();
        let bmc = u("https://10.0.0.5/");
        assert!(same_origin(
            &bmc,
            &u("https://10.0.0.5/redfish/v1/Systems/1")
        ));
        assert!(same_origin(&bmc, &u("https://10.0.0.5:443/redfish/v1/")));
        assert!(!same_origin(&bmc, &u("http://10.0.0.5/redfish/v1/")));
        assert!(!same_origin(&bmc, &u("https://10.0.0.6/redfish/v1/")));
        assert!(!same_origin(&bmc, &u("https://10.0.0.5:8443/redfish/v1/")));
        assert!(!same_origin(&bmc, &u("https://evil.example/redfish/v1/")));
        // An absolute `@odata.id` joined onto the BMC's URL replaces it entirely.
        assert!(!same_origin(
            &bmc,
            &bmc.join("//10.0.0.6/redfish/v1/").unwrap()
        ));
        assert!(same_origin(&bmc, &bmc.join("/redfish/v1/Systems").unwrap()));
    }

    #[test]
    fn extended_info_messages() {
        let body = json!({"error": {"code": "Base.1.8.GeneralError", "message": "A general error has occurred.",
        "@Message.ExtendedInfo": [
            {"MessageId": "Base.1.8.PropertyValueNotInList", "Message": "The value Once for the property BootSourceOverrideEnabled is not in the list of acceptable values."},
            {"MessageId": "Base.1.8.PropertyValueNotInList", "Message": "The value Once for the property BootSourceOverrideEnabled is not in the list of acceptable values."}
        ]}});
        let m = messages(&body);
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("[Base.1.8.PropertyValueNotInList]"));
        assert_eq!(
            messages(&json!({"error": {"message": "nope"}})),
            ["nope".to_string()]
        );
    }

    #[test]
    fn reset_action_inline_and_action_info() {
        let sys = json!({"Actions": {"#ComputerSystem.Reset": {
            "target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
            "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "ForceOn", "PowerCycle"]}}});
        let a = parse_reset_action(&sys).unwrap();
        assert_eq!(
            a.allowed,
            Some(vec![
                ResetType::On,
                ResetType::ForceOff,
                ResetType::PowerCycle
            ])
        );
        let sys = json!({"Actions": {"#ComputerSystem.Reset": {
            "target": "/x", "@Redfish.ActionInfo": "/redfish/v1/Systems/1/ResetActionInfo"}}});
        let a = parse_reset_action(&sys).unwrap();
        assert_eq!(a.allowed, None);
        assert_eq!(
            a.action_info.as_deref(),
            Some("/redfish/v1/Systems/1/ResetActionInfo")
        );
        let info = json!({"Parameters": [{"Name": "ResetType", "Required": true,
            "AllowableValues": ["On", "GracefulShutdown"]}]});
        assert_eq!(
            action_info_reset_types(&info),
            Some(vec![ResetType::On, ResetType::GracefulShutdown])
        );
        assert_eq!(parse_reset_action(&json!({})), None);
    }

    #[test]
    fn task_states() {
        assert_eq!(
            task_outcome(&json!({"TaskState": "Running"})),
            TaskOutcome::Running
        );
        assert_eq!(
            task_outcome(&json!({"TaskState": "Completed", "TaskStatus": "OK"})),
            TaskOutcome::Done
        );
        assert_eq!(task_outcome(&json!({})), TaskOutcome::Done);
        let failed = task_outcome(&json!({"TaskState": "Exception",
            "Messages": [{"Message": "Host did not power off."}]}));
        assert_eq!(
            failed,
            TaskOutcome::Failed {
                state: "Exception".into(),
                messages: vec!["Host did not power off.".into()]
            }
        );
    }

    #[test]
    fn override_read_back() {
        let sys = |t: &str, e: &str| json!({"Boot": {"BootSourceOverrideTarget": t, "BootSourceOverrideEnabled": e}});
        assert_eq!(
            applied_override(&sys("Pxe", "Once"), BootSource::Pxe, OverrideMode::Once),
            Ok(OverrideMode::Once)
        );
        assert_eq!(
            applied_override(
                &sys("Pxe", "Continuous"),
                BootSource::Pxe,
                OverrideMode::Once
            ),
            Ok(OverrideMode::Continuous)
        );
        assert!(
            applied_override(&sys("Hdd", "Once"), BootSource::Pxe, OverrideMode::Once).is_err()
        );
        assert!(
            applied_override(&sys("Pxe", "Disabled"), BootSource::Pxe, OverrideMode::Once).is_err()
        );
    }

    #[test]
    fn session_links() {
        assert_eq!(
            sessions_link(
                &json!({"Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}})
            ),
            Some("/redfish/v1/SessionService/Sessions".to_string())
        );
        assert_eq!(
            sessions_link(&json!({"SessionService": {"@odata.id": "/redfish/v1/SessionService/"}})),
            Some("/redfish/v1/SessionService/Sessions".to_string())
        );
        assert_eq!(sessions_link(&json!({"Systems": {}})), None);
    }
}
