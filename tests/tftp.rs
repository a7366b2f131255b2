//! The TFTP server against real clients (tftp-hpa, atftp, curl) and a raw-socket client.
//!
//! Each test builds its own lab (namespaces `bgt<pid>-<n>-gw` / `-rack` from
//! tests/support): the server runs in-process on a thread that has entered the gw
//! namespace (its runtime's threads inherit it), clients run in the rack namespace with
//! eth0 = 10.250.0.2/24. Nothing touches the host's interfaces or routes; only processes
//! started here are killed, and the namespaces go away on drop.

mod support;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bootgate::tftp::packet::{self, ErrorCode, Mode, OP_RRQ, OP_WRQ, Packet, Request};
use bootgate::tftp::{Generated, TftpConfig, TftpServer, TransferRecord, TransferResult};
use support::{Lab, Netns, in_netns};
use tokio_util::sync::CancellationToken;

const GW: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const MIB: usize = 1024 * 1024;

/// Metrics from every server in this test binary (the recorder is process-global).
fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static H: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    H.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("install the metrics recorder")
    })
}

/// The server running in the gw namespace; stopped (and joined) on drop.
struct Server {
    cancel: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Netns, cfg: TftpConfig, generated: Option<Arc<dyn Generated>>) -> Server {
        let path = PathBuf::from("/var/run/netns").join(&ns.name);
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            // Worker threads are created here, after setns, so they live in gw too.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            match TftpServer::bind("gw0", GW, 69, cfg, generated) {
                Ok(server) => {
                    tx.send(Ok(())).unwrap();
                    rt.block_on(server.run(stop));
                }
                Err(e) => tx.send(Err(e.to_string())).unwrap(),
            }
        });
        rx.recv().unwrap().expect("bind the TFTP server");
        Server {
            cancel,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread panicked");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One test's world. Field order is drop order: server, then namespaces, then files.
struct Env {
    server: Server,
    lab: Lab,
    records: Arc<Mutex<Vec<TransferRecord>>>,
    /// The served root.
    root: PathBuf,
    /// Client outputs and files outside the root.
    scratch: PathBuf,
    _dir: tempfile::TempDir,
}

impl Env {
    fn new(tweak: impl FnOnce(&mut TftpConfig)) -> Env {
        Env::with_generated(tweak, None)
    }

    fn with_generated(
        tweak: impl FnOnce(&mut TftpConfig),
        generated: Option<Arc<dyn Generated>>,
    ) -> Env {
        metrics();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let scratch = dir.path().join("scratch");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        let lab = Lab::new();
        lab.rack
            .ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"]);
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = records.clone();
        let mut cfg = TftpConfig {
            root: root.clone(),
            on_done: Some(Arc::new(move |r| sink.lock().unwrap().push(r))),
            ..TftpConfig::default()
        };
        tweak(&mut cfg);
        let server = Server::start(&lab.gw, cfg, generated);
        Env {
            server,
            lab,
            records,
            root,
            scratch,
            _dir: dir,
        }
    }

    /// Runs a client in the rack namespace (killed after `secs`).
    fn client(&self, secs: u32, program: &str, args: &[&str]) -> Output {
        self.lab
            .rack
            .cmd("timeout")
            .arg(secs.to_string())
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"))
    }

    fn out(&self, name: &str) -> PathBuf {
        let p = self.scratch.join(name);
        let _ = std::fs::remove_file(&p);
        p
    }

    /// Waits until `n` requests have ended and returns all records.
    fn wait_records(&self, n: usize, timeout: Duration) -> Vec<TransferRecord> {
        let t0 = Instant::now();
        loop {
            let r = self.records.lock().unwrap().clone();
            if r.len() >= n || t0.elapsed() > timeout {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The record of the request for `file` (waiting for it to end).
    fn record(&self, file: &str) -> TransferRecord {
        let t0 = Instant::now();
        loop {
            if let Some(r) = self
                .records
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|r| r.file == file)
            {
                return r.clone();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no transfer record for {file:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn clear_records(&self) {
        self.records.lock().unwrap().clear();
    }
}

fn random_file(path: &Path, size: usize) {
    let mut src = std::fs::File::open("/dev/urandom").unwrap();
    let mut dst = std::fs::File::create(path).unwrap();
    let n = std::io::copy(&mut std::io::Read::take(&mut src, size as u64), &mut dst).unwrap();
    assert_eq!(n, size as u64);
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn show(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts that a client produced exactly the served file.
fn assert_same(served: &Path, got: &Path, what: &str, o: &Output) {
    assert!(got.exists(), "{what}: no output file\n{}", show(o));
    assert_eq!(
        std::fs::metadata(served).unwrap().len(),
        std::fs::metadata(got).unwrap().len(),
        "{what}: size differs\n{}",
        show(o)
    );
    assert_eq!(sha256(served), sha256(got), "{what}: content differs");
}

fn assert_ok(rec: &TransferRecord, size: usize, blksize: u16, windowsize: u16) {
    assert_eq!(rec.result, TransferResult::Ok, "{rec:?}");
    assert_eq!(rec.bytes, size as u64, "{rec:?}");
    assert_eq!(
        (rec.blksize, rec.windowsize),
        (blksize, windowsize),
        "{rec:?}"
    );
}

/// A TFTP client on a plain UDP socket (run inside the rack namespace).
struct Raw {
    sock: UdpSocket,
}

impl Raw {
    fn new() -> Raw {
        let sock = UdpSocket::bind(SocketAddrV4::new(CLIENT, 0)).expect("bind raw client");
        Raw { sock }
    }

    fn request(&self, op: u16, file: &str, options: &[(&str, &str)]) {
        let req = Request {
            filename: file.to_string(),
            mode: Mode::Octet,
            options: options
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        };
        self.send_to(&packet::encode_request(op, &req), SocketAddrV4::new(GW, 69));
    }

    fn send_to(&self, bytes: &[u8], to: SocketAddrV4) {
        self.sock.send_to(bytes, to).expect("send");
    }

    /// The next datagram within `t`.
    fn recv(&self, t: Duration) -> Option<(Vec<u8>, SocketAddrV4)> {
        self.sock.set_read_timeout(Some(t)).unwrap();
        let mut buf = vec![0u8; 70000];
        match self.sock.recv_from(&mut buf) {
            Ok((n, SocketAddr::V4(from))) => Some((buf[..n].to_vec(), from)),
            Ok(_) => None,
            Err(_) => None,
        }
    }

    fn expect(&self, t: Duration, what: &str) -> (Vec<u8>, SocketAddrV4) {
        self.recv(t)
            .unwrap_or_else(|| panic!("no reply within {t:?} ({what})"))
    }

    /// Every datagram arriving within `t` (until a quiet gap of `t`).
    fn drain(&self, t: Duration) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        while let Some((p, _)) = self.recv(t) {
            all.push(p);
        }
        all
    }
}

fn error_code(bytes: &[u8]) -> Option<u16> {
    match packet::parse(bytes) {
        Ok(Packet::Error { code, .. }) => Some(code),
        _ => None,
    }
}

fn data_block(bytes: &[u8]) -> Option<(u16, usize)> {
    match packet::parse(bytes) {
        Ok(Packet::Data { block, data }) => Some((block, data.len())),
        _ => None,
    }
}

fn oack(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    match packet::parse(bytes) {
        Ok(Packet::Oack { options }) => Some(options),
        _ => None,
    }
}

#[test]
fn rfc1350_tftp_hpa_octet_and_netascii() {
    let env = Env::new(|_| {});
    random_file(&env.root.join("one.bin"), MIB + 123);
    random_file(&env.root.join("exact.bin"), 64 * 1024); // ends with an empty DATA
    std::fs::write(env.root.join("empty.bin"), b"").unwrap();
    let text: String = (0..2000).map(|i| format!("line {i} of text\n")).collect();
    std::fs::write(env.root.join("boot.txt"), &text).unwrap();

    for name in ["one.bin", "exact.bin", "empty.bin"] {
        let out = env.out(name);
        let o = env.client(
            60,
            "tftp",
            &[
                "-m",
                "binary",
                &GW.to_string(),
                "-c",
                "get",
                name,
                out.to_str().unwrap(),
            ],
        );
        assert_same(&env.root.join(name), &out, &format!("tftp-hpa {name}"), &o);
        let size = std::fs::metadata(env.root.join(name)).unwrap().len() as usize;
        assert_ok(&env.record(name), size, 512, 1);
    }
    // netascii is accepted and served unchanged (text without CR survives the client's
    // CRLF conversion byte for byte).
    let out = env.out("boot.txt");
    let o = env.client(
        60,
        "tftp",
        &[
            "-m",
            "netascii",
            &GW.to_string(),
            "-c",
            "get",
            "boot.txt",
            out.to_str().unwrap(),
        ],
    );
    assert_same(&env.root.join("boot.txt"), &out, "tftp-hpa netascii", &o);
}

#[test]
fn rfc2347_atftp_with_and_without_options() {
    let env = Env::new(|_| {});
    let size = 3 * MIB + 77;
    random_file(&env.root.join("img.bin"), size);
    let cases: [(&[&str], u16, u16); 4] = [
        (&[], 512, 1),
        (&["--option", "blksize 1468"], 1468, 1),
        (&["--option", "windowsize 16"], 512, 16),
        (&["--option", "tsize 0"], 512, 1),
    ];
    for (opts, blksize, windowsize) in cases {
        env.clear_records();
        let out = env.out("img.out");
        let mut args: Vec<&str> = opts.to_vec();
        args.extend(["-g", "-r", "img.bin", "-l", out.to_str().unwrap()]);
        let gw = GW.to_string();
        args.push(&gw);
        let o = env.client(60, "atftp", &args);
        assert_same(
            &env.root.join("img.bin"),
            &out,
            &format!("atftp {opts:?}"),
            &o,
        );
        assert_ok(&env.record("img.bin"), size, blksize, windowsize);
    }
}

#[test]
fn rfc2348_curl_blksize_capped_and_no_options() {
    let env = Env::new(|_| {});
    let size = 2 * MIB + 5;
    random_file(&env.root.join("k.bin"), size);
    let url = format!("tftp://{GW}/k.bin");
    let cases: [(&[&str], u16); 4] = [
        (&[], 512),
        (&["--tftp-blksize", "1468"], 1468),
        // RFC 2348 lets the server answer smaller: capped at MTU − 32.
        (&["--tftp-blksize", "65464"], 1468),
        (&["--tftp-no-options"], 512),
    ];
    for (opts, blksize) in cases {
        env.clear_records();
        let out = env.out("k.out");
        let mut args: Vec<&str> = vec!["-sS"];
        args.extend_from_slice(opts);
        args.extend(["-o", out.to_str().unwrap(), &url]);
        let o = env.client(60, "curl", &args);
        assert!(o.status.success(), "curl {opts:?}\n{}", show(&o));
        assert_same(&env.root.join("k.bin"), &out, &format!("curl {opts:?}"), &o);
        assert_ok(&env.record("k.bin"), size, blksize, 1);
    }
}

#[test]
fn large_64mib_windowed_and_lockstep_rollover() {
    let env = Env::new(|_| {});
    let size = 64 * MIB;
    let src = env.root.join("big.bin");
    random_file(&src, size);
    let gw = GW.to_string();

    // RFC 7440 windows of 16 blocks of 1468 bytes.
    let out = env.out("big-atftp");
    let t = Instant::now();
    let o = env.client(
        120,
        "atftp",
        &[
            "--option",
            "blksize 1468",
            "--option",
            "windowsize 16",
            "-g",
            "-r",
            "big.bin",
            "-l",
            out.to_str().unwrap(),
            &gw,
        ],
    );
    eprintln!("atftp 64 MiB blksize 1468 windowsize 16: {:?}", t.elapsed());
    assert_same(&src, &out, "atftp windowsize 16", &o);
    assert_ok(&env.record("big.bin"), size, 1468, 16);
    std::fs::remove_file(&out).unwrap();

    env.clear_records();
    let out = env.out("big-curl-1468");
    let t = Instant::now();
    let o = env.client(
        120,
        "curl",
        &[
            "-sS",
            "--tftp-blksize",
            "1468",
            "-o",
            out.to_str().unwrap(),
            &format!("tftp://{GW}/big.bin"),
        ],
    );
    eprintln!("curl 64 MiB blksize 1468: {:?}", t.elapsed());
    assert_same(&src, &out, "curl blksize 1468", &o);
    assert_ok(&env.record("big.bin"), size, 1468, 1);
    std::fs::remove_file(&out).unwrap();

    // 512-byte lock-step: 131073 blocks, so the block number wraps past 65535 twice.
    env.clear_records();
    let out = env.out("big-curl-512");
    let t = Instant::now();
    let o = env.client(
        180,
        "curl",
        &[
            "-sS",
            "--tftp-no-options",
            "-o",
            out.to_str().unwrap(),
            &format!("tftp://{GW}/big.bin"),
        ],
    );
    eprintln!("curl 64 MiB 512-byte lock-step: {:?}", t.elapsed());
    assert_same(&src, &out, "curl 512 lock-step (rollover)", &o);
    assert_ok(&env.record("big.bin"), size, 512, 1);
}

#[test]
fn pxe_abort_after_tsize_oack_ends_session_at_once() {
    let env = Env::new(|_| {});
    random_file(&env.root.join("undionly.kpxe"), 70_000);
    let t0 = Instant::now();
    let (opts, after_error) = in_netns(&env.lab.rack, || {
        let c = Raw::new();
        // What a PXE ROM does first: ask for the size only.
        c.request(
            OP_RRQ,
            "undionly.kpxe",
            &[("tsize", "0"), ("blksize", "1432")],
        );
        let (p, tid) = c.expect(Duration::from_secs(3), "OACK");
        let opts = oack(&p).expect("an OACK");
        c.send_to(
            &packet::encode_error(ErrorCode::OptionRefused, "tsize only"),
            tid,
        );
        // Nothing more may come from that TID (the default retransmit would be at 1 s).
        (opts, c.drain(Duration::from_millis(1500)))
    });
    assert_eq!(
        opts,
        vec![
            ("tsize".to_string(), "70000".to_string()),
            ("blksize".to_string(), "1432".to_string())
        ]
    );
    assert!(
        after_error.is_empty(),
        "server kept sending after the client's ERROR: {after_error:?}"
    );
    let rec = env.record("undionly.kpxe");
    assert_eq!(rec.result, TransferResult::Aborted, "{rec:?}");
    assert_eq!(rec.bytes, 0);
    assert!(
        rec.elapsed < Duration::from_millis(900),
        "the session must end at the ERROR, not at a timeout: {rec:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    let text = metrics().render();
    assert!(
        text.lines()
            .any(|l| l.starts_with("bootgate_tftp_sessions_total{result=\"aborted\"}")),
        "aborted sessions are counted:\n{text}"
    );
}

#[test]
fn jail_refuses_traversal_absolute_and_symlink_escapes() {
    let env = Env::new(|_| {});
    let outside = env.scratch.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let secret = outside.join("secret");
    std::fs::write(&secret, b"TOP-SECRET-CONTENT\n").unwrap();
    std::os::unix::fs::symlink(&secret, env.root.join("escape")).unwrap();
    std::os::unix::fs::symlink("/etc", env.root.join("etc-link")).unwrap();
    std::fs::create_dir(env.root.join("dir")).unwrap();
    let abs = secret.to_str().unwrap().to_string();

    // Exact error codes, on a raw socket.
    let cases: Vec<(String, u16)> = vec![
        ("../outside/secret".into(), 2),
        ("dir/../../outside/secret".into(), 2),
        (abs.clone(), 1), // taken relative to the root: no such file there
        ("escape".into(), 2),
        ("etc-link/passwd".into(), 2),
        ("dir".into(), 1),
        ("missing".into(), 1),
    ];
    let names: Vec<String> = cases.iter().map(|(n, _)| n.clone()).collect();
    let codes = in_netns(&env.lab.rack, move || {
        names
            .iter()
            .map(|n| {
                let c = Raw::new();
                c.request(OP_RRQ, n, &[]);
                let (p, _) = c.expect(Duration::from_secs(3), n);
                (error_code(&p), data_block(&p).is_some())
            })
            .collect::<Vec<_>>()
    });
    for ((name, want), (code, data)) in cases.iter().zip(codes) {
        assert!(!data, "{name}: the server sent DATA");
        assert_eq!(code, Some(*want), "{name}");
        let rec = env.record(name);
        assert_eq!(rec.bytes, 0, "{rec:?}");
        assert!(
            matches!(
                rec.result,
                TransferResult::NotFound | TransferResult::AccessViolation
            ),
            "{rec:?}"
        );
    }

    // Real clients fail and get none of the secret.
    let gw = GW.to_string();
    for (label, args) in [
        (
            "curl ../",
            vec![
                "-sS".to_string(),
                "--path-as-is".into(),
                format!("tftp://{GW}/../outside/secret"),
            ],
        ),
        (
            "curl absolute",
            vec!["-sS".to_string(), format!("tftp://{GW}/{abs}")],
        ),
        (
            "curl symlink",
            vec!["-sS".to_string(), format!("tftp://{GW}/escape")],
        ),
    ] {
        let out = env.out("leak");
        let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
        a.extend(["-o", out.to_str().unwrap()]);
        let o = env.client(30, "curl", &a);
        assert!(!o.status.success(), "{label} succeeded\n{}", show(&o));
        let got = std::fs::read(&out).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&got).contains("TOP-SECRET"),
            "{label} leaked"
        );
    }
    for remote in ["../outside/secret", abs.as_str(), "escape"] {
        let out = env.out("leak");
        let o = env.client(
            30,
            "atftp",
            &["-g", "-r", remote, "-l", out.to_str().unwrap(), &gw],
        );
        assert!(
            !o.status.success(),
            "atftp {remote} succeeded\n{}",
            show(&o)
        );
        let got = std::fs::read(&out).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&got).contains("TOP-SECRET"),
            "atftp {remote} leaked"
        );
    }
    assert!(
        env.records
            .lock()
            .unwrap()
            .iter()
            .all(|r| r.bytes == 0 && r.result != TransferResult::Ok),
        "no refused request may transfer bytes"
    );
}

#[test]
fn rfc1350_write_requests_and_unknown_opcodes_are_refused() {
    let env = Env::new(|_| {});
    let local = env.scratch.join("upload.bin");
    random_file(&local, 4000);
    let o = env.client(
        30,
        "tftp",
        &[
            "-m",
            "binary",
            &GW.to_string(),
            "-c",
            "put",
            local.to_str().unwrap(),
            "upload.bin",
        ],
    );
    let text = show(&o);
    assert!(
        text.contains("Error code 2") || !o.status.success(),
        "tftp put was not refused\n{text}"
    );
    assert!(!env.root.join("upload.bin").exists(), "a file was written");
    assert_eq!(
        env.record("upload.bin").result,
        TransferResult::WriteRefused
    );

    let (wrq, unknown, short) = in_netns(&env.lab.rack, || {
        let c = Raw::new();
        c.request(OP_WRQ, "x.bin", &[]);
        let wrq = c.expect(Duration::from_secs(3), "WRQ reply").0;
        c.send_to(b"\x00\x09hello\x00", SocketAddrV4::new(GW, 69));
        let unknown = c.expect(Duration::from_secs(3), "opcode 9 reply").0;
        c.send_to(b"\x00\x01nofilename", SocketAddrV4::new(GW, 69));
        let short = c.expect(Duration::from_secs(3), "malformed RRQ reply").0;
        (wrq, unknown, short)
    });
    assert_eq!(error_code(&wrq), Some(ErrorCode::AccessViolation as u16));
    assert_eq!(
        error_code(&unknown),
        Some(ErrorCode::IllegalOperation as u16)
    );
    assert_eq!(error_code(&short), Some(ErrorCode::IllegalOperation as u16));
}

#[test]
fn concurrent_200_curl_fetches_of_1mib() {
    // 200 transfers from one client address: lift the per-source cap (8 by default) for
    // this load test (tests/limits.rs holds the cap itself).
    let env = Env::new(|c| c.max_sessions_per_source = 256);
    let src = env.root.join("one.bin");
    random_file(&src, MIB);
    let want = sha256(&src);
    let outdir = env.scratch.join("par");
    std::fs::create_dir_all(&outdir).unwrap();
    let script = format!(
        "seq 200 | xargs -P 200 -I {{}} curl -sS --tftp-blksize 1468 -o {dir}/{{}} tftp://{GW}/one.bin",
        dir = outdir.display()
    );
    let t = Instant::now();
    let o = env
        .lab
        .rack
        .cmd("timeout")
        .args(["180", "sh", "-c", &script])
        .output()
        .unwrap();
    eprintln!("200 concurrent curl fetches of 1 MiB: {:?}", t.elapsed());
    if !o.status.success() {
        let recs = env.wait_records(200, Duration::from_secs(10));
        let mut by: std::collections::BTreeMap<&str, usize> = Default::default();
        for r in &recs {
            *by.entry(r.result.as_str()).or_default() += 1;
        }
        let slow = recs.iter().map(|r| r.elapsed).max();
        panic!(
            "some curl failed; server results {by:?}, {} records, slowest {slow:?}\n{}",
            recs.len(),
            show(&o)
        );
    }
    for i in 1..=200 {
        let p = outdir.join(i.to_string());
        assert_eq!(sha256(&p), want, "fetch {i} differs");
    }
    let recs = env.wait_records(200, Duration::from_secs(10));
    assert_eq!(recs.len(), 200);
    assert!(
        recs.iter().all(|r| r.result == TransferResult::Ok),
        "{:?}",
        recs.iter()
            .filter(|r| r.result != TransferResult::Ok)
            .collect::<Vec<_>>()
    );
}

/// 5 % of the frames leaving the client's eth0 are lost. netem is the tool named for it; this
/// kernel may not have it (CONFIG_NET_SCH_NETEM), so the same loss is made with nftables on
/// the bridge port behind eth0 (ingress of eth0-br: what eth0 transmits) when it is missing.
/// That fallback drops 5 % of the client's data ACKs but spares the handshake (RRQ and the
/// ACK of the OACK): atftp aborts with "unexpected OACK" when the server rightly resends an
/// OACK whose ACK was lost, which would make the test measure atftp, not bootgate.
fn add_loss(rack: &Netns) -> &'static str {
    let o = rack
        .cmd("tc")
        .args(["qdisc", "add", "dev", "eth0", "root", "netem", "loss", "5%"])
        .output()
        .expect("run tc (package iproute2)");
    if o.status.success() {
        return "netem";
    }
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let _ = Command::new("modprobe")
        .arg("sch_netem")
        .stderr(Stdio::null())
        .status();
    let o = rack
        .cmd("tc")
        .args(["qdisc", "add", "dev", "eth0", "root", "netem", "loss", "5%"])
        .output()
        .expect("run tc");
    if o.status.success() {
        return "netem";
    }
    eprintln!(
        "netem unavailable ({}); using nftables numgen loss",
        err.trim()
    );
    let rules = "add table netdev bgtloss\n\
        add chain netdev bgtloss egress_eth0 { type filter hook ingress device \"eth0-br\" priority 0; }\n\
        add rule netdev bgtloss egress_eth0 ip protocol udp @th,64,16 0x4 @th,80,16 != 0 numgen random mod 20 0 counter drop\n";
    let mut child = rack
        .cmd("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "netem is unavailable ({err}) and nft cannot run ({e}): install nftables \
                 or a kernel with sch_netem; the loss test cannot run"
            )
        });
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), rules.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "netem is unavailable ({err}) and the nftables fallback failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    "nft"
}

#[test]
fn lossy_link_64mib_completes() {
    let env = Env::new(|_| {});
    let size = 64 * MIB;
    let src = env.root.join("big.bin");
    random_file(&src, size);
    let how = add_loss(&env.lab.rack);
    let out = env.out("big-lossy");
    let t = Instant::now();
    // Windows of 64: lock-step at 5 % loss costs one retransmit interval per lost ACK
    // (45 716 blocks), far too slow for a test whatever the server does.
    let o = env.client(
        600,
        "atftp",
        &[
            "--option",
            "blksize 1468",
            "--option",
            "windowsize 64",
            "-g",
            "-r",
            "big.bin",
            "-l",
            out.to_str().unwrap(),
            &GW.to_string(),
        ],
    );
    eprintln!(
        "atftp 64 MiB over 5% loss ({how}), blksize 1468 windowsize 64: {:?}",
        t.elapsed()
    );
    if how == "nft" {
        let o = env
            .lab
            .rack
            .cmd("nft")
            .args(["list", "table", "netdev", "bgtloss"])
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&o.stdout).to_string();
        eprintln!("{listing}");
        let dropped: u64 = listing
            .split("counter packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(dropped > 0, "the loss rule dropped nothing:\n{listing}");
    }
    assert_same(&src, &out, "atftp over a lossy link", &o);
    // The client has everything (checked above). If its final ACK was among the lost
    // packets, the server cannot know: it retransmits, finds the port closed (atftp exits
    // at once) and records peer_gone with the last window unacknowledged.
    let rec = env.record("big.bin");
    match rec.result {
        TransferResult::Ok => assert_ok(&rec, size, 1468, 64),
        TransferResult::PeerGone => {
            assert!(rec.bytes + 64 * 1468 >= size as u64, "{rec:?}")
        }
        _ => panic!("{rec:?}"),
    }
}

#[test]
fn rfc2347_oack_echoes_only_accepted_options() {
    let env = Env::new(|_| {});
    random_file(&env.root.join("f.bin"), 3000);
    let (plain, negotiated) = in_netns(&env.lab.rack, || {
        let c = Raw::new();
        // Only unknown options: no OACK, straight to DATA 1.
        c.request(OP_RRQ, "f.bin", &[("multicast", ""), ("foo", "1")]);
        let (p, tid) = c.expect(Duration::from_secs(3), "DATA 1");
        c.send_to(&packet::encode_error(ErrorCode::NotDefined, "done"), tid);
        let plain = data_block(&p);
        let c = Raw::new();
        c.request(
            OP_RRQ,
            "f.bin",
            &[
                ("blksize", "65464"),
                ("windowsize", "100"),
                ("tsize", "0"),
                ("timeout", "3"),
                ("bogus", "7"),
            ],
        );
        let (p, tid) = c.expect(Duration::from_secs(3), "OACK");
        c.send_to(&packet::encode_error(ErrorCode::NotDefined, "done"), tid);
        (plain, oack(&p))
    });
    assert_eq!(plain, Some((1, 512)));
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        negotiated,
        Some(pairs(&[
            ("blksize", "1468"),
            ("windowsize", "64"),
            ("tsize", "3000"),
            ("timeout", "3")
        ]))
    );
}

#[test]
fn rfc7440_windows_and_rfc1123_duplicate_acks_never_resend() {
    // Retransmit timers far away: any extra packet would come from a duplicate ACK.
    let env = Env::new(|c| {
        c.default_timeout = Duration::from_secs(5);
        c.min_timeout = Duration::from_secs(5);
    });
    random_file(&env.root.join("w.bin"), 20 * 512 + 100);
    let seen = in_netns(&env.lab.rack, || {
        let quiet = Duration::from_millis(600);
        let c = Raw::new();
        c.request(OP_RRQ, "w.bin", &[("windowsize", "4")]);
        let (p, tid) = c.expect(Duration::from_secs(3), "OACK");
        assert!(oack(&p).is_some());
        let blocks = |c: &Raw| -> Vec<u16> {
            c.drain(quiet)
                .iter()
                .map(|p| data_block(p).expect("only DATA").0)
                .collect()
        };
        let mut seen = Vec::new();
        c.send_to(&packet::encode_ack(0), tid);
        seen.push(blocks(&c)); // 1..=4
        // The window's ACK, three times: the next window exactly once.
        for _ in 0..3 {
            c.send_to(&packet::encode_ack(4), tid);
        }
        seen.push(blocks(&c)); // 5..=8
        // The client saw a gap after 6: resume from 7.
        c.send_to(&packet::encode_ack(6), tid);
        seen.push(blocks(&c)); // 7..=10
        // Stale and duplicate ACKs: nothing.
        c.send_to(&packet::encode_ack(6), tid);
        c.send_to(&packet::encode_ack(3), tid);
        c.send_to(&packet::encode_ack(0), tid);
        seen.push(blocks(&c));
        c.send_to(&packet::encode_error(ErrorCode::NotDefined, "done"), tid);
        seen
    });
    assert_eq!(
        seen,
        vec![
            vec![1, 2, 3, 4],
            vec![5, 6, 7, 8],
            vec![7, 8, 9, 10],
            Vec::<u16>::new()
        ]
    );
}

#[test]
fn bounded_retransmits_with_backoff_then_timeout() {
    // 100 ms base, 2 retries: retransmits at ~0.1 s and ~0.3 s, gives up at 0.7 s.
    let env = Env::new(|c| {
        c.default_timeout = Duration::from_millis(100);
        c.min_timeout = Duration::from_millis(100);
        c.retries = 2;
    });
    random_file(&env.root.join("t.bin"), 5000);
    let got = in_netns(&env.lab.rack, || {
        let c = Raw::new();
        let t0 = Instant::now();
        c.request(OP_RRQ, "t.bin", &[]);
        let mut got = Vec::new();
        while let Some((p, _)) = c.recv(Duration::from_secs(3)) {
            got.push((t0.elapsed(), p));
            if got.last().is_some_and(|(_, p)| error_code(p).is_some()) {
                break;
            }
        }
        got
    });
    let kinds: Vec<String> = got
        .iter()
        .map(|(_, p)| match packet::parse(p) {
            Ok(Packet::Data { block, .. }) => format!("DATA {block}"),
            Ok(Packet::Error { code, .. }) => format!("ERROR {code}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["DATA 1", "DATA 1", "DATA 1", "ERROR 0"], "{got:?}");
    let gap1 = got[1].0 - got[0].0;
    let gap2 = got[2].0 - got[1].0;
    assert!(
        gap1 >= Duration::from_millis(80) && gap2 >= Duration::from_millis(160),
        "exponential backoff: {gap1:?} then {gap2:?}"
    );
    assert_eq!(env.record("t.bin").result, TransferResult::Timeout);
}

#[test]
fn over_max_sessions_is_server_busy() {
    let env = Env::new(|c| c.max_sessions = 1);
    random_file(&env.root.join("s.bin"), 5000);
    let (busy, later) = in_netns(&env.lab.rack, || {
        let a = Raw::new();
        a.request(OP_RRQ, "s.bin", &[]);
        let (_, tid) = a.expect(Duration::from_secs(3), "DATA 1 for the first client");
        let b = Raw::new();
        b.request(OP_RRQ, "s.bin", &[]);
        let busy = b.expect(Duration::from_secs(3), "busy").0;
        // The first client aborts: its slot frees at once.
        a.send_to(&packet::encode_error(ErrorCode::NotDefined, "bye"), tid);
        let mut later = None;
        for _ in 0..50 {
            let c = Raw::new();
            c.request(OP_RRQ, "s.bin", &[]);
            let (p, tid) = c.expect(Duration::from_secs(3), "retry");
            if data_block(&p).is_some() {
                c.send_to(&packet::encode_error(ErrorCode::NotDefined, "bye"), tid);
                later = Some(p);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (busy, later)
    });
    match packet::parse(&busy) {
        Ok(Packet::Error { code, message }) => {
            assert_eq!((code, message.as_str()), (0, "server busy"));
        }
        other => panic!("expected ERROR 0 server busy, got {other:?}"),
    }
    assert!(later.is_some(), "the slot was never freed");
    assert!(
        env.records
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.result == TransferResult::Busy)
    );
}

/// Per-client files, as the daemon will make them.
struct PerHost;

#[async_trait::async_trait]
impl Generated for PerHost {
    async fn get(&self, path: &str, client: SocketAddrV4) -> Option<Vec<u8>> {
        match path {
            p if p == format!("hosts/{}.ipxe", client.ip()) => {
                Some(format!("#!ipxe\necho hello {}\n", client.ip()).into_bytes())
            }
            "override.txt" => Some(b"generated\n".to_vec()),
            _ => None,
        }
    }
}

#[test]
fn generated_files_come_before_the_filesystem() {
    let env = Env::with_generated(|_| {}, Some(Arc::new(PerHost)));
    std::fs::write(env.root.join("override.txt"), b"from disk\n").unwrap();
    std::fs::write(env.root.join("plain.txt"), b"plain\n").unwrap();
    for (url_path, want) in [
        (
            format!("/hosts/./{CLIENT}.ipxe"),
            format!("#!ipxe\necho hello {CLIENT}\n"),
        ),
        ("override.txt".to_string(), "generated\n".to_string()),
        ("plain.txt".to_string(), "plain\n".to_string()),
    ] {
        let out = env.out("gen");
        let o = env.client(
            30,
            "curl",
            &[
                "-sS",
                "--tftp-blksize",
                "1468",
                "-o",
                out.to_str().unwrap(),
                &format!("tftp://{GW}/{url_path}"),
            ],
        );
        assert!(o.status.success(), "{url_path}\n{}", show(&o));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), want, "{url_path}");
    }
}

#[test]
fn shutdown_tells_running_sessions() {
    let mut env = Env::new(|c| c.default_timeout = Duration::from_secs(5));
    random_file(&env.root.join("s.bin"), 50_000);
    let (p, sock) = in_netns(&env.lab.rack, || {
        let c = Raw::new();
        c.request(OP_RRQ, "s.bin", &[]);
        let (p, _) = c.expect(Duration::from_secs(3), "DATA 1");
        // The socket stays in the rack namespace wherever it is used from.
        (p, c.sock)
    });
    assert_eq!(data_block(&p), Some((1, 512)));
    let t = Instant::now();
    env.server.stop();
    assert!(t.elapsed() < Duration::from_secs(3), "shutdown waited");
    let c = Raw { sock };
    let (p, _) = c.expect(Duration::from_secs(2), "shutdown ERROR");
    assert_eq!(error_code(&p), Some(0));
    assert_eq!(env.record("s.bin").result, TransferResult::Shutdown);
}
