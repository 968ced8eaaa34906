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
