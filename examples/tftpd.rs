//! bootgate's TFTP server on its own, for benchmarks against other TFTP servers
//! (bench/tftp.sh) until `bootgate serve` starts it:
//!
//!     cargo run --release --example tftpd -- --iface gw0 --addr 10.250.0.1 --root DIR
//!
//! Runs in the foreground until SIGINT/SIGTERM; one summary line per transfer at `info`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use bootgate::tftp::{TFTP_PORT, TftpConfig, TftpServer};
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "bootgate's read-only TFTP server, standalone")]
struct Args {
    /// Interface to serve on (SO_BINDTODEVICE).
    #[arg(long)]
    iface: String,
    /// The interface's IPv4 address (replies come from it).
    #[arg(long)]
    addr: Ipv4Addr,
    #[arg(long, default_value_t = TFTP_PORT)]
    port: u16,
    /// Directory to serve.
    #[arg(long)]
    root: PathBuf,
    #[arg(long, default_value_t = 1468)]
    max_blksize: u16,
    #[arg(long, default_value_t = 64)]
    max_windowsize: u16,
    #[arg(long, default_value_t = 1024)]
    max_sessions: usize,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "warn")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .init();
    let cfg = TftpConfig {
        root: args.root,
        max_blksize: args.max_blksize,
        max_windowsize: args.max_windowsize,
        max_sessions: args.max_sessions,
        ..TftpConfig::default()
    };
    let server = TftpServer::bind(&args.iface, args.addr, args.port, cfg, None)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("no SIGTERM handler: {e}");
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            stop.cancel();
        });
        // On cancel, transfers in flight are told (ERROR 0) and end at once.
        server.run(cancel).await;
    });
    Ok(())
}
