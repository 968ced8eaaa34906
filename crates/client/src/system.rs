//! An actix System on a thread of its own, with a multi-threaded tokio
//! runtime for what its actors spawn (informers, API calls): how the
//! controller manager, the scheduler and the agent's pod workers run their
//! actors beside the process's own runtime.

/// A running actor system: its handle, what was started in it, and its
/// thread (ended once the system is stopped).
pub struct Spawned<T> {
    /// The system, to stop it.
    pub system: actix::System,
    /// What `start` returned (actors' addresses: a supervisor restarts its
    /// actor only while someone holds its address).
    pub started: T,
    /// The system's thread.
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts a system on a thread named `name` (a runtime of
/// `worker_threads` threads, or one per core) and runs `start` in it.
///
/// # Errors
/// The thread could not be made, or the system did not start.
pub fn spawn<T: Send + 'static>(
    name: &str,
    worker_threads: Option<usize>,
    start: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<Spawned<T>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let runtime_name = name.to_string();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let system = actix::System::with_tokio_rt(move || {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                if let Some(n) = worker_threads {
                    builder.worker_threads(n);
                }
                builder
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("building the {runtime_name} runtime: {e}"))
            });
            system.block_on(async move {
                let _ = tx.send((actix::System::current(), start()));
            });
            let _ = system.run();
        })?;
    let (system, started) = rx
        .recv()
        .map_err(|_| std::io::Error::other(format!("the {name} actor system did not start")))?;
    Ok(Spawned {
        system,
        started,
        thread,
    })
}

/// What a [`Restarting`] actor runs each time it starts.
pub type Run =
    std::sync::Arc<dyn Fn() -> futures::future::LocalBoxFuture<'static, ()> + Send + Sync>;

/// A long-running future as a supervised actor: when the future ends, or
/// panics, the actor stops and its supervisor (`actix::Supervisor::start`)
/// starts it again after a pause that doubles with each restart — 0, 1,
/// 2, 4 … 30 s. The future is made after the pause and inside the panic
/// catch, so a panic while it is being set up restarts it too. The
/// controller manager runs each controller so, and `skiff scheduler` its
/// scheduler.
pub struct Restarting {
    name: &'static str,
    run: Run,
    /// Restarts so far (shared with whoever reports them).
    restarts: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Told the restart count at each restart (metrics).
    on_restart: Option<Box<dyn Fn(u64) + Send>>,
}

impl Restarting {
    /// An actor running `run`, named `name` in its logs.
    pub fn new(name: &'static str, run: Run) -> Self {
        Self {
            name,
            run,
            restarts: Default::default(),
            on_restart: None,
        }
    }

    /// Counts restarts in `restarts` (shared with the caller).
    #[must_use]
    pub fn counting(mut self, restarts: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.restarts = restarts;
        self
    }

    /// Calls `f` with the restart count at each restart.
    #[must_use]
    pub fn on_restart(mut self, f: impl Fn(u64) + Send + 'static) -> Self {
        self.on_restart = Some(Box::new(f));
        self
    }
}

/// The pause before the `restarts`-th restart: 0, then 1, 2, 4 … 30 s.
pub fn restart_pause(restarts: u64) -> std::time::Duration {
    if restarts == 0 {
        std::time::Duration::ZERO
    } else {
        std::time::Duration::from_secs((1u64 << (restarts - 1).min(5)).min(30))
    }
}

impl actix::Actor for Restarting {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        use actix::{ActorContext as _, ActorFutureExt as _, AsyncContext as _, WrapFuture as _};
        use futures::FutureExt as _;
        let run = std::sync::Arc::clone(&self.run);
        let pause = restart_pause(self.restarts.load(std::sync::atomic::Ordering::Relaxed));
        let name = self.name;
        ctx.spawn(
            async move {
                tokio::time::sleep(pause).await;
                std::panic::AssertUnwindSafe(async move { run().await })
                    .catch_unwind()
                    .await
            }
            .into_actor(self)
            .map(move |result, _actor, ctx| {
                match result {
                    Ok(()) => tracing::warn!(actor = name, "stopped"),
                    Err(panic) => {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        tracing::error!(actor = name, panic = %what, "panicked");
                    }
                }
                ctx.stop();
            }),
        );
    }
}

impl actix::Supervised for Restarting {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        let n = self
            .restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if let Some(f) = &self.on_restart {
            f(n);
        }
        tracing::warn!(actor = self.name, restarts = n, "restarting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_doubling_to_thirty_seconds() {
        let secs: Vec<u64> = (0..9).map(|n| restart_pause(n).as_secs()).collect();
        assert_eq!(secs, [0, 1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn a_panicking_future_is_started_again_after_its_pause() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let runs = Arc::new(AtomicU64::new(0));
        let restarts = Arc::new(AtomicU64::new(0));
        let reported = Arc::new(AtomicU64::new(0));
        let system = actix::System::new();
        system.block_on({
            let (runs, restarts, reported) = (runs.clone(), restarts.clone(), reported.clone());
            async move {
                let counted = runs.clone();
                let run: Run = Arc::new(move || {
                    let n = counted.fetch_add(1, Ordering::SeqCst);
                    Box::pin(async move {
                        if n == 0 {
                            panic!("first run fails");
                        }
                        std::future::pending::<()>().await;
                    })
                });
                let _addr = actix::Supervisor::start(move |_| {
                    Restarting::new("test", run)
                        .counting(restarts)
                        .on_restart(move |n| reported.store(n, Ordering::SeqCst))
                });
                // The first restart pauses 1 s; wait for it (bounded).
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                while runs.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        });
        assert_eq!(runs.load(Ordering::SeqCst), 2, "run once, restarted once");
        assert_eq!(restarts.load(Ordering::SeqCst), 1);
        assert_eq!(reported.load(Ordering::SeqCst), 1);
    }
}
