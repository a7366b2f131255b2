//! The SQLite writer thread: every write of the store (lease commits, host changes, state
//! moves, events, expiry, boot tokens) runs here, on one OS thread that owns its own
//! rusqlite connection, with group commit.
//!
//! sqlx runs every statement of a connection on that connection's worker thread, so a
//! one-lease commit (BEGIN, SELECT, INSERT, INSERT, COMMIT) cost five round trips between
//! threads; profiled under perfdhcp, those context switches, not SQL, were most of the CPU
//! per lease (bench/RESULTS.md). Here a call costs one round trip: the thread drains every
//! job queued meanwhile into one `BEGIN IMMEDIATE` transaction (a savepoint per job keeps
//! each call atomic on its own), commits it with `synchronous=FULL` (one fsync for all of
//! them: group commit across lease batches, discovery and events), and only then answers
//! the callers.

use std::future::Future;
use std::path::Path;
use std::sync::mpsc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::super::StoreError;
use super::failure::SqliteFailure;
use super::{open_error, open_rusqlite};

/// Jobs committed in one transaction at most (bounds a commit's latency).
const MAX_JOBS_PER_COMMIT: usize = 256;

/// While jobs arrive steadily (the previous commit ended less than [`BUSY`] ago), the
/// writer lets a transaction stay open this long after its first job for others to share
/// its fsync (PostgreSQL's `commit_delay`). An idle writer commits at once, so a lone ACK
/// never waits; under load an ACK waits at most this much longer, and every fsync carries
/// more leases.
const COMMIT_DELAY: Duration = Duration::from_millis(4);
const BUSY: Duration = Duration::from_millis(20);

/// One call queued for the writer thread: its work, run inside the shared transaction, and
/// its caller, answered once that transaction has committed (or failed).
trait Job: Send {
    /// Runs the work in its own savepoint of the open transaction, keeping the outcome.
    fn run(&mut self, conn: &rusqlite::Connection);
    /// The shared transaction could not begin or commit: the job fails with that error.
    fn fail(&mut self, failure: &SqliteFailure);
    /// Sends the outcome to the caller.
    fn answer(self: Box<Self>);
}

/// A [`Job`] running `work` and answering its result.
struct Call<T, F> {
    work: Option<F>,
    outcome: Option<Result<T, StoreError>>,
    done: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Call<T, F>
where
    T: Send,
    F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &rusqlite::Connection) {
        if let Some(work) = self.work.take() {
            self.outcome = Some(in_savepoint(conn, work));
        }
    }

    fn fail(&mut self, failure: &SqliteFailure) {
        self.outcome = Some(Err(failure.clone().into_store()));
    }

    fn answer(self: Box<Self>) {
        let outcome = self.outcome.unwrap_or_else(|| Err(writer_stopped()));
        let _ = self.done.send(outcome);
    }
}

enum WriteJob {
    Run(Box<dyn Job>),
    /// Close the connection (after the jobs queued before) and say so.
    Stop(oneshot::Sender<()>),
}

/// The handle of the writer thread; the thread ends when this is dropped or stopped.
pub(super) struct Writer {
    jobs: mpsc::Sender<WriteJob>,
}

fn writer_stopped() -> StoreError {
    StoreError::Batch("the SQLite writer has stopped (store closed)".into())
}

/// Opens the writer thread's connection: WAL (already set by the migration's connection),
/// `synchronous=FULL` (the commit is on disk before a caller hears of it), foreign keys and
/// the same busy timeout as the sqlx connections.
pub(super) fn open_writer_connection(path: &Path) -> Result<rusqlite::Connection, rusqlite::Error> {
    let conn = open_rusqlite(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))?;
    debug_assert_eq!(mode, "wal");
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Statement journals and sorts in memory: no temporary files on the commit path.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl Writer {
    pub(super) fn start(path: &Path) -> Result<Writer, StoreError> {
        let conn = open_writer_connection(path)
            .map_err(|e| open_error(path, format!("opening the writer connection: {e}")))?;
        let (jobs, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run_writer(conn, rx))
            .map_err(|e| open_error(path, format!("cannot start the writer thread: {e}")))?;
        Ok(Writer { jobs })
    }

    /// Runs `work` on the writer thread, atomically (its own savepoint) and durably: the
    /// answer comes only after the transaction carrying it has committed.
    pub(super) async fn call<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (done, wait) = oneshot::channel();
        let job = Call {
            work: Some(work),
            outcome: None,
            done,
        };
        self.jobs
            .send(WriteJob::Run(Box::new(job)))
            .map_err(|_| writer_stopped())?;
        wait.await.unwrap_or_else(|_| Err(writer_stopped()))
    }

    pub(super) async fn stop(&self) {
        let (done, wait) = oneshot::channel();
        if self.jobs.send(WriteJob::Stop(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// Runs one of the shared host writes (`store/writes.rs`) to its end on this thread. Its
/// statements are rusqlite calls that are finished when they return (the SQLite `WriteTx`
/// never waits on anything), so the future completes at its first poll; should one ever be
/// pending, the job fails (its savepoint is rolled back) rather than block the thread.
pub(super) fn ready<T>(work: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    let mut work = std::pin::pin!(work);
    match work.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => Err(StoreError::Batch(
            "a write on the SQLite writer thread did not finish at once".into(),
        )),
    }
}

/// The writer thread: waits for a job, takes everything queued behind it, commits it all
/// in one transaction and answers each job.
fn run_writer(conn: rusqlite::Connection, rx: mpsc::Receiver<WriteJob>) {
    let mut jobs: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_JOBS_PER_COMMIT);
    let mut last_commit: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        let busy = last_commit.is_some_and(|t| t.elapsed() < BUSY);
        let stop = gather(first, &rx, busy, &mut jobs);
        if !jobs.is_empty() {
            metrics::histogram!("bootgate_sqlite_commit_jobs").record(jobs.len() as f64);
            commit_jobs(&conn, &mut jobs);
            last_commit = Some(Instant::now());
            for job in jobs.drain(..) {
                job.answer();
            }
        }
        if let Some(done) = stop {
            // Jobs sent after the stop are answered "stopped" by dropping them.
            drop(rx);
            drop(conn);
            let _ = done.send(());
            return;
        }
    }
}

/// Collects `first` and the jobs queued behind it into `jobs` (up to
/// [`MAX_JOBS_PER_COMMIT`]; while `busy`, waiting up to [`COMMIT_DELAY`] for more). Returns
/// the stop request if one came: the jobs before it are still committed.
fn gather(
    first: WriteJob,
    rx: &mpsc::Receiver<WriteJob>,
    busy: bool,
    jobs: &mut Vec<Box<dyn Job>>,
) -> Option<oneshot::Sender<()>> {
    let deadline = Instant::now() + COMMIT_DELAY;
    let mut next = Some(first);
    while let Some(job) = next.take() {
        match job {
            WriteJob::Stop(done) => return Some(done),
            WriteJob::Run(job) => jobs.push(job),
        }
        if jobs.len() < MAX_JOBS_PER_COMMIT {
            next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(_) if busy => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    rx.recv_timeout(left).ok()
                }
                Err(_) => None,
            };
        }
    }
    None
}

/// Runs `jobs` in one transaction, each inside its own savepoint (a failing job is rolled
/// back alone), and commits. If the transaction cannot begin or commit, every job fails
/// with its error.
fn commit_jobs(conn: &rusqlite::Connection, jobs: &mut [Box<dyn Job>]) {
    let fail_all = |jobs: &mut [Box<dyn Job>], e: &rusqlite::Error| {
        let failure = SqliteFailure::of(e);
        for job in jobs {
            job.fail(&failure);
        }
    };
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        return fail_all(jobs, &e);
    }
    for job in jobs.iter_mut() {
        job.run(conn);
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        fail_all(jobs, &e);
    }
}

/// Runs `f` inside a savepoint: kept on success, rolled back (alone) on failure.
fn in_savepoint<T>(
    conn: &rusqlite::Connection,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("SAVEPOINT job")?;
    match f(conn) {
        Ok(v) => {
            conn.execute_batch("RELEASE job")?;
            Ok(v)
        }
        Err(e) => {
            conn.execute_batch("ROLLBACK TO job; RELEASE job")?;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_connection_is_wal_full_sync_with_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        drop(rusqlite::Connection::open(&path).unwrap());
        let conn = open_writer_connection(&path).unwrap();
        let get = |name: &str| -> String {
            conn.query_row(&format!("PRAGMA {name}"), [], |r| {
                r.get::<_, String>(0)
                    .or_else(|_| r.get::<_, i64>(0).map(|n| n.to_string()))
            })
            .unwrap()
        };
        assert_eq!(get("journal_mode"), "wal");
        assert_eq!(get("synchronous"), "2", "FULL");
        assert_eq!(get("foreign_keys"), "1");
        assert_eq!(get("busy_timeout"), "5000");
        assert_eq!(get("temp_store"), "2", "MEMORY");
    }
}
