//! Well-known names every component agrees on: namespaces, finalizers,
//! label and annotation keys, default addresses. Defined here once; the
//! crates that use them re-export them under their own names where that
//! reads better.

/// Where nodes' heartbeat Leases live (Kubernetes').
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// The namespace of the cluster's own components.
pub const KUBE_SYSTEM: &str = "kube-system";
/// Namespaces that exist from the start and cannot be deleted.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", KUBE_SYSTEM, "kube-public", NODE_LEASE_NAMESPACE];

/// The finalizer the API puts on every namespace, removed by the
/// namespace controller once its content is gone.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";
/// The finalizer of a Foreground deletion.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// The finalizer of an Orphan deletion.
pub const ORPHAN_FINALIZER: &str = "orphan";

/// The gRPC metadata key of a server-side dry run (Kubernetes'
/// `dryRun=All`): Create and Update check and return the object but write
/// nothing.
pub const DRY_RUN_HEADER: &str = "x-skiff-dry-run";

/// The label a Job's pods and selector carry: its uid.
pub const JOB_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// The label naming a pod's Job.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// The label that ties a ReplicaSet and its pods to one pod template.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// The ConfigMap every namespace gets with the cluster CA.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

/// The scheduler pods name when they name none (spec.schedulerName).
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// The service range of a cluster started with the defaults (k3s's).
pub const DEFAULT_SERVICE_CIDR: &str = "10.43.0.0/16";
/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
