//! Skiff's scheduler: binds pending pods to nodes.
//!
//! It is an API client like any other: informers mirror pods and nodes,
//! and each decision is one write, through the pods' binding subresource.
//! With leader election, several schedulers may run and one schedules.
//!
//! # Layout
//!
//! - [`framework`]: the Filter and Score plugin traits and the node view.
//! - [`plugins`]: one module per plugin, and the registry of plugins by
//!   name.
//! - [`profile`]: which plugins run, what weights.
//! - [`preemption`]: which lower-priority pods to remove for a pod that
//!   fits nowhere.
//! - [`scheduler`]: the loop, the cache of assumed pods, the retry queue
//!   (in `scheduler/`: `cache`, `queue`, `cycle`, `preempt`, `report`,
//!   `metrics`).
//! - [`run_supervised`]: all of it as a supervised
//!   [`Restarting`](skiff_client::system::Restarting) actor (restarted,
//!   after a growing pause, when it fails or panics).

use std::time::Duration;

use skiff_client::leader::{self, LeaderConfig};

pub mod framework;
pub mod plugins;
pub mod preemption;
pub mod profile;
pub mod scheduler;

pub use profile::{Profile, ProfileConfig};

pub use skiff::names::DEFAULT_SCHEDULER;

/// How to run the scheduler.
#[derive(Debug, Clone)]
pub struct Config {
    /// The API server, `https://127.0.0.1:6443` (`http://` when it runs
    /// `--insecure`).
    pub server: String,
    /// The CA to trust and the certificate to present (None: plaintext).
    pub tls: Option<skiff_client::ClientTls>,
    /// Pods with this spec.schedulerName are ours.
    pub scheduler_name: String,
    /// Plugins and weights.
    pub profile: ProfileConfig,
    /// Campaign for the `kube-system/<scheduler name>` lease and schedule
    /// only while holding it.
    pub leader_elect: bool,
    /// This process's identity in the election.
    pub identity: String,
    /// How long the lease lasts unrenewed; the leader renews every
    /// fifth of it and steps down after two thirds without renewal.
    pub lease_duration: Duration,
}

impl Config {
    /// The default profile, with leader election, against `server`.
    pub fn new(server: &str) -> Self {
        Self {
            server: server.to_string(),
            tls: None,
            scheduler_name: DEFAULT_SCHEDULER.to_string(),
            profile: ProfileConfig::default(),
            leader_elect: true,
            identity: format!(
                "{}_{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "skiff".into()),
                uuid::Uuid::new_v4().simple()
            ),
            lease_duration: Duration::from_secs(15),
        }
    }
}

/// Why the scheduler cannot run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The profile names unknown or misplaced plugins.
    #[error(transparent)]
    Profile(#[from] profile::ProfileError),
    /// The server address is malformed.
    #[error(transparent)]
    Address(#[from] skiff_client::AddressError),
    /// The actor system's thread could not start.
    #[error("starting the scheduler actor: {0}")]
    Thread(String),
}

/// Runs the scheduler until `shutdown` resolves: while leading (or always,
/// without leader election).
///
/// # Errors
/// A bad profile or server address; everything else is retried.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    Profile::build(&config.profile)?;
    let channel = skiff_client::connect_lazy_with(&config.server, config.tls.as_ref())?;
    let settings = scheduler::Settings {
        scheduler_name: config.scheduler_name.clone(),
    };
    tokio::pin!(shutdown);
    if !config.leader_elect {
        let s = scheduler::Scheduler::new(channel, settings, Profile::build(&config.profile)?);
        s.run(shutdown).await;
        return Ok(());
    }
    let mut lease = LeaderConfig::new("kube-system", &config.scheduler_name, &config.identity);
    lease.lease_duration = config.lease_duration;
    lease.renew_deadline = config.lease_duration * 2 / 3;
    lease.retry_period = config.lease_duration / 5;
    let mut leading = leader::elect(skiff_client::Api::new(channel.clone()), lease);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            changed = leading.wait_for(|l| *l) => if changed.is_err() { return Ok(()) },
        }
        tracing::info!(identity = %config.identity, "leading: scheduling");
        let s = scheduler::Scheduler::new(
            channel.clone(),
            settings.clone(),
            Profile::build(&config.profile)?,
        );
        let mut lost = leading.clone();
        tokio::select! {
            () = s.run(std::future::pending()) => {}
            _ = lost.wait_for(|l| !*l) => tracing::warn!("lost leadership: scheduling stopped"),
            () = &mut shutdown => return Ok(()),
        }
    }
}

/// Runs the scheduler as a supervised actor in its own actor system until
/// `shutdown` resolves (the `skiff scheduler` command).
///
/// # Errors
/// A bad profile or server address (checked before starting).
pub async fn run_supervised(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    Profile::build(&config.profile)?;
    skiff_client::connect_lazy_with(&config.server, config.tls.as_ref())?;
    // The actor lives on the system's thread; what it spawns (informers,
    // bindings) runs on its multi-threaded runtime. A supervisor restarts
    // its actor only while someone holds its address: held until shutdown.
    let skiff_client::system::Spawned {
        system,
        started: addr,
        thread,
    } = tokio::task::spawn_blocking(move || {
        skiff_client::system::spawn("skiff-scheduler", None, move || {
            let run: skiff_client::system::Run = std::sync::Arc::new(move || {
                let config = config.clone();
                Box::pin(async move {
                    if let Err(e) = run(config, std::future::pending()).await {
                        tracing::error!(error = %e, "scheduler failed");
                    }
                })
            });
            actix::Supervisor::start(move |_| {
                skiff_client::system::Restarting::new("scheduler", run)
            })
        })
    })
    .await
    .map_err(|e| Error::Thread(e.to_string()))?
    .map_err(|e| Error::Thread(e.to_string()))?;
    shutdown.await;
    drop(addr);
    system.stop();
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    Ok(())
}
