//! Limits of the listeners against the real daemon in a namespace, with real clients: 2,000
//! idle HTTP connections leave room for new clients and are closed after `idle_timeout`; a
//! slowloris is cut by `header_timeout`; one source cannot hold more than its connections
//! while another is served; bodies over `max_body_kb` get 413; one TFTP source cannot take
//! more than its sessions while another downloads; the API moves to TLS (curl and the CLI
//! with the test's CA) while boot paths stay plain.
//!
//! Clients sit in the rack namespace on eth0 with two addresses, 10.250.0.2 ("A", the
//! greedy one) and 10.250.0.3 ("B"); sockets are bound to one of them before connecting.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const A: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 3);
const GW: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const MAC: &str = "52:54:00:d7:8e:1d";

/// A lab site whose config has `http` lines added under `[http]` and `tail` appended.
fn site_with(http: &str, tail: &str) -> Site {
    let site = Site::from_inventory("lab");
    let cfg = std::fs::read_to_string(site.config()).unwrap();
    let cfg = cfg.replacen("[http]\n", &format!("[http]\n{http}\n"), 1) + tail;
    std::fs::write(site.config(), cfg).unwrap();
    site
}

/// The lab with both client addresses on the rack's eth0.
fn lab() -> Lab {
    let lab = Lab::new();
    for ip in [A, B] {
        lab.rack
            .ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    }
    lab
}

/// TCP connections from `src` to the daemon's HTTP port, made inside the rack namespace.
fn connect_many(lab: &Lab, src: Ipv4Addr, port: u16, n: usize) -> Vec<TcpStream> {
    in_netns(&lab.rack, move || {
        (0..n)
            .map(|i| {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .unwrap();
                s.bind(&SocketAddr::from(SocketAddrV4::new(src, 0)).into())
                    .unwrap();
                s.connect(&SocketAddr::from(SocketAddrV4::new(GW, port)).into())
                    .unwrap_or_else(|e| panic!("connection {i} from {src}: {e}"));
                TcpStream::from(s)
            })
            .collect()
    })
}

/// One keep-alive request on `s`; the response's status (the body is read and dropped).
fn get_keep_alive(s: &mut TcpStream, path: &str) -> u16 {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {GW}\r\n\r\n").as_bytes())
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).expect("a response");
        assert!(n > 0, "closed before the response");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if body.len() >= len {
                return head.split(' ').nth(1).unwrap().parse().unwrap();
            }
        }
    }
}

/// Whether the daemon closed `s` within `within` (EOF or reset; data is an error).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within.max(Duration::from_millis(1))))
        .unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(n) => panic!(
            "unexpected {n} bytes: {:?}",
            String::from_utf8_lossy(&b[..n])
        ),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => true,
        Err(_) => false,
    }
}

/// curl from `src` in the rack namespace: (status, body, seconds), or None when the
/// connection failed (refused, closed, reset).
fn curl_from(lab: &Lab, src: Ipv4Addr, args: &[&str]) -> Option<(u16, String, f64)> {
    let out = lab
        .rack
        .cmd("curl")
        .args(["-s", "-m", "5", "--interface", &src.to_string()])
        .args(["-w", "\n%{http_code} %{time_total}"])
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let text = stdout(&out);
    let (body, tail) = text.rsplit_once('\n')?;
    let (code, secs) = tail.split_once(' ')?;
    Some((code.parse().ok()?, body.to_string(), secs.parse().ok()?))
}

/// A counter or gauge from the daemon's /metrics (0 when absent).
fn metric(lab: &Lab, series: &str) -> f64 {
    let (_, text) = curl(&lab.gw, &format!("http://{GW_IP}:{HTTP_PORT}/metrics")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn two_thousand_idle_connections_leave_room_and_are_closed_after_the_idle_timeout() {
    require_root!();
    require_peer!("curl", "apt-get install curl (scripts/test.sh)");
    let lab = lab();
    // All 2,000 from A: the per-source cap is lifted so the global path is what is tested.
    let site = site_with(
        "idle_timeout = \"15s\"\nheader_timeout = \"60s\"\nmax_connections_per_source = 4000",
        "",
    );
    let _daemon = Daemon::start(&lab, &site);

    let mut idle = connect_many(&lab, A, HTTP_PORT, 2000);
    for s in &mut idle {
        assert_eq!(get_keep_alive(s, "/no-such-page"), 404);
    }
    let opened = Instant::now();
    let open = metric(&lab, "bootgate_http_connections");
    assert!(
        open >= 2000.0,
        "{open} connections open, expected the 2,000 idle ones"
    );

    let url = |p: &str| format!("http://{GW_IP}:{HTTP_PORT}{p}");
    let (code, body, secs) = curl_from(&lab, B, &[&url("/healthz")]).expect("/healthz answers");
    assert_eq!(code, 200, "{body}");
    assert!(
        secs < 1.0,
        "/healthz took {secs} s with 2,000 idle connections open"
    );
    let (code, body, secs) =
        curl_from(&lab, B, &[&url(&format!("/ipxe/mac/{MAC}"))]).expect("the script answers");
    assert!((200..500).contains(&code), "{code}: {body}");
    assert!(
        secs < 1.0,
        "the script took {secs} s with 2,000 idle connections open"
    );

    // Each idle one is closed by the idle rule (the header timeout is 60 s).
    let deadline = opened + Duration::from_secs(15 + 15);
    for (i, s) in idle.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            closed_within(s, left),
            "idle connection {i} still open after 30 s"
        );
    }
    let hits = metric(
        &lab,
        "bootgate_http_limit_hits_total{limit=\"idle_timeout\"}",
    );
    assert!(hits >= 2000.0, "idle_timeout hits: {hits}");
}

#[test]
fn a_slowloris_is_cut_after_the_header_timeout() {
    require_root!();
    require_peer!("curl", "apt-get install curl (scripts/test.sh)");
    let lab = lab();
    // Bytes keep moving, so only the header timer (2 s) can cut it: idle and request are 60 s.
    let site = site_with(
        "header_timeout = \"2s\"\nidle_timeout = \"60s\"\nrequest_timeout = \"60s\"",
        "",
    );
    let _daemon = Daemon::start(&lab, &site);
    let mut s = connect_many(&lab, A, HTTP_PORT, 1).pop().unwrap();
    let t0 = Instant::now();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let cut = loop {
        if closed_within(&mut s, Duration::from_millis(300)) {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(20) || s.write_all(b"X-Slow: 1\r\n").is_err() {
            break t0.elapsed() <= Duration::from_secs(20);
        }
    };
    assert!(cut, "a header trickled for 20 s was never cut");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "cut after {:?}, header_timeout is 2 s",
        t0.elapsed()
    );
    let hits = metric(
        &lab,
        "bootgate_http_limit_hits_total{limit=\"header_timeout\"}",
    );
    assert!(hits >= 1.0, "header_timeout hits: {hits}");
}

#[test]
fn one_source_is_capped_while_another_is_served() {
    require_root!();
    require_peer!("curl", "apt-get install curl (scripts/test.sh)");
    let lab = lab();
    let site = site_with("max_connections_per_source = 4\nidle_timeout = \"60s\"", "");
    let _daemon = Daemon::start(&lab, &site);
    let url = format!("http://{GW_IP}:{HTTP_PORT}/healthz");

    let mut held = connect_many(&lab, A, HTTP_PORT, 4);
    let mut excess = connect_many(&lab, A, HTTP_PORT, 1).pop().unwrap();
    assert!(
        closed_within(&mut excess, Duration::from_secs(5)),
        "a fifth connection from A was not closed"
    );
    for s in &mut held {
        assert!(
            !closed_within(s, Duration::from_millis(200)),
            "A's first four stay open"
        );
    }
    assert_eq!(
        curl_from(&lab, B, &[&url]).map(|r| r.0),
        Some(200),
        "B is served"
    );
    assert_eq!(curl_from(&lab, A, &[&url]), None, "A is over its cap");
    drop(held);
    let again = wait_for(Duration::from_secs(5), || curl_from(&lab, A, &[&url]));
    assert_eq!(
        again.map(|r| r.0),
        Some(200),
        "A is served once it closed its four"
    );
    let hits = metric(
        &lab,
        "bootgate_http_limit_hits_total{limit=\"max_connections_per_source\"}",
    );
    assert!(hits >= 2.0, "max_connections_per_source hits: {hits}");
}

#[test]
fn at_max_connections_the_listener_stops_accepting_until_one_closes() {
    require_root!();
    require_peer!("curl", "apt-get install curl (scripts/test.sh)");
    let lab = lab();
    let site = site_with(
        "max_connections = 16\nidle_timeout = \"60s\"\nheader_timeout = \"60s\"",
        "",
    );
    let _daemon = Daemon::start(&lab, &site);
    let url = format!("http://{GW_IP}:{HTTP_PORT}/healthz");
    let mut held = connect_many(&lab, A, HTTP_PORT, 16);
    // Not accepted (waits in the listen queue), so no answer within curl's 2 s.
    assert_eq!(
        curl_from(&lab, B, &["-m", "2", &url]),
        None,
        "served over the cap"
    );
    for s in &mut held {
        assert!(
            !closed_within(s, Duration::from_millis(50)),
            "held ones stay open"
        );
    }
    held.truncate(12);
    let served = wait_for(Duration::from_secs(5), || curl_from(&lab, B, &[&url]));
    assert_eq!(served.map(|r| r.0), Some(200), "served once slots freed");
    let hits = metric(
        &lab,
        "bootgate_http_limit_hits_total{limit=\"max_connections\"}",
    );
    assert!(hits >= 1.0, "max_connections hits: {hits}");
}

#[test]
fn a_body_over_the_limit_is_413() {
    require_root!();
    require_peer!("curl", "apt-get install curl (scripts/test.sh)");
    let lab = lab();
    let site = site_with("max_body_kb = 4", "");
    let _daemon = Daemon::start(&lab, &site);
    let big = site.dir.path().join("big.json");
    std::fs::write(
        &big,
        format!(
            "{{\"event\":\"installed\",\"pad\":\"{}\"}}",
            "x".repeat(8192)
        ),
    )
    .unwrap();
    let url = format!("http://{GW_IP}:{HTTP_PORT}/api/v1/hosts/{MAC}/events");
    let data = format!("@{}", big.display());
    let json = [
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &data,
    ];
    let declared = curl_from(&lab, A, &[&json[..], &[url.as_str()][..]].concat()).unwrap();
    assert_eq!(declared.0, 413, "{}", declared.1);
    // Chunked: no Content-Length to refuse up front; the extractor stops at the bound.
    let chunked = [
        &json[..],
        &["-H", "Transfer-Encoding: chunked", url.as_str()][..],
    ]
    .concat();
    let chunked = curl_from(&lab, A, &chunked).unwrap();
    assert_eq!(chunked.0, 413, "{}", chunked.1);
    let small = curl_from(
        &lab,
        A,
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            "{\"event\":\"installed\"}",
            &url,
        ],
    )
    .unwrap();
    assert_ne!(small.0, 413, "a small body is not refused for its size");
    let hits = metric(&lab, "bootgate_http_limit_hits_total{limit=\"body_size\"}");
    assert!(hits >= 2.0, "body_size hits: {hits}");
}

fn rrq(file: &str) -> Vec<u8> {
    let mut p = vec![0, 1];
    p.extend_from_slice(file.as_bytes());
    p.push(0);
    p.extend_from_slice(b"octet\0");
    p
}

#[test]
fn one_tftp_source_gets_its_share_and_another_still_downloads() {
    require_root!();
    require_peer!("curl", "apt-get install curl (scripts/test.sh)");
    let lab = lab();
    let site = site_with("", "\n[tftp]\nmax_sessions_per_source = 4\n");
    let blob: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(site.boot_images().join("blob.bin"), &blob).unwrap();
    let _daemon = Daemon::start(&lab, &site);

    // A opens four transfers and never ACKs; its fifth RRQ is refused from port 69.
    let (hogs, refusal) = in_netns(&lab.rack, || {
        let hogs: Vec<UdpSocket> = (0..4)
            .map(|_| {
                let s = UdpSocket::bind(SocketAddrV4::new(A, 0)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                s.send_to(&rrq("blob.bin"), (GW, 69)).unwrap();
                let mut b = [0u8; 1600];
                let (n, _) = s.recv_from(&mut b).expect("DATA 1 for a hog");
                assert_eq!(&b[..2], &[0, 3], "DATA, got {:?}", &b[..n.min(8)]);
                s
            })
            .collect();
        let s = UdpSocket::bind(SocketAddrV4::new(A, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.send_to(&rrq("blob.bin"), (GW, 69)).unwrap();
        let mut b = [0u8; 1600];
        let (n, from) = s.recv_from(&mut b).expect("an answer to the fifth RRQ");
        (hogs, (b[..n].to_vec(), from))
    });
    let (packet, from) = refusal;
    assert_eq!(from.port(), 69, "refused from port 69");
    assert_eq!(&packet[..4], &[0, 5, 0, 0], "ERROR code 0, got {packet:?}");
    let msg = String::from_utf8_lossy(&packet[4..]);
    assert!(
        msg.contains("too many transfers from your address"),
        "{msg}"
    );

    // B downloads the whole file while A's four still hold their sessions.
    let out = site.dir.path().join("b.bin");
    let got = lab
        .rack
        .cmd("curl")
        .args(["-s", "-m", "30", "--interface", &B.to_string(), "-o"])
        .arg(&out)
        .arg(format!("tftp://{GW_IP}/blob.bin"))
        .status()
        .unwrap();
    assert!(got.success(), "curl tftp from B: {got}");
    assert!(std::fs::read(&out).unwrap() == blob, "B's copy differs");
    drop(hogs);
    let hits = metric(
        &lab,
        "bootgate_tftp_errors_total{reason=\"per_source_busy\"}",
    );
    assert!(hits >= 1.0, "per_source_busy: {hits}");
}

/// A CA and a leaf for 10.250.0.1 signed by it, plus a key that matches neither.
fn certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        sh(Command::new("openssl").current_dir(dir).args(args));
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let words = |s: String| s.split(' ').map(str::to_string).collect::<Vec<_>>();
    let run_words = |s: String| {
        let w = words(s);
        run(&w.iter().map(String::as_str).collect::<Vec<_>>());
    };
    run_words(format!(
        "req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=bootgate-test-CA"
    ));
    run_words(format!(
        "req {ec} -keyout key.pem -out leaf.csr -subj /CN=bootgate"
    ));
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:10.250.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        "other.key",
    ]);
}

#[test]
fn the_api_moves_to_tls_and_boot_paths_stay_plain() {
    require_root!();
    require_peer!("curl", "apt-get install curl (scripts/test.sh)");
    require_peer!("openssl", "apt-get install openssl (scripts/test.sh)");
    let lab = lab();
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let p = |f: &str| certs.path().join(f).display().to_string();
    let tls = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_listen = \"{GW_IP}:8443\"",
        p("cert.pem"),
        p("key.pem")
    );

    // A key that does not match the certificate: the config names the file and the field.
    let broken = site_with(&tls.replace("key.pem", "other.key"), "");
    let out = bootgate(&["check-config", "--config", path_str(&broken.config())]);
    let text = stdout(&out) + &stderr(&out);
    assert!(!out.status.success(), "a mismatched key passed: {text}");
    assert!(
        text.contains("tls_key") && text.contains("other.key"),
        "{text}"
    );
    assert!(text.contains("bootgate.toml"), "{text}");

    let site = site_with(&tls, "");
    std::fs::write(site.boot_images().join("small.bin"), b"plain bytes").unwrap();
    let _daemon = Daemon::start(&lab, &site);
    let https = |path: &str| format!("https://{GW_IP}:8443{path}");
    let http = |path: &str| format!("http://{GW_IP}:{HTTP_PORT}{path}");
    let ca = p("ca.pem");

    let (code, body, _) =
        curl_from(&lab, A, &["--cacert", &ca, &https("/api/v1/hosts")]).expect("the API over TLS");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"name\""), "{body}");
    assert_eq!(
        curl_from(&lab, A, &[&https("/api/v1/hosts")]),
        None,
        "without the CA curl refuses the certificate"
    );

    let (code, body, _) = curl_from(&lab, A, &[&http("/api/v1/hosts")]).unwrap();
    assert_eq!(code, 403, "plain API refused when TLS is on: {body}");
    assert!(body.contains("TLS"), "{body}");
    let (code, body, _) = curl_from(&lab, A, &[&http("/images/small.bin")]).unwrap();
    assert_eq!((code, body.as_str()), (200, "plain bytes"));
    let (code, body, _) = curl_from(&lab, A, &[&http(&format!("/ipxe/mac/{MAC}"))]).unwrap();
    assert!(!body.contains("served over TLS"), "{code}: {body}");
    let (code, body, _) = curl_from(&lab, A, &[&http("/healthz")]).unwrap();
    assert_eq!(code, 200, "{body}");
    let home = http(&format!("/api/v1/hosts/{MAC}/events"));
    let (code, body, _) = curl_from(
        &lab,
        A,
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            "{\"event\":\"installed\"}",
            &home,
        ],
    )
    .unwrap();
    assert!(
        !body.contains("served over TLS"),
        "phone-home stays plain: {code} {body}"
    );

    let cli = |extra: &[&str]| {
        lab.gw
            .cmd(bootgate_bin())
            .args(["--api", &https(""), "-o", "json"])
            .args(extra)
            .args(["hosts", "list"])
            .output()
            .unwrap()
    };
    let out = cli(&["--ca-cert", &ca]);
    assert!(
        out.status.success(),
        "bootgate --api https --ca-cert: {}",
        stderr(&out)
    );
    let hosts: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(!hosts.as_array().unwrap().is_empty(), "{hosts}");
    let out = cli(&[]);
    assert!(
        !out.status.success(),
        "an unknown CA must fail: {}",
        stdout(&out)
    );
}
