//! The load generator's threads: `--threads` single-threaded Tokio runtimes ("shards") instead of
//! one work-stealing multi-thread runtime. Shard 0 is the main runtime (it also runs the ramp,
//! the `/metrics` scrapes and the report); shards 1.. each get their own thread.
//!
//! Why: the generator's dominant cost is not its own logic but the loopback TCP write of every
//! frame. A pacer sends the frames of one phase slot (all on one HTTP/2 connection) in one go; on a
//! current-thread runtime, woken tasks run in FIFO order, so every stream's pipe task hands its
//! frame to h2 *before* the connection task runs, and the connection flushes them in one `writev`.
//! The multi-thread scheduler's LIFO slot instead runs the connection task right after each pipe
//! task, one `writev` (and one loopback TCP segment) per frame: measured at 1000 sessions, ~40 000
//! writes/s against ~3 500. The frames still leave at the same instants; only the syscalls differ.
//!
//! A connection, its pacer and its sessions all live on one shard (the connection's tasks run where
//! it was opened), so there is no cross-thread wake-up on the per-frame path.

use anyhow::{Context, Result};
use std::future::Future;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Shards {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Shards {
    /// Shard 0 is the calling (current-thread) runtime; starts `n - 1` more, each on its own thread.
    pub fn start(n: usize) -> Result<Shards> {
        let mut s = Shards {
            handles: vec![Handle::current()],
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for k in 1..n.max(1) {
            let rt = Builder::new_current_thread().enable_all().build()?;
            s.handles.push(rt.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            s.stops.push(stop);
            s.threads.push(
                std::thread::Builder::new()
                    .name(format!("loadgen-shard-{k}"))
                    // A current-thread runtime only runs its tasks while it is driven.
                    .spawn(move || rt.block_on(async move { _ = stopped.await }))
                    .context("starting a load generator thread")?,
            );
        }
        Ok(s)
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Runs `f` on shard `k` (modulo the shard count).
    pub fn spawn<F>(&self, k: usize, f: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handles[k % self.handles.len()].spawn(f)
    }

    /// Stops the extra threads (dropping whatever still runs on them) and waits for them.
    pub fn shutdown(self) {
        drop(self.stops);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
