//! One read transfer on its own connected socket (the server's TID, RFC 1350 §4): optional
//! OACK, then windows of DATA blocks (RFC 7440; a window of 1 is RFC 1350 lock-step).
//! Block numbers are tracked as u64 and wrap to 0 on the wire after 65535, as tftp-hpa,
//! atftp and curl expect, so files beyond 32 MiB at 512-byte blocks work.

use std::io::{ErrorKind, SeekFrom};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::TransferResult;
use super::options::Negotiated;
use super::packet::{self, ErrorCode, Packet};

/// Where the bytes come from.
pub(super) enum Source {
    /// A jailed regular file, read a window at a time (never slurped: images are large).
    File {
        file: tokio::fs::File,
        /// The file cursor, so sequential window reads need no seek.
        pos: u64,
    },
    /// A generated file.
    Memory(Vec<u8>),
}

impl Source {
    /// Appends bytes from `offset` to `buf` until it holds `want` bytes or the source ends;
    /// returns whether it ended.
    async fn fill(&mut self, offset: u64, buf: &mut Vec<u8>, want: usize) -> std::io::Result<bool> {
        match self {
            Source::Memory(data) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(want - buf.len()).min(data.len());
                buf.extend_from_slice(&data[start..end]);
                Ok(buf.len() < want)
            }
            Source::File { file, pos } => {
                if *pos != offset {
                    file.seek(SeekFrom::Start(offset)).await?;
                    *pos = offset;
                }
                let mut filled = buf.len();
                buf.resize(want, 0);
                let mut eof = false;
                while filled < want {
                    let n = file.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        eof = true;
                        break;
                    }
                    filled += n;
                    *pos += n as u64;
                }
                buf.truncate(filled);
                Ok(eof)
            }
        }
    }
}

/// The retransmit interval: fixed when the client negotiated RFC 2349 `timeout`, else
/// adaptive (RFC 6298 smoothing of the measured round trip, RFC 1123 §4.2.3.2), doubled for
/// each consecutive retransmission.
///
/// The adaptive interval decides when we retransmit, never when we give up: the patience
/// is what a fixed-interval server making `retries` doubling retransmissions would have,
/// `base × (2^(retries+1) − 1)` (63 s for 1 s and 5), because some clients stay silent
/// until their own timer fires (atftp: after 5 s without any packet).
pub(super) struct Rto {
    fixed: Option<Duration>,
    srtt: Option<Duration>,
    rttvar: Duration,
    min: Duration,
    max: Duration,
    backoff: u32,
    patience: Duration,
}

/// No single wait grows beyond this, whatever the backoff.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Nor does the patience, whatever the settings (keeps deadline arithmetic far from overflow).
const MAX_PATIENCE: Duration = Duration::from_secs(3600);

impl Rto {
    pub(super) fn new(fixed: Option<Duration>, min: Duration, max: Duration, retries: u32) -> Rto {
        let base = fixed.unwrap_or(max);
        let patience = base
            .saturating_mul((1u32 << retries.saturating_add(1).min(16)) - 1)
            .min(MAX_PATIENCE);
        Rto {
            patience,
            fixed,
            srtt: None,
            rttvar: Duration::ZERO,
            min: min.min(max),
            max,
            backoff: 0,
        }
    }

    pub(super) fn current(&self) -> Duration {
        let base = match (self.fixed, self.srtt) {
            (Some(f), _) => f,
            (None, None) => self.max,
            (None, Some(srtt)) => (srtt + 4 * self.rttvar).clamp(self.min, self.max),
        };
        base.saturating_mul(1 << self.backoff.min(16)).min(MAX_WAIT)
    }

    /// How long a silent client is waited for.
    pub(super) fn patience(&self) -> Duration {
        self.patience
    }

    /// A round trip measured on a packet that was not retransmitted (Karn's rule).
    pub(super) fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }
}

/// Longest the session polls for an ACK before sleeping (see [`Transfer::spin`]).
const BUSY_POLL: Duration = Duration::from_micros(300);

/// When a session may busy-poll: only while it is the server's only transfer (spinning
/// holds a runtime worker, which other sessions would need) and only with a client that
/// answers within the poll time (a slow or distant client costs one poll, then none).
pub(super) struct BusyPoll {
    pub sessions: std::sync::Arc<tokio::sync::Semaphore>,
    pub max_sessions: usize,
}

impl BusyPoll {
    fn allowed(&self, srtt: Option<Duration>) -> bool {
        self.sessions.available_permits() + 1 >= self.max_sessions
            && srtt.is_none_or(|rtt| rtt <= BUSY_POLL)
    }
}

pub(super) struct Transfer {
    pub sock: UdpSocket,
    /// Whether (and when) to poll for ACKs without sleeping.
    pub busy_poll: BusyPoll,
    pub source: Source,
    pub neg: Negotiated,
    pub rto: Rto,
    pub cancel: CancellationToken,
    /// UDP GSO (`UDP_SEGMENT`) is on for this socket: a window leaves in one `send` that the
    /// kernel cuts into datagrams. Cleared when the kernel refuses a segmented send (a
    /// blksize beyond the path MTU, a device without checksum offload); the session then
    /// sends one datagram per block.
    pub gso: AtomicBool,
}

/// Largest UDP payload one GSO send may carry (the IPv4 datagram limit).
const GSO_MAX_BYTES: usize = 65_507;
/// Most segments one GSO send may carry (the kernel's `UDP_MAX_SEGMENTS` is 64 on older
/// kernels, 128 on newer).
const GSO_MAX_SEGMENTS: usize = 64;

/// Turns on UDP GSO for a session socket whose DATA packets are `4 + blksize` bytes.
/// Returns whether it is on (false on kernels without it: the session sends per block).
pub(super) fn enable_gso(sock: &UdpSocket, blksize: u16) -> bool {
    let seg = 4 + i32::from(blksize);
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::UdpGsoSegment, &seg).is_ok()
}

/// How a transfer ended and how many file bytes the client acknowledged.
pub(super) struct Outcome {
    pub result: TransferResult,
    pub bytes: u64,
    /// For the log: the client's error message, the I/O error.
    pub detail: Option<String>,
}

/// What the wait for the next packet produced.
enum Event {
    Ack(u16),
    PeerError(u16, String),
    Timeout,
    Cancelled,
    Gone,
    Failed(std::io::Error),
}

impl Transfer {
    async fn next_event(&self, buf: &mut [u8], deadline: Instant) -> Event {
        if self.busy_poll.allowed(self.rto.srtt)
            && let Some(ev) = self.spin(buf)
        {
            return ev;
        }
        loop {
            let r = tokio::select! {
                _ = self.cancel.cancelled() => return Event::Cancelled,
                r = tokio::time::timeout_at(deadline, self.sock.recv(buf)) => r,
            };
            let n = match r {
                Err(_) => return Event::Timeout,
                Ok(Ok(n)) => n,
                Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => return Event::Gone,
                Ok(Err(e)) => return Event::Failed(e),
            };
            match packet::parse(&buf[..n]) {
                Ok(Packet::Ack { block }) => return Event::Ack(block),
                Ok(Packet::Error { code, message }) => return Event::PeerError(code, message),
                // Anything else on our TID is noise: drop it, keep the transfer going.
                Ok(other) => tracing::debug!(packet = ?other, "unexpected packet ignored"),
                Err(e) => tracing::debug!(error = %e, "malformed packet ignored"),
            }
        }
    }

    /// Polls the socket without sleeping for up to [`BUSY_POLL`]: the answer to a window
    /// usually comes back within it, and a sleeping task is woken only after the kernel has
    /// woken an idle CPU (slow in VMs), which was a third of each window's round trip.
    /// `None`: nothing decisive arrived in time; the caller sleeps as usual.
    fn spin(&self, buf: &mut [u8]) -> Option<Event> {
        use std::os::fd::AsRawFd;
        let until = Instant::now() + BUSY_POLL;
        while Instant::now() < until {
            // The syscall itself, not tokio's `try_recv`: that answers from the readiness
            // the reactor last saw, which nobody updates while this worker spins.
            let got = nix::sys::socket::recv(
                self.sock.as_raw_fd(),
                buf,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            )
            .map_err(std::io::Error::from);
            match got {
                Ok(n) => match packet::parse(&buf[..n]) {
                    Ok(Packet::Ack { block }) => return Some(Event::Ack(block)),
                    Ok(Packet::Error { code, message }) => {
                        return Some(Event::PeerError(code, message));
                    }
                    _ => {}
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Some(Event::Gone),
                Err(e) => return Some(Event::Failed(e)),
            }
        }
        None
    }

    async fn send(&self, bytes: &[u8]) -> Result<(), Event> {
        match self.sock.send(bytes).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Err(Event::Gone),
            Err(e) => Err(Event::Failed(e)),
        }
    }

    /// Best effort: the session is ending anyway.
    async fn send_error(&self, code: ErrorCode, msg: &str) {
        let _ = self.sock.send(&packet::encode_error(code, msg)).await;
    }

    /// Runs the transfer to its end.
    pub(super) async fn run(mut self) -> Outcome {
        let blksize = usize::from(self.neg.blksize);
        let window = usize::from(self.neg.windowsize);
        let oack = (!self.neg.oack.is_empty()).then(|| packet::encode_oack(&self.neg.oack));
        let now = Instant::now();
        let mut st = Flight {
            win: Window::new(blksize, window),
            bytes: 0,
            sbuf: Vec::with_capacity(4 + blksize),
            awaiting_oack_ack: oack.is_some(),
            oack,
            sent_at: now,
            retransmitted: false,
            progress_at: now,
        };
        let mut rbuf = [0u8; 1024];
        // Looked up once: the data path increments it on every acknowledged window.
        let bytes_total = metrics::counter!("bootgate_tftp_bytes_total");

        if let Err(out) = self.start(&mut st).await {
            return out;
        }
        loop {
            let give_up_at = st.progress_at + self.rto.patience();
            let deadline = (st.sent_at + self.rto.current()).min(give_up_at);
            let block = match self.next_event(&mut rbuf, deadline).await {
                Event::Ack(block) => block,
                Event::Timeout => {
                    if let Err(out) = self.retransmit(&mut st, give_up_at).await {
                        return out;
                    }
                    continue;
                }
                ev => return self.ended(ev, st.bytes).await,
            };
            match self.acknowledged(&mut st, block, &bytes_total).await {
                Ok(true) => {}
                // Stale or duplicate: only the timeout retransmits.
                Ok(false) => continue,
                Err(out) => return out,
            }
            if !st.retransmitted {
                self.rto.sample(st.sent_at.elapsed());
            }
            self.rto.backoff = 0;
            st.progress_at = Instant::now();
            // An ACK before the window's end means the client saw a gap: RFC 7440 §4 resumes
            // from the block after it, which is exactly the new window.
            if let Err(ev) = self.send_window(&st.win, &mut st.sbuf).await {
                return fail(ev, st.bytes);
            }
            st.sent_at = Instant::now();
            st.retransmitted = false;
            if let Err(e) = st.win.prefetch(&mut self.source).await {
                self.send_error(ErrorCode::NotDefined, "read error").await;
                return end(TransferResult::Io, st.bytes, Some(e.to_string()));
            }
        }
    }

    /// Reads the first window and sends the OACK, or else the first window.
    async fn start(&mut self, st: &mut Flight) -> Result<(), Outcome> {
        if let Err(e) = st.win.refill(&mut self.source).await {
            self.send_error(ErrorCode::NotDefined, "read error").await;
            return Err(end(TransferResult::Io, 0, Some(e.to_string())));
        }
        let first = match &st.oack {
            Some(o) => self.send(o).await,
            None => self.send_window(&st.win, &mut st.sbuf).await,
        };
        first.map_err(|ev| fail(ev, 0))?;
        st.sent_at = Instant::now();
        st.progress_at = st.sent_at;
        Ok(())
    }

    /// Nothing came back in time: gives up after the patience, else backs off and sends
    /// the OACK or the window again.
    async fn retransmit(&mut self, st: &mut Flight, give_up_at: Instant) -> Result<(), Outcome> {
        if Instant::now() >= give_up_at {
            self.send_error(ErrorCode::NotDefined, "timed out").await;
            return Err(end(TransferResult::Timeout, st.bytes, None));
        }
        self.rto.backoff = self.rto.backoff.saturating_add(1);
        tracing::trace!(
            block = st.win.base,
            wait_ms = self.rto.current().as_millis() as u64,
            "retransmit"
        );
        let r = match (&st.oack, st.awaiting_oack_ack) {
            (Some(o), true) => self.send(o).await,
            _ => self.send_window(&st.win, &mut st.sbuf).await,
        };
        r.map_err(|ev| fail(ev, st.bytes))?;
        st.sent_at = Instant::now();
        st.retransmitted = true;
        Ok(())
    }

    /// An ACK of `block`: `Ok(true)` when it moved the transfer on (the window advanced
    /// and is buffered again), `Ok(false)` for one to ignore; `Err` when the transfer ended
    /// (the last block acknowledged, or a read error).
    async fn acknowledged(
        &mut self,
        st: &mut Flight,
        block: u16,
        bytes_total: &metrics::Counter,
    ) -> Result<bool, Outcome> {
        let win = &mut st.win;
        // Which block does this ACK name? Offset 0 is the block before the window (the
        // OACK's "block 0" at the start); anything outside the window is stale.
        let offset = u64::from(block.wrapping_sub(win.base.wrapping_sub(1) as u16));
        if st.awaiting_oack_ack {
            if offset != 0 {
                return Ok(false);
            }
            st.awaiting_oack_ack = false;
            return Ok(true);
        }
        if offset == 0 || offset > win.blocks() as u64 {
            // A duplicate or stale ACK: never answer it with data (RFC 1123 §4.2.3.1,
            // Sorcerer's Apprentice); only the timeout retransmits.
            return Ok(false);
        }
        let acked = win.base - 1 + offset;
        let acked_bytes = win.bytes_through(acked);
        st.bytes += acked_bytes as u64;
        bytes_total.increment(acked_bytes as u64);
        if win.last_block() == Some(acked) {
            return Err(end(TransferResult::Ok, st.bytes, None));
        }
        win.advance(acked);
        if let Err(e) = win.refill(&mut self.source).await {
            self.send_error(ErrorCode::NotDefined, "read error").await;
            return Err(end(TransferResult::Io, st.bytes, Some(e.to_string())));
        }
        Ok(true)
    }

    /// The end a wait brought that is not an ACK or a timeout.
    async fn ended(&self, ev: Event, bytes: u64) -> Outcome {
        match ev {
            // The client gave up (PXE ROMs: right after the tsize OACK). Stop now.
            Event::PeerError(code, msg) => end(
                TransferResult::Aborted,
                bytes,
                Some(format!("client error {code}: {msg}")),
            ),
            Event::Cancelled => {
                self.send_error(ErrorCode::NotDefined, "server shutting down")
                    .await;
                end(TransferResult::Shutdown, bytes, None)
            }
            ev => fail(ev, bytes),
        }
    }

    /// Sends the window's blocks: with GSO as few `send`s as the size limits allow (one
    /// per window of 16 × 1468), otherwise one per block. A syscall per block was most of
    /// the server's CPU per transfer (bench/tftp.sh).
    async fn send_window(&self, win: &Window, sbuf: &mut Vec<u8>) -> Result<(), Event> {
        let n = win.blocks();
        let mut first = 0;
        if n > 1 && self.gso.load(Ordering::Relaxed) {
            let seg = 4 + win.blksize;
            let per = (GSO_MAX_BYTES / seg).clamp(1, GSO_MAX_SEGMENTS);
            while first < n {
                let k = per.min(n - first);
                sbuf.clear();
                for i in first..first + k {
                    let block = win.base + i as u64;
                    sbuf.extend_from_slice(&packet::OP_DATA.to_be_bytes());
                    sbuf.extend_from_slice(&(block as u16).to_be_bytes());
                    sbuf.extend_from_slice(win.block_data(i));
                }
                match self.sock.send(sbuf).await {
                    Ok(_) => first += k,
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Err(Event::Gone),
                    Err(e) => {
                        // EINVAL (segment beyond the MTU), EIO (no checksum offload): the
                        // kernel sent nothing; finish this window, and the session, per block.
                        tracing::debug!(error = %e, "UDP GSO refused; sending per block");
                        self.gso.store(false, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
        for i in first..n {
            let block = win.base + i as u64;
            packet::encode_data_header(sbuf, block as u16);
            sbuf.extend_from_slice(win.block_data(i));
            self.send(sbuf).await?;
        }
        Ok(())
    }
}

/// Where a running transfer stands between two waits.
struct Flight {
    win: Window,
    /// File bytes the client has acknowledged.
    bytes: u64,
    /// Where DATA packets are assembled (reused: one allocation per transfer).
    sbuf: Vec<u8>,
    /// The encoded OACK, when options were negotiated.
    oack: Option<Vec<u8>>,
    /// The OACK is out and its ACK (block 0) has not come back yet.
    awaiting_oack_ack: bool,
    /// When the last send left (the retransmit timer runs from it).
    sent_at: Instant,
    /// The last send was a retransmission: its ACK is no round-trip sample (Karn).
    retransmitted: bool,
    /// When the client last moved the transfer on (the patience runs from it).
    progress_at: Instant,
}

fn end(result: TransferResult, bytes: u64, detail: Option<String>) -> Outcome {
    Outcome {
        result,
        bytes,
        detail,
    }
}

/// The end of a transfer whose send or wait failed.
fn fail(ev: Event, bytes: u64) -> Outcome {
    match ev {
        Event::Gone => end(TransferResult::PeerGone, bytes, None),
        Event::Failed(e) => end(TransferResult::Io, bytes, Some(e.to_string())),
        _ => end(TransferResult::Io, bytes, None),
    }
}

/// Read-ahead beyond the window: lock-step transfers would otherwise pay one blocking file
/// read (a trip to tokio's blocking pool) per 512-byte block.
const READ_AHEAD: usize = 64 * 1024;

/// The blocks of the current window: `buf[start..]` holds the file from block `base` on
/// (the window plus read-ahead); `eof` says the file ends inside it.
struct Window {
    /// Absolute number of the first unacknowledged block (1-based; wire = base mod 2^16).
    base: u64,
    buf: Vec<u8>,
    /// Where block `base` starts in `buf` (acknowledged bytes are skipped, not moved).
    start: usize,
    eof: bool,
    blksize: usize,
    window: usize,
}

impl Window {
    fn new(blksize: usize, window: usize) -> Window {
        Window {
            base: 1,
            buf: Vec::with_capacity(blksize * window + READ_AHEAD),
            start: 0,
            eof: false,
            blksize,
            window,
        }
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Blocks sendable now. At EOF the last one is short (possibly empty: a file that is a
    /// multiple of blksize ends with an empty DATA, RFC 1350 §6).
    fn blocks(&self) -> usize {
        let full = self.data().len() / self.blksize;
        (full + usize::from(self.eof)).min(self.window)
    }

    /// The absolute number of the final block, once it is inside the window.
    fn last_block(&self) -> Option<u64> {
        let full = self.data().len() / self.blksize;
        (self.eof && full < self.window).then_some(self.base + full as u64)
    }

    fn block_data(&self, i: usize) -> &[u8] {
        let data = self.data();
        let start = (i * self.blksize).min(data.len());
        let end = ((i + 1) * self.blksize).min(data.len());
        &data[start..end]
    }

    /// Data bytes in blocks base..=acked.
    fn bytes_through(&self, acked: u64) -> usize {
        let n = (acked + 1 - self.base) as usize;
        (n * self.blksize).min(self.data().len())
    }

    fn advance(&mut self, acked: u64) {
        self.start += self.bytes_through(acked);
        self.base = acked + 1;
    }

    /// Makes sure a whole window is buffered (or the file's end), reading ahead.
    async fn refill(&mut self, source: &mut Source) -> std::io::Result<()> {
        self.fill_to(source, self.blksize * self.window).await
    }

    /// After a window has left: makes sure the *next* window is buffered too, so the ACK
    /// is answered at once (the file read overlaps the client's turn instead of adding to
    /// every window's round trip).
    async fn prefetch(&mut self, source: &mut Source) -> std::io::Result<()> {
        self.fill_to(source, 2 * self.blksize * self.window).await
    }

    async fn fill_to(&mut self, source: &mut Source, need: usize) -> std::io::Result<()> {
        if self.eof || self.data().len() >= need {
            return Ok(());
        }
        // Move the unsent tail (less than a window) to the front, then read a chunk.
        self.buf.drain(..self.start);
        self.start = 0;
        let offset = (self.base - 1) * self.blksize as u64 + self.buf.len() as u64;
        self.eof = source
            .fill(offset, &mut self.buf, need + READ_AHEAD)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(len: usize, blksize: usize, window: usize) -> (Window, Source) {
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let w = Window::new(blksize, window);
        (w, Source::Memory(data))
    }

    /// Walks a whole file window by window, acknowledging each window's last block, and
    /// returns the concatenated blocks and the number of blocks.
    async fn walk(len: usize, blksize: usize, wsize: usize) -> (Vec<u8>, u64) {
        let (mut w, mut src) = window(len, blksize, wsize);
        let mut out = Vec::new();
        let mut blocks = 0;
        loop {
            w.refill(&mut src).await.unwrap();
            let n = w.blocks();
            assert!(n >= 1);
            for i in 0..n {
                let d = w.block_data(i);
                assert!(d.len() <= blksize);
                out.extend_from_slice(d);
                blocks += 1;
            }
            let last = w.base + n as u64 - 1;
            if w.last_block() == Some(last) {
                // The final block is short.
                assert!(w.block_data(n - 1).len() < blksize);
                return (out, blocks);
            }
            w.advance(last);
        }
    }

    #[tokio::test]
    async fn windows_cover_the_file_exactly() {
        for (len, blk, win) in [
            (0, 512, 1),
            (1, 512, 1),
            (512, 512, 1),
            (1024, 512, 2),
            (1025, 512, 2),
            (5000, 512, 4),
            (4096, 512, 8),
            (4096, 512, 4),
            (100_000, 1468, 16),
            (1_000_000, 512, 1),
            (READ_AHEAD * 3, 512, 1),
            (READ_AHEAD * 3 + 1468 * 16, 1468, 16),
        ] {
            let (out, blocks) = walk(len, blk, win).await;
            let want: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(out, want, "len {len} blk {blk} win {win}");
            assert_eq!(
                blocks,
                (len / blk + 1) as u64,
                "len {len} blk {blk} win {win}"
            );
        }
    }

    #[tokio::test]
    async fn gap_ack_resumes_after_the_acked_block() {
        let (mut w, mut src) = window(10 * 512, 512, 4);
        w.refill(&mut src).await.unwrap();
        assert_eq!(w.blocks(), 4);
        // The client saw blocks 1 and 2, then a gap.
        w.advance(2);
        w.refill(&mut src).await.unwrap();
        assert_eq!(w.base, 3);
        assert_eq!(w.blocks(), 4);
        assert_eq!(w.block_data(0)[0], (2 * 512) as u8);
    }

    #[test]
    fn rto_adapts_between_floor_and_default_and_backs_off() {
        let ms = Duration::from_millis;
        let mut r = Rto::new(None, ms(200), ms(1000), 5);
        assert_eq!(r.patience(), ms(63_000));
        assert_eq!(r.current(), ms(1000), "no sample yet: the default");
        r.sample(ms(1));
        assert_eq!(r.current(), ms(200), "LAN round trip: the floor");
        r.backoff = 2;
        assert_eq!(r.current(), ms(800));
        r.backoff = 40;
        assert_eq!(r.current(), MAX_WAIT);
        let mut r = Rto::new(Some(Duration::from_secs(3)), ms(200), ms(1000), 2);
        assert_eq!(r.patience(), ms(21_000));
        r.sample(ms(1));
        assert_eq!(
            r.current(),
            Duration::from_secs(3),
            "rfc2349 timeout is fixed"
        );
        r.backoff = 1;
        assert_eq!(r.current(), Duration::from_secs(6));
        let mut r = Rto::new(None, ms(200), ms(1000), 0);
        assert_eq!(r.patience(), ms(1000));
        r.sample(ms(5000));
        assert_eq!(r.current(), ms(1000), "capped at the default");
    }

    #[test]
    fn busy_poll_only_for_a_lone_transfer_with_a_fast_client() {
        let sessions = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
        let bp = BusyPoll {
            sessions: sessions.clone(),
            max_sessions: 4,
        };
        let _ours = sessions.clone().try_acquire_owned().unwrap();
        assert!(bp.allowed(None), "first window: no RTT yet");
        assert!(bp.allowed(Some(Duration::from_micros(120))));
        assert!(!bp.allowed(Some(Duration::from_millis(2))), "slow client");
        let _other = sessions.clone().try_acquire_owned().unwrap();
        assert!(
            !bp.allowed(Some(Duration::from_micros(120))),
            "another transfer runs"
        );
    }
}
