//! The labels on every runtime object Skiff creates. They are the agent's
//! memory across restarts: a restarted agent lists by [`MANAGED`] and
//! [`NODE`] and knows each container's pod, name and attempt from the
//! rest, so it adopts instead of recreating.

/// `true` on everything Skiff created (tests and cleanup select on it).
pub const MANAGED: &str = "io.skiff.managed";
/// The node whose agent created it (several agents may share one engine).
pub const NODE: &str = "io.skiff.node";
/// The cluster of that node (its CA's public-key pin, or the server of a
/// plaintext cluster): two clusters' nodes of one name on one engine never
/// take each other's containers for their own.
pub const CLUSTER: &str = "io.skiff.cluster";
/// The pod's uid.
pub const POD_UID: &str = "io.skiff.pod.uid";
/// The pod's namespace.
pub const POD_NAMESPACE: &str = "io.skiff.pod.namespace";
/// The pod's name.
pub const POD_NAME: &str = "io.skiff.pod.name";
/// The container's name in the pod spec; [`SANDBOX`] for the sandbox.
pub const CONTAINER_NAME: &str = "io.skiff.container.name";
/// Which start of that container this is: 0, then 1 after one restart...
/// (the pod's restartCount survives an agent restart through it).
pub const ATTEMPT: &str = "io.skiff.container.attempt";
/// The pod's terminationGracePeriodSeconds when the container was made:
/// how long to wait for it when its pod is gone from the API (after an
/// agent restart).
pub const GRACE_SECONDS: &str = "io.skiff.pod.termination-grace-seconds";
/// Which sandbox (its attempt) a container was made for: containers of
/// a sandbox that is gone are stale, and init containers run again.
pub const SANDBOX_ATTEMPT: &str = "io.skiff.sandbox.attempt";
/// `init` for init containers, `app` for the others, `sandbox`.
pub const ROLE: &str = "io.skiff.container.role";
/// The container's value of [`CONTAINER_NAME`] for a pod sandbox.
pub const SANDBOX: &str = "POD";
/// `true` on a sandbox in the host's network namespace (`hostNetwork`):
/// it has no pod network of its own to lose.
pub const HOST_NETWORK: &str = "io.skiff.host-network";
