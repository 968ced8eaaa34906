//! An in-memory runtime: containers are records whose state the test
//! drives ([`FakeRuntime::exit`]); every call is recorded. For unit tests
//! of the agent's pod logic and for simulated nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;

use crate::{
    Container, ContainerSpec, Error, ExecOutput, LogOptions, LogStream, PullPolicy, Result,
    Runtime, RuntimeInfo, SandboxSpec, State, labels,
};

/// A runtime that runs nothing.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Images "on the node".
    images: BTreeSet<String>,
    /// Containers by id.
    containers: BTreeMap<String, Container>,
    /// Every call, as `verb name-or-id`.
    calls: Vec<String>,
    /// Ids are this counter.
    next_id: u64,
    /// What each container "printed".
    logs: BTreeMap<String, Vec<u8>>,
    /// Exit codes that exec of a command (joined by spaces) returns.
    exec_results: BTreeMap<String, i64>,
    /// Usage counters by container id (zero when unset).
    stats: BTreeMap<String, crate::ContainerStats>,
}

impl FakeRuntime {
    /// A runtime with these images present.
    pub fn with_images(images: &[&str]) -> Self {
        let runtime = Self::default();
        runtime.lock().images = images.iter().map(|i| i.to_string()).collect();
        runtime
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Makes a running container exit with `code`, as a crash or a kill
    /// from outside would.
    pub fn exit(&self, id: &str, code: i64) {
        let mut inner = self.lock();
        if let Some(c) = inner.containers.get_mut(id) {
            let started_at = match c.state {
                State::Running { started_at } => started_at,
                _ => None,
            };
            c.state = State::Exited {
                exit_code: code,
                started_at,
                finished_at: Some(SystemTime::now()),
                oom_killed: false,
            };
        }
    }

    /// What exec of `command` (joined by spaces) exits with from now on.
    pub fn set_exec_result(&self, command: &str, code: i64) {
        self.lock().exec_results.insert(command.to_string(), code);
    }

    /// Sets a container's usage counters (what `stats` returns).
    pub fn set_stats(&self, id: &str, stats: crate::ContainerStats) {
        self.lock().stats.insert(id.to_string(), stats);
    }

    /// Appends to a container's log.
    pub fn write_log(&self, id: &str, text: &str) {
        self.lock()
            .logs
            .entry(id.to_string())
            .or_default()
            .extend_from_slice(text.as_bytes());
    }

    fn add(
        &self,
        name: &str,
        image: &str,
        labels: &BTreeMap<String, String>,
        state: State,
    ) -> String {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = format!("fake{:08}", inner.next_id);
        let mut labels = labels.clone();
        labels.insert(labels::MANAGED.into(), "true".into());
        let ip = (labels.get(labels::CONTAINER_NAME).map(String::as_str) == Some(labels::SANDBOX))
            .then(|| format!("10.244.0.{}", inner.next_id % 250 + 2));
        inner.containers.insert(
            id.clone(),
            Container {
                id: id.clone(),
                name: name.to_string(),
                image: image.to_string(),
                image_id: format!("sha256:{image}"),
                labels,
                state,
                ip,
                created: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64),
            },
        );
        id
    }

    fn record(&self, call: String) {
        self.lock().calls.push(call);
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    fn scheme(&self) -> &'static str {
        "fake"
    }

    async fn info(&self) -> Result<RuntimeInfo> {
        Ok(RuntimeInfo {
            version: "fake://0".into(),
            kernel_version: "fake".into(),
            os_image: "fake".into(),
            cpus: 4,
            memory_bytes: 16 << 30,
        })
    }

    async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<String> {
        self.record(format!("ensure_image {image}"));
        if self.lock().images.contains(image) {
            Ok(format!("sha256:{image}"))
        } else if policy == PullPolicy::Never {
            Err(Error::ImageNeverPull(image.to_string()))
        } else {
            Err(Error::ImagePull {
                image: image.to_string(),
                message: "no registry in a fake runtime".into(),
            })
        }
    }

    async fn image_user(&self, image: &str) -> Result<String> {
        if self.lock().images.contains(image) {
            Ok(String::new())
        } else {
            Err(Error::NotFound(format!("image {image:?}")))
        }
    }

    async fn run_sandbox(&self, spec: &SandboxSpec) -> Result<String> {
        self.record(format!("run_sandbox {}", spec.name));
        let state = State::Running {
            started_at: Some(SystemTime::now()),
        };
        Ok(self.add(&spec.name, "pause", &spec.labels, state))
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        self.record(format!("create {}", spec.name));
        if !self.lock().containers.contains_key(&spec.sandbox_id) {
            return Err(Error::NotFound(format!("sandbox {}", spec.sandbox_id)));
        }
        Ok(self.add(&spec.name, &spec.image, &spec.labels, State::Created))
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.record(format!("start {id}"));
        let mut inner = self.lock();
        let c = inner
            .containers
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        c.state = State::Running {
            started_at: Some(SystemTime::now()),
        };
        Ok(())
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<()> {
        self.record(format!("stop {id}"));
        if matches!(
            self.lock().containers.get(id).map(|c| &c.state),
            Some(State::Running { .. })
        ) {
            // SIGTERM: 128 + 15.
            self.exit(id, 143);
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.record(format!("remove {id}"));
        self.lock().containers.remove(id);
        Ok(())
    }

    async fn list(&self, pod_uid: Option<&str>) -> Result<Vec<Container>> {
        let inner = self.lock();
        let all = inner.containers.values();
        Ok(all
            .filter(|c| pod_uid.is_none_or(|uid| c.label(labels::POD_UID) == uid))
            .cloned()
            .collect())
    }

    async fn exec(&self, id: &str, command: &[String], _timeout: Duration) -> Result<ExecOutput> {
        let joined = command.join(" ");
        self.record(format!("exec {id} {joined}"));
        let inner = self.lock();
        match inner.containers.get(id).map(|c| &c.state) {
            Some(State::Running { .. }) => Ok(ExecOutput {
                exit_code: inner.exec_results.get(&joined).copied().unwrap_or(0),
                ..Default::default()
            }),
            Some(_) => Err(Error::Runtime(format!("container {id} is not running"))),
            None => Err(Error::NotFound(id.to_string())),
        }
    }

    async fn stats(&self, id: &str) -> Result<crate::ContainerStats> {
        let inner = self.lock();
        match inner.containers.get(id).map(|c| &c.state) {
            Some(State::Running { .. }) => Ok(inner.stats.get(id).copied().unwrap_or_default()),
            Some(_) => Err(Error::Runtime(format!("container {id} is not running"))),
            None => Err(Error::NotFound(id.to_string())),
        }
    }

    async fn logs(&self, id: &str, _options: &LogOptions) -> Result<LogStream> {
        let inner = self.lock();
        if !inner.containers.contains_key(id) {
            return Err(Error::NotFound(id.to_string()));
        }
        let text = inner.logs.get(id).cloned().unwrap_or_default();
        Ok(futures::stream::once(async move { Ok(bytes::Bytes::from(text)) }).boxed())
    }
}
