//! Benchmark fixture for `bootgate audit` (bench/audit.sh): a /16 with 10,000 inventory
//! hosts and 100,000 leases (the /16's 65,534 addresses cannot hold them all, one lease per
//! address: the last ~41,000 strangers overflow into a second /16). Writes the site
//! (inventory + config) to DIR, times the pure audit over the leases in memory, and with
//! `--store` also writes the leases (and one lease-committed event each) into
//! DIR/state/bootgate.db so the CLI can be timed end to end.
//!
//!     cargo run --release --example audit_bench -- --dir /tmp/bgaudit [--store] [--rounds 5]

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Instant;

use bootgate::audit::{Options, audit};
use bootgate::store::{
    EventKind, Lease, LeaseState, LeaseStore, NewEvent, RelayInfo, sqlite::SqliteStore,
};
use bootgate::types::MacAddr;
use clap::Parser;
use jiff::{SignedDuration, Timestamp};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    hosts: u32,
    #[arg(long, default_value_t = 100_000)]
    leases: u32,
    /// Also write the leases and their events into the site's SQLite store.
    #[arg(long)]
    store: bool,
    #[arg(long, default_value_t = 5)]
    rounds: u32,
}

const BASE: u32 = u32::from_be_bytes([10, 250, 0, 0]);

fn ip(off: u32) -> Ipv4Addr {
    Ipv4Addr::from(BASE + off)
}

fn host_mac(i: u32) -> MacAddr {
    let b = i.to_be_bytes();
    MacAddr([0x52, 0x54, 0x01, b[1], b[2], b[3]])
}

fn stranger_mac(i: u32) -> MacAddr {
    let b = i.to_be_bytes();
    MacAddr([0x02, 0x00, 0x02, b[1], b[2], b[3]])
}

/// Host i reserves 10.250.0.10 + i; the pool is 10.250.64.0-10.250.255.254.
fn reservation(i: u32) -> Ipv4Addr {
    ip(10 + i)
}

const POOL: u32 = 64 * 256;

fn write_site(a: &Args) -> anyhow::Result<()> {
    let inv = a.dir.join("inventory");
    std::fs::create_dir_all(&inv)?;
    std::fs::create_dir_all(a.dir.join("state"))?;
    std::fs::write(
        inv.join("site.toml"),
        "[site]\nname = \"bench\"\ngateways = [\"gw\"]\n",
    )?;
    std::fs::write(
        inv.join("subnets.toml"),
        format!(
            "[[subnet]]\nname = \"prov\"\ncidr = \"10.250.0.0/16\"\npurpose = \"provisioning\"\nrelay_addresses = [\"10.250.0.1\"]\ngateway = \"10.250.0.1\"\nlease_time = \"12h\"\ndynamic_ranges = [{{ start = \"{}\", end = \"10.250.255.254\" }}]\nknown_hosts_only = false\n\n# A /16 holds at most 65,534 leases (one per address): the rest overflow here.\n[[subnet]]\nname = \"prov2\"\ncidr = \"10.251.0.0/16\"\npurpose = \"provisioning\"\nrelay_addresses = [\"10.251.0.1\"]\ngateway = \"10.251.0.1\"\nlease_time = \"12h\"\ndynamic_ranges = [{{ start = \"10.251.0.10\", end = \"10.251.255.254\" }}]\nknown_hosts_only = false\n",
            ip(POOL)
        ),
    )?;
    let mut hosts = String::with_capacity(a.hosts as usize * 120);
    for i in 0..a.hosts {
        writeln!(
            hosts,
            "[[host]]\nname = \"n{i:05}\"\nrole = \"gpu\"\nmacs = [\"{}\"]\naddresses = {{ prov = \"{}\" }}\n",
            host_mac(i),
            reservation(i)
        )?;
    }
    std::fs::write(inv.join("hosts.toml"), hosts)?;
    std::fs::write(
        a.dir.join("bootgate.toml"),
        format!(
            "state_dir = \"{}\"\ninventory = \"inventory\"\nboot_images = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:8080\"\n",
            a.dir.join("state").display(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/boot-images")
        ),
    )?;
    Ok(())
}

/// Every host holds its reservation except every 100th (moved into the pool) and every
/// 50th (never seen); the rest are strangers in the pool, a tenth of them expired.
fn leases(a: &Args, now: Timestamp) -> Vec<Lease> {
    let mut out = Vec::with_capacity(a.leases as usize);
    let starts = now - SignedDuration::from_hours(1);
    let lease = |ip: Ipv4Addr, mac, host: Option<String>, ends| Lease {
        ip,
        mac,
        client_id: None,
        state: LeaseState::Active,
        starts,
        ends,
        host,
        subnet: if ip.octets()[1] == 250 {
            "prov"
        } else {
            "prov2"
        }
        .into(),
        relay: RelayInfo::default(),
    };
    let live = now + SignedDuration::from_hours(11);
    let mut pool = 0u32;
    for i in 0..a.hosts.min(a.leases) {
        if i % 50 == 49 {
            continue;
        }
        let at = if i % 100 == 0 {
            pool += 1;
            ip(POOL + pool)
        } else {
            reservation(i)
        };
        out.push(lease(at, host_mac(i), Some(format!("n{i:05}")), live));
    }
    let mut s = 0;
    while (out.len() as u32) < a.leases {
        pool += 1;
        s += 1;
        let ends = if s % 10 == 0 {
            now - SignedDuration::from_hours(1)
        } else {
            live
        };
        // Fill 10.250.64.0-10.250.255.254, then 10.251.0.10 onwards.
        let at = if POOL + pool < 65_535 {
            ip(POOL + pool)
        } else {
            ip(65_536 + 10 + (POOL + pool - 65_535))
        };
        out.push(lease(at, stranger_mac(s), None, ends));
    }
    out
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    write_site(&a)?;
    let t = Instant::now();
    let inv = bootgate::inventory::load::load_dir(&a.dir.join("inventory"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "inventory: {} hosts loaded in {:.0} ms",
        inv.hosts.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let now = Timestamp::now();
    let leases = leases(&a, now);
    let mut times = Vec::new();
    let mut report = None;
    for _ in 0..a.rounds.max(1) {
        let t = Instant::now();
        let r = audit(&inv, &leases, &[], now, &Options::default())?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        report = Some(r);
    }
    times.sort_by(|x, y| x.total_cmp(y));
    let r = report.expect("one round");
    println!(
        "pure audit: {} leases, {} findings; median {:.1} ms, min {:.1} ms, max {:.1} ms over {} rounds",
        leases.len(),
        r.findings.len(),
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len()
    );
    if a.store {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let path = a.dir.join("state/bootgate.db");
            let _ = std::fs::remove_file(&path);
            let store = SqliteStore::open(&path).await?;
            let t = Instant::now();
            for chunk in leases.chunks(5_000) {
                let batch: Vec<(Lease, NewEvent)> = chunk
                    .iter()
                    .map(|l| {
                        let mut ev = NewEvent::new(EventKind::LeaseCommitted, "bench")
                            .ip(l.ip)
                            .mac(l.mac);
                        ev.time = Some(l.starts);
                        (l.clone(), ev)
                    })
                    .collect();
                for r in store.commit_leases(&batch).await? {
                    r?;
                }
            }
            println!(
                "store: {} leases + events written in {:.1} s",
                leases.len(),
                t.elapsed().as_secs_f64()
            );
            anyhow::Ok(())
        })?;
    }
    Ok(())
}
