//! Creating and starting one container of a pod, its postStart hook, and
//! what a failure leaves behind (the waiting reason, the backoff).

use std::sync::Arc;
use std::time::Duration;

use skiff::pb::core::v1::{Container as PodContainer, Pod};
use skiff_client::events::EventType;
use skiff_runtime::{Container, Error as RuntimeError, PullPolicy, State, labels};

use super::state::{Shared, SyncError, SyncState, grace_period};
use super::teardown::stop_container;
use crate::containers::{self, Placement, Role};
use crate::status::{self};
use crate::{lifecycle, security};

/// What starting a container of the pod needs.
pub(super) struct Starter<'a> {
    pub(super) shared: &'a Shared,
    pub(super) pod: &'a Arc<Pod>,
    pub(super) sandbox: &'a Container,
    pub(super) placement: &'a Placement,
    /// Why the pod's volumes are not ready, if they are not.
    pub(super) config_error: Option<&'a str>,
}

impl Starter<'_> {
    /// Records a failure to create or start a container as its waiting
    /// reason, and backs off before the next try.
    pub(super) async fn failed(
        &self,
        c: &PodContainer,
        reason: &str,
        message: String,
        state: &mut SyncState,
        soonest: &mut impl FnMut(Duration),
    ) {
        let delay = state.open_window(format!("start/{}", c.name), self.shared.backoff);
        self.shared
            .recorder
            .record(&**self.pod, EventType::Warning, "Failed", &message)
            .await;
        state
            .start_errors
            .insert(c.name.clone(), (reason.to_string(), message.clone()));
        state
            .waiting
            .insert(c.name.clone(), (reason.into(), message));
        soonest(delay);
    }

    /// Starts a container that was created but never started (the agent
    /// stopped in between); one that will not start is removed, so that a
    /// new attempt follows.
    pub(super) async fn start_created(
        &self,
        c: &PodContainer,
        instance: &Container,
        state: &mut SyncState,
        soonest: &mut impl FnMut(Duration),
    ) -> Result<(), SyncError> {
        if let Err(e) = self.shared.runtime.start(&instance.id).await {
            self.shared.runtime.remove(&instance.id).await?;
            self.failed(c, "RunContainerError", e.to_string(), state, soonest)
                .await;
        }
        Ok(())
    }

    /// Starts a new instance of a container: image, spec, create, start.
    /// A failure becomes the container's waiting reason (with a backoff),
    /// not an error of the sync, so the other containers go on.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start(
        &self,
        c: &PodContainer,
        role: Role,
        attempt: u32,
        older: &[&Container],
        state: &mut SyncState,
        soonest: &mut impl FnMut(Duration),
    ) -> Result<(), SyncError> {
        let (shared, pod) = (self.shared, self.pod);
        if let Some(error) = self.config_error {
            state.waiting.insert(
                c.name.clone(),
                ("CreateContainerConfigError".into(), error.to_string()),
            );
            soonest(shared.backoff.0);
            return Ok(());
        }
        // A recent failure to create or start: wait out its backoff.
        if let Some(left) = state.remaining(&format!("start/{}", c.name)) {
            if let Some(why) = state.start_errors.get(&c.name).cloned() {
                state.waiting.insert(c.name.clone(), why);
            }
            soonest(left);
            return Ok(());
        }
        let pull_key = format!("pull/{}", c.name);
        if let Some(left) = state.remaining(&pull_key) {
            let last = state
                .pull_errors
                .get(&c.name)
                .map_or(String::new(), |e| format!(": {e}"));
            let message = format!("Back-off pulling image {:?}{last}", c.image);
            state
                .waiting
                .insert(c.name.clone(), ("ImagePullBackOff".into(), message));
            soonest(left);
            return Ok(());
        }
        let policy = PullPolicy::for_image(&c.image_pull_policy, &c.image);
        match shared.runtime.ensure_image(&c.image, policy).await {
            Ok(_) => {
                state.backoff.remove(&pull_key);
                state.pull_errors.remove(&c.name);
            }
            Err(e @ RuntimeError::ImageNeverPull(_)) => {
                // As the kubelet: no pull to back off from; the image is
                // looked for again at the next sync.
                shared
                    .recorder
                    .record(
                        &**pod,
                        EventType::Warning,
                        "ErrImageNeverPull",
                        &e.to_string(),
                    )
                    .await;
                state
                    .waiting
                    .insert(c.name.clone(), ("ErrImageNeverPull".into(), e.to_string()));
                soonest(shared.backoff.0);
                return Ok(());
            }
            Err(e @ RuntimeError::ImagePull { .. }) => {
                let delay = state.open_window(pull_key, shared.backoff);
                shared
                    .recorder
                    .record(&**pod, EventType::Warning, "Failed", &e.to_string())
                    .await;
                state
                    .waiting
                    .insert(c.name.clone(), ("ErrImagePull".into(), e.to_string()));
                state.pull_errors.insert(c.name.clone(), e.to_string());
                soonest(delay);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        let mut spec = match containers::container_spec(
            pod,
            c,
            role,
            attempt,
            &self.sandbox.id,
            self.placement,
            &shared.data_dir,
            &shared.sources,
        )
        .await
        {
            Ok(spec) => spec,
            Err(e) => {
                shared
                    .recorder
                    .record(&**pod, EventType::Warning, "Failed", &e.to_string())
                    .await;
                state.waiting.insert(
                    c.name.clone(),
                    ("CreateContainerConfigError".into(), e.to_string()),
                );
                soonest(shared.backoff.0);
                return Ok(());
            }
        };
        // The kubelet's runAsNonRoot check, against the image's user.
        let verdict = if security::needs_image_user(pod, c) {
            match shared.runtime.image_user(&c.image).await {
                Ok(user) => security::verify_run_as_non_root(pod, c, &user),
                Err(e) => Err(e.to_string()),
            }
        } else {
            security::verify_run_as_non_root(pod, c, "")
        };
        if let Err(message) = verdict {
            shared
                .recorder
                .record(&**pod, EventType::Warning, "Failed", &message)
                .await;
            state.waiting.insert(
                c.name.clone(),
                ("CreateContainerConfigError".into(), message),
            );
            soonest(shared.backoff.0);
            return Ok(());
        }
        spec.labels.insert(
            labels::SANDBOX_ATTEMPT.into(),
            status::attempt(self.sandbox).to_string(),
        );
        // Keep one dead instance (for `logs --previous`), remove the rest.
        for old in older.iter().skip(1) {
            shared.runtime.remove(&old.id).await?;
        }
        let id = match shared.runtime.create(&spec).await {
            Ok(id) => id,
            Err(e) => {
                self.failed(c, "CreateContainerError", e.to_string(), state, soonest)
                    .await;
                return Ok(());
            }
        };
        if let Err(e) = shared.runtime.start(&id).await {
            shared.runtime.remove(&id).await?;
            self.failed(c, "RunContainerError", e.to_string(), state, soonest)
                .await;
            return Ok(());
        }
        // postStart, before the pod's next container starts; a failure
        // kills this one, which then restarts by the pod's policy.
        if let Some(post_start) = c.lifecycle.as_deref().and_then(|l| l.post_start.as_ref()) {
            let target = lifecycle::Target {
                runtime: &shared.runtime,
                container_id: &id,
                spec: c,
                pod,
                pod_ip: &self.placement.pod_ip,
            };
            if let Err(message) =
                lifecycle::run(post_start, &target, lifecycle::POST_START_LIMIT).await
            {
                shared
                    .recorder
                    .record(&**pod, EventType::Warning, "FailedPostStartHook", &message)
                    .await;
                // Killed as the kubelet kills it: its preStop hook first.
                let started = Container {
                    id: id.clone(),
                    name: spec.name.clone(),
                    image: spec.image.clone(),
                    image_id: String::new(),
                    labels: spec.labels.clone(),
                    state: State::Running { started_at: None },
                    ip: None,
                    created: 0,
                };
                stop_container(shared, pod, &started, grace_period(pod)).await?;
                soonest(Duration::ZERO);
                return Ok(());
            }
        }
        state.backoff.remove(&format!("start/{}", c.name));
        state.start_errors.remove(&c.name);
        let first_of_pod = role == Role::App
            && pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .is_some_and(|first| first.name == c.name);
        crate::metrics::container_started(pod, attempt, first_of_pod);
        let message = format!("Started container {}", c.name);
        shared
            .recorder
            .record(&**pod, EventType::Normal, "Started", &message)
            .await;
        Ok(())
    }
}
