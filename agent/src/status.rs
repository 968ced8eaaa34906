//! What the agent reports about a pod: its phase, conditions and each
//! container's state, computed from the runtime's containers (the truth
//! on the node), the probes' results and the worker's waiting reasons.
//! Pure functions, so every rule is unit-tested.

use skiff::Resource as _;
use std::collections::HashMap;
use std::time::SystemTime;

use skiff::pb::core::v1::{
    Container as PodContainer, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIp, Pod, PodCondition, PodIp, PodStatus,
};
use skiff::wkt::Timestamp;
use skiff_runtime::{Container, State, labels};

use crate::containers::Role;

/// What the prober last concluded about one running container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeState {
    /// Readiness passed (the threshold of successes reached).
    pub ready: bool,
    /// Startup passed.
    pub started: bool,
    /// Liveness (or startup) failed its threshold: restart it.
    pub failed: bool,
}

/// The instances of one container of the pod, newest first.
pub fn instances<'a>(containers: &'a [Container], role: Role, name: &str) -> Vec<&'a Container> {
    let mut found: Vec<&Container> = containers
        .iter()
        .filter(|c| {
            c.label(labels::ROLE) == role.as_str() && c.label(labels::CONTAINER_NAME) == name
        })
        .collect();
    found.sort_by_key(|c| std::cmp::Reverse(attempt(c)));
    found
}

/// Which start of its container this instance is.
pub fn attempt(c: &Container) -> u32 {
    c.label(labels::ATTEMPT).parse().unwrap_or(0)
}

fn timestamp(t: Option<SystemTime>) -> Option<Timestamp> {
    let d = t?.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    Some(Timestamp {
        seconds: d.as_secs() as i64,
        nanos: 0,
    })
}

/// Kubernetes' terminated reason for an exit.
fn terminated_reason(exit_code: i64, oom_killed: bool) -> &'static str {
    if oom_killed {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

fn state_of(c: &Container, scheme: &str, messages: &HashMap<String, String>) -> ContainerState {
    match &c.state {
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: timestamp(*started_at),
            }),
            ..Default::default()
        },
        State::Exited {
            exit_code,
            started_at,
            finished_at,
            oom_killed,
        } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code as i32,
                signal: if *exit_code > 128 {
                    (*exit_code - 128) as i32
                } else {
                    0
                },
                reason: terminated_reason(*exit_code, *oom_killed).into(),
                started_at: timestamp(*started_at),
                finished_at: timestamp(*finished_at),
                container_id: format!("{scheme}://{}", c.id),
                message: messages.get(&c.id).cloned().unwrap_or_default(),
            }),
            ..Default::default()
        },
        State::Created | State::Unknown(_) => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            }),
            ..Default::default()
        },
    }
}

fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: reason.into(),
            message: message.into(),
        }),
        ..Default::default()
    }
}

/// The inputs of a status computation.
pub struct Observed<'a> {
    /// The pod as the API has it.
    pub pod: &'a Pod,
    /// Its containers on the node.
    pub containers: &'a [Container],
    /// Probe results by container id.
    pub probes: &'a HashMap<String, ProbeState>,
    /// Why a container is waiting, by container name (set by the sync:
    /// ErrImagePull, CrashLoopBackOff, CreateContainerConfigError, ...).
    pub waiting: &'a HashMap<String, (String, String)>,
    /// The pod's IP, once its sandbox has one.
    pub pod_ip: Option<&'a str>,
    /// The node's IP.
    pub host_ip: &'a str,
    /// When the agent first took the pod on.
    pub start_time: Timestamp,
    /// The runtime's scheme for container ids (`docker`).
    pub scheme: &'a str,
    /// Termination messages of exited containers, by container id.
    pub messages: &'a HashMap<String, String>,
}

/// One container's status.
fn container_status(o: &Observed<'_>, spec: &PodContainer, role: Role) -> ContainerStatus {
    let found = instances(o.containers, role, &spec.name);
    let latest = found.first().copied();
    let mut status = ContainerStatus {
        name: spec.name.clone(),
        image: spec.image.clone(),
        state: Some(waiting(
            match role {
                Role::App => "ContainerCreating",
                Role::Init => "PodInitializing",
            },
            "",
        )),
        ..Default::default()
    };
    if let Some(c) = latest {
        status.state = Some(state_of(c, o.scheme, o.messages));
        status.restart_count = attempt(c) as i32;
        status.image_id = c.image_id.clone();
        status.container_id = format!("{}://{}", o.scheme, c.id);
        let running = matches!(c.state, State::Running { .. });
        let probe = o.probes.get(&c.id).copied().unwrap_or_default();
        let started = running && (spec.startup_probe.is_none() || probe.started);
        status.started = Some(started);
        status.ready =
            role == Role::App && started && (spec.readiness_probe.is_none() || probe.ready);
        // The instance before this one, when it ended.
        let previous =
            if matches!(c.state, State::Exited { .. }) && o.waiting.contains_key(&spec.name) {
                Some(c)
            } else {
                found.get(1).copied()
            };
        if let Some(p) = previous.filter(|p| matches!(p.state, State::Exited { .. })) {
            status.last_state = Some(state_of(p, o.scheme, o.messages));
        }
    }
    if let Some((reason, message)) = o.waiting.get(&spec.name) {
        status.state = Some(waiting(reason, message));
        status.ready = false;
    }
    status
}

/// Whether a container that exited with `exit_code` is started again.
pub fn restarts(policy: &str, exit_code: i64) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// The pod's status, keeping the condition timestamps of `previous` where
/// a condition did not change (so an unchanged pod writes nothing).
pub fn compute(o: &Observed<'_>) -> PodStatus {
    let spec = o.pod.spec.clone().unwrap_or_default();
    let previous = o.pod.status.clone().unwrap_or_default();
    let policy = spec.restart_policy.as_str();
    // As the kubelet: an init container that completed is ready.
    let init_statuses: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .map(|c| {
            let mut status = container_status(o, c, Role::Init);
            status.ready = status
                .state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .is_some_and(|t| t.exit_code == 0);
            status
        })
        .collect();
    let statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(o, c, Role::App))
        .collect();

    let exited = |s: &ContainerStatus| {
        s.state
            .as_ref()
            .and_then(|st| st.terminated.as_ref())
            .map(|t| t.exit_code)
    };
    let init_failed = spec
        .init_containers
        .iter()
        .zip(&init_statuses)
        .any(|(_, s)| {
            exited(s).is_some_and(|code| code != 0 && !restarts(policy, i64::from(code)))
        });
    let initialized = init_statuses.iter().all(|s| exited(s) == Some(0));
    let any_running = statuses
        .iter()
        .any(|s| s.state.as_ref().is_some_and(|st| st.running.is_some()));
    let all_done = !statuses.is_empty()
        && statuses
            .iter()
            .all(|s| exited(s).is_some_and(|code| !restarts(policy, i64::from(code))));
    let restarting = statuses.iter().any(|s| {
        s.restart_count > 0
            || s.last_state
                .as_ref()
                .is_some_and(|l| l.terminated.is_some())
    });
    let phase = if init_failed {
        "Failed"
    } else if all_done {
        if statuses.iter().all(|s| exited(s) == Some(0)) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if initialized && (any_running || restarting) {
        "Running"
    } else {
        "Pending"
    };
    let containers_ready = initialized && statuses.iter().all(|s| s.ready);
    let now = skiff::time::now_seconds();
    let condition = |kind: &str, ok: bool, reason: &str| {
        let status = if ok { "True" } else { "False" };
        let before = previous.conditions.iter().find(|c| c.r#type == kind);
        PodCondition {
            r#type: kind.into(),
            status: status.into(),
            last_transition_time: before
                .filter(|c| c.status == status)
                .and_then(|c| c.last_transition_time)
                .or(Some(now)),
            reason: if ok { String::new() } else { reason.into() },
            ..Default::default()
        }
    };
    let scheduled = previous
        .conditions
        .iter()
        .find(|c| c.r#type == "PodScheduled")
        .cloned()
        .unwrap_or_else(|| condition("PodScheduled", true, ""));
    let not_ready_reason = if phase == "Succeeded" || phase == "Failed" {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    // Readiness gates: conditions other writers set; Ready waits for all
    // of them to be True (the kubelet's words when one is not).
    let gates: Vec<&str> = o
        .pod
        .spec
        .as_ref()
        .map(|s| {
            s.readiness_gates
                .iter()
                .map(|g| g.condition_type.as_str())
                .collect()
        })
        .unwrap_or_default();
    let gate_problem = gates.iter().find_map(|gate| {
        match previous.conditions.iter().find(|c| c.r#type == *gate) {
            None => Some(format!(
                "corresponding condition of pod readiness gate \"{gate}\" does not exist."
            )),
            Some(c) if c.status != "True" => Some(format!(
                "the status of pod readiness gate \"{gate}\" is not \"True\", but {}",
                c.status
            )),
            Some(_) => None,
        }
    });
    let mut ready = condition("Ready", containers_ready, not_ready_reason);
    if containers_ready && let Some(message) = &gate_problem {
        ready = condition("Ready", false, "ReadinessGatesNotReady");
        ready.message = message.clone();
    }
    let mut conditions = vec![
        scheduled,
        condition("Initialized", initialized, "ContainersNotInitialized"),
        condition("ContainersReady", containers_ready, not_ready_reason),
        ready,
    ];
    // Conditions others wrote (readiness gates, DisruptionTarget, ...)
    // stay as they are.
    const OWN: [&str; 4] = ["PodScheduled", "Initialized", "ContainersReady", "Ready"];
    conditions.extend(
        previous
            .conditions
            .iter()
            .filter(|c| !OWN.contains(&c.r#type.as_str()))
            .cloned(),
    );
    let pod_ip = o.pod_ip.map(str::to_string).unwrap_or_default();
    PodStatus {
        phase: phase.into(),
        conditions,
        host_ip: o.host_ip.to_string(),
        host_ips: vec![HostIp {
            ip: o.host_ip.to_string(),
        }],
        pod_ips: if pod_ip.is_empty() {
            vec![]
        } else {
            vec![PodIp { ip: pod_ip.clone() }]
        },
        pod_ip,
        start_time: previous.start_time.or(Some(o.start_time)),
        init_container_statuses: init_statuses,
        container_statuses: statuses,
        qos_class: previous.qos_class.clone(),
        nominated_node_name: previous.nominated_node_name.clone(),
        observed_generation: o.pod.generation(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use skiff::pb::core::v1::PodSpec;

    fn pod(policy: &str, names: &[&str]) -> Pod {
        Pod {
            spec: Some(PodSpec {
                restart_policy: policy.into(),
                containers: names
                    .iter()
                    .map(|n| PodContainer {
                        name: n.to_string(),
                        image: "img".into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container(name: &str, attempt: u32, state: State) -> Container {
        Container {
            id: format!("{name}-{attempt}"),
            name: name.into(),
            image: "img".into(),
            image_id: "sha256:1".into(),
            labels: BTreeMap::from([
                (labels::ROLE.to_string(), "app".to_string()),
                (labels::CONTAINER_NAME.to_string(), name.to_string()),
                (labels::ATTEMPT.to_string(), attempt.to_string()),
            ]),
            state,
            ip: None,
            created: 0,
        }
    }

    fn exited(code: i64) -> State {
        State::Exited {
            exit_code: code,
            started_at: None,
            finished_at: None,
            oom_killed: false,
        }
    }

    fn running() -> State {
        State::Running { started_at: None }
    }

    fn compute_for(
        pod: &Pod,
        containers: &[Container],
        waiting: &HashMap<String, (String, String)>,
    ) -> PodStatus {
        compute(&Observed {
            pod,
            containers,
            probes: &HashMap::new(),
            waiting,
            pod_ip: Some("10.0.0.2"),
            host_ip: "127.0.0.1",
            start_time: skiff::time::now_seconds(),
            scheme: "docker",
            messages: &HashMap::new(),
        })
    }

    #[test]
    fn a_running_pod_is_ready_and_reports_its_restarts() {
        let p = pod("Always", &["a"]);
        let cs = [container("a", 0, exited(137)), container("a", 1, running())];
        let s = compute_for(&p, &cs, &HashMap::new());
        assert_eq!(s.phase, "Running");
        assert_eq!(s.pod_ip, "10.0.0.2");
        let a = &s.container_statuses[0];
        assert_eq!(a.restart_count, 1);
        assert!(a.ready);
        assert_eq!(a.container_id, "docker://a-1");
        let last = a.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((last.exit_code, last.reason.as_str()), (137, "Error"));
        assert!(
            s.conditions
                .iter()
                .any(|c| c.r#type == "Ready" && c.status == "True")
        );
    }

    #[test]
    fn a_completed_init_container_is_ready_and_a_failed_one_is_not() {
        let mut p = pod("Never", &["a"]);
        p.spec.as_mut().unwrap().init_containers = vec![PodContainer {
            name: "init".into(),
            image: "img".into(),
            ..Default::default()
        }];
        let mut init = container("init", 0, exited(0));
        init.labels
            .insert(labels::ROLE.to_string(), "init".to_string());
        let s = compute_for(
            &p,
            &[init.clone(), container("a", 0, running())],
            &HashMap::new(),
        );
        assert!(s.init_container_statuses[0].ready);
        init.state = exited(1);
        let s = compute_for(&p, &[init], &HashMap::new());
        assert!(!s.init_container_statuses[0].ready);
    }

    #[test]
    fn never_restarted_failures_end_the_pod_failed_and_successes_succeeded() {
        let p = pod("Never", &["a", "b"]);
        let failed = compute_for(
            &p,
            &[container("a", 0, exited(0)), container("b", 0, exited(1))],
            &HashMap::new(),
        );
        assert_eq!(failed.phase, "Failed");
        let ok = compute_for(
            &p,
            &[container("a", 0, exited(0)), container("b", 0, exited(0))],
            &HashMap::new(),
        );
        assert_eq!(ok.phase, "Succeeded");
        let p = pod("OnFailure", &["a"]);
        let retrying = compute_for(&p, &[container("a", 0, exited(1))], &HashMap::new());
        assert_ne!(retrying.phase, "Failed", "OnFailure restarts a failure");
    }

    #[test]
    fn a_waiting_reason_shows_and_the_dead_instance_is_the_last_state() {
        let p = pod("Always", &["a"]);
        let waiting = HashMap::from([(
            "a".to_string(),
            ("CrashLoopBackOff".to_string(), "back-off 10s".to_string()),
        )]);
        let s = compute_for(&p, &[container("a", 2, exited(1))], &waiting);
        let a = &s.container_statuses[0];
        assert_eq!(
            a.state.as_ref().unwrap().waiting.as_ref().unwrap().reason,
            "CrashLoopBackOff"
        );
        assert_eq!(
            a.last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            1
        );
        assert_eq!(a.restart_count, 2);
        assert!(!a.ready);
    }

    #[test]
    fn pods_without_containers_yet_are_pending() {
        let p = pod("Always", &["a"]);
        let s = compute_for(&p, &[], &HashMap::new());
        assert_eq!(s.phase, "Pending");
        let w = s.container_statuses[0]
            .state
            .as_ref()
            .unwrap()
            .waiting
            .as_ref()
            .unwrap();
        assert_eq!(w.reason, "ContainerCreating");
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_times() {
        let mut p = pod("Always", &["a"]);
        let cs = [container("a", 0, running())];
        let first = compute_for(&p, &cs, &HashMap::new());
        let mut old = first.clone();
        for c in &mut old.conditions {
            c.last_transition_time = Some(Timestamp {
                seconds: 5,
                nanos: 0,
            });
        }
        p.status = Some(old);
        let second = compute_for(&p, &cs, &HashMap::new());
        assert!(
            second
                .conditions
                .iter()
                .all(|c| c.last_transition_time.unwrap().seconds == 5)
        );
    }

    #[test]
    fn readiness_gates_hold_ready_until_their_conditions_are_true() {
        let mut p = pod("Always", &["a"]);
        p.spec.as_mut().unwrap().readiness_gates = vec![skiff::pb::core::v1::PodReadinessGate {
            condition_type: "example.com/lb-ready".into(),
        }];
        let cs = [container("a", 0, running())];
        let ready = |s: &PodStatus| {
            s.conditions
                .iter()
                .find(|c| c.r#type == "Ready")
                .cloned()
                .unwrap()
        };
        let first = compute_for(&p, &cs, &HashMap::new());
        let r = ready(&first);
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "ReadinessGatesNotReady")
        );
        assert_eq!(
            r.message,
            "corresponding condition of pod readiness gate \"example.com/lb-ready\" does not exist."
        );
        // The load balancer says so: Ready, and its condition is kept.
        let mut status = first.clone();
        status.conditions.push(PodCondition {
            r#type: "example.com/lb-ready".into(),
            status: "True".into(),
            ..Default::default()
        });
        p.status = Some(status);
        let second = compute_for(&p, &cs, &HashMap::new());
        assert_eq!(ready(&second).status, "True");
        assert!(
            second
                .conditions
                .iter()
                .any(|c| c.r#type == "example.com/lb-ready" && c.status == "True")
        );
    }
}
