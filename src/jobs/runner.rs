//! The background job runner: worker OS threads that claim queued jobs from the store and run
//! them. Woken by `notify` when a job is enqueued, and by a short poll otherwise (jobs queued by
//! another process, such as the CLI).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{other_process_is_alive, run_job_until};
use crate::store::{Store, StoreError};

const POLL_INTERVAL: Duration = Duration::from_millis(500);

struct Shared {
    store: Store,
    wake: Mutex<bool>,
    signal: Condvar,
    /// Shared with running jobs, which stop at their next check when it is set.
    stopping: Arc<AtomicBool>,
}

pub struct JobRunner {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl JobRunner {
    /// Mark jobs orphaned by a crash as interrupted, then start `n_workers` worker threads.
    pub fn start(store: Store, n_workers: usize) -> Result<JobRunner, StoreError> {
        let interrupted = store.connect()?.mark_orphaned_jobs_interrupted(other_process_is_alive)?;
        if interrupted > 0 {
            tracing::warn!("{interrupted} job(s) left running by a stopped process are now marked interrupted");
        }
        let shared = Arc::new(Shared {
            store,
            wake: Mutex::new(false),
            signal: Condvar::new(),
            stopping: Arc::new(AtomicBool::new(false)),
        });
        let workers = (0..n_workers.max(1))
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("job-worker-{index}"))
                    .spawn(move || worker_loop(&shared))
                    .expect("spawning a job worker thread")
            })
            .collect();
        Ok(JobRunner { shared, workers: Mutex::new(workers) })
    }

    /// Wake a worker: a job was queued.
    pub fn notify(&self) {
        *self.shared.wake.lock().expect("runner lock") = true;
        self.shared.signal.notify_all();
    }

    /// Stop taking new jobs; running jobs stop at their next check (marked `interrupted`,
    /// resumable) and the workers are joined.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.notify();
        let workers = std::mem::take(&mut *self.workers.lock().expect("runner lock"));
        for worker in workers {
            let _ = worker.join();
        }
    }
}

impl Drop for JobRunner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker_loop(shared: &Shared) {
    let pid = std::process::id();
    while !shared.stopping.load(Ordering::SeqCst) {
        let claimed = shared.store.connect().and_then(|db| db.claim_next_job(pid));
        match claimed {
            Ok(Some(job)) => {
                if let Err(e) = run_job_until(&shared.store, job, None, Some(Arc::clone(&shared.stopping))) {
                    tracing::error!("recording a job's end failed: {e}");
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::error!("claiming a job failed: {e}"),
        }
        let mut woken = shared.wake.lock().expect("runner lock");
        if !*woken {
            woken = shared.signal.wait_timeout(woken, POLL_INTERVAL).expect("runner lock").0;
        }
        *woken = false;
    }
}
