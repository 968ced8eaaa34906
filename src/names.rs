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
/// The label every namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
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
/// The pod addresses of a cluster started with the defaults (k3s'), one
/// block of it per node.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";
/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The annotation that makes a StorageClass the default of claims that
/// name none (set to "true").
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// It and its beta spelling, still honoured.
pub const DEFAULT_CLASS_ANNOTATIONS: [&str; 2] = [
    DEFAULT_CLASS_ANNOTATION,
    "storageclass.beta.kubernetes.io/is-default-class",
];
/// The finalizer that keeps a claim while a pod uses it.
pub const PVC_PROTECTION_FINALIZER: &str = "kubernetes.io/pvc-protection";
/// The finalizer that keeps a volume while a claim is bound to it.
pub const PV_PROTECTION_FINALIZER: &str = "kubernetes.io/pv-protection";
/// Set by the scheduler on a WaitForFirstConsumer claim: the node of its
/// first pod, where its volume is to be made.
pub const SELECTED_NODE_ANNOTATION: &str = "volume.kubernetes.io/selected-node";
/// Set on a claim whose volume a provisioner is to make: which one.
pub const STORAGE_PROVISIONER_ANNOTATION: &str = "volume.kubernetes.io/storage-provisioner";
/// Set on a volume a provisioner made: which one.
pub const PROVISIONED_BY_ANNOTATION: &str = "pv.kubernetes.io/provisioned-by";
/// Set on a claim once the binder has bound it.
pub const BIND_COMPLETED_ANNOTATION: &str = "pv.kubernetes.io/bind-completed";
/// Set on a claim or volume the binder (not its author) tied together.
pub const BOUND_BY_CONTROLLER_ANNOTATION: &str = "pv.kubernetes.io/bound-by-controller";
/// Skiff's provisioner: a directory under the agent's data dir on the
/// pod's node (the role of k3s's local-path-provisioner).
pub const LOCAL_PATH_PROVISIONER: &str = "skiff.io/local-path";
/// The StorageClass Skiff creates for it, the default class.
pub const LOCAL_PATH_CLASS: &str = "local-path";
/// The finalizer of a local-path volume: its directory is still on its
/// node, removed by that node's agent.
pub const LOCAL_PATH_FINALIZER: &str = "skiff.io/local-path";
/// The annotation by which an agent tells where on its node local-path
/// volumes are made (absent: the node cannot hold them).
pub const LOCAL_PATH_ROOT_ANNOTATION: &str = "skiff.io/local-path-root";
/// The node label every agent sets to its node's name.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// The annotation (and label) carrying an Indexed Job pod's completion
/// index.
pub const JOB_COMPLETION_INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// The annotation carrying how often an Indexed Job pod's index failed
/// before it.
pub const JOB_INDEX_FAILURE_COUNT_ANNOTATION: &str = "batch.kubernetes.io/job-index-failure-count";
