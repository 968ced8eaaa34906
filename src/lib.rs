//! Skiff's API contract.
//!
//! Every object and every RPC is defined in `proto/`; this crate compiles
//! it (build.rs) and adds the helpers every component shares.
//!
//! # Layout
//!
//! - [`pb`]: the generated protobuf types, gRPC clients and servers, and
//!   their proto3 JSON (serde) forms; [`codec`]: their gRPC codec.
//! - [`Resource`]: what the API knows about each kind (generated from
//!   `proto/kinds.tsv`), and [`for_each_kind!`] to act on every kind.
//! - [`json`]: objects as Kubernetes' JSON (one conversion for every
//!   door).
//! - [`keys`]: where objects live in the store; [`names`]: well-known
//!   names (namespaces, finalizers, label keys, default addresses).
//! - [`selector`]: label and field selectors.
//! - [`quantity`]: resource quantities such as `500m` and `128Mi`.
//! - [`schedule`]: CronJob schedules.
//! - [`validation`]: names, labels and the field errors they produce.
//! - [`time`]: timestamps; [`pods`]: shared facts about pods and
//!   Services; [`nodes`]: which nodes a pod may run on (selectors,
//!   affinity, taints), for the scheduler and the DaemonSet controller.
//! - [`disruption`]: which pods a PodDisruptionBudget covers and its
//!   condition, for evictions and the disruption controller.
//! - [`podsecurity`]: Pod Security Standards checks, for the API server's admission.
//! - [`table`]: kubectl's columns per kind, shared by the CLI and the API
//!   server's Tables (`kubectl get`).
//! - [`quota`]: what objects count against a ResourceQuota; [`volumes`]:
//!   claims and volumes; [`cidr`]: IPv4 ranges for node IPAM.
//!
//! Errors: each module returns its own type ([`validation::Invalid`] for a
//! value Kubernetes' rules refuse, [`json::Error`] for JSON that does not
//! read as an object, [`selector::Error`]), never a bare `String`.

pub mod cidr;
pub mod codec;
pub mod disruption;
#[cfg(test)]
mod fields;
pub mod indexes;
pub mod json;
pub mod keys;
pub mod names;
pub mod nodes;
pub mod pods;
pub mod podsecurity;
pub mod quantity;
pub mod quota;
mod resource;
pub mod schedule;
pub mod selector;
pub mod table;
pub mod time;
pub mod validation;
pub mod volumes;
pub mod watch;

pub use resource::{ObjectRef, Resource};

/// The generated protobuf code, one module per protobuf package.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    /// Shared object metadata (`skiff.meta.v1`).
    pub mod meta {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/skiff.meta.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/skiff.meta.v1.serde.rs"));
        }
    }
    /// Requests shared by every kind's service (`skiff.api.v1`).
    pub mod api {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/skiff.api.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/skiff.api.v1.serde.rs"));
        }
    }
    /// Kubernetes core/v1 (`skiff.core.v1`).
    pub mod core {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/skiff.core.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/skiff.core.v1.serde.rs"));
        }
    }
    /// Kubernetes apps/v1 (`skiff.apps.v1`).
    pub mod apps {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/skiff.apps.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/skiff.apps.v1.serde.rs"));
        }
    }
    /// The node agent's own service (`skiff.agent.v1`).
    pub mod agent {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/skiff.agent.v1.rs"));
        }
    }
    /// Resource usage, Kubernetes' metrics.k8s.io/v1beta1
    /// (`skiff.metrics.v1`).
    pub mod metrics {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/skiff.metrics.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/skiff.metrics.v1.serde.rs"));
        }
    }
    /// Kubernetes coordination.k8s.io/v1 (`skiff.coordination.v1`).
    pub mod coordination {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/skiff.coordination.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/skiff.coordination.v1.serde.rs"));
        }
    }
    /// Kubernetes autoscaling/v2 (`skiff.autoscaling.v2`).
    pub mod autoscaling {
        pub mod v2 {
            include!(concat!(env!("OUT_DIR"), "/skiff.autoscaling.v2.rs"));
            include!(concat!(env!("OUT_DIR"), "/skiff.autoscaling.v2.serde.rs"));
        }
    }
    /// Kubernetes batch/v1 (`skiff.batch.v1`).
    pub mod batch {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/skiff.batch.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/skiff.batch.v1.serde.rs"));
        }
    }
    /// Kubernetes storage.k8s.io/v1 (`skiff.storage.v1`).
    pub mod storage {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/skiff.storage.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/skiff.storage.v1.serde.rs"));
        }
    }
    /// Kubernetes networking.k8s.io/v1 (`skiff.networking.v1`).
    pub mod networking {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/skiff.networking.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/skiff.networking.v1.serde.rs"));
        }
    }
    /// Kubernetes scheduling.k8s.io/v1 (`skiff.scheduling.v1`).
    pub mod scheduling {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/skiff.scheduling.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/skiff.scheduling.v1.serde.rs"));
        }
    }
    /// Kubernetes policy/v1 (`skiff.policy.v1`).
    pub mod policy {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/skiff.policy.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/skiff.policy.v1.serde.rs"));
        }
    }
    /// Kubernetes rbac.authorization.k8s.io/v1 (`skiff.rbac.v1`).
    pub mod rbac {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/skiff.rbac.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/skiff.rbac.v1.serde.rs"));
        }
    }
    /// Identities: node certificates, service-account tokens, who am I
    /// (`skiff.authentication.v1`).
    pub mod authentication {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/skiff.authentication.v1.rs"));
            include!(concat!(
                env!("OUT_DIR"),
                "/skiff.authentication.v1.serde.rs"
            ));
        }
    }

    /// The encoded `FileDescriptorSet` of every proto, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/skiff_descriptor.bin"));
}

/// Well-known protobuf types (Timestamp, Value, ...) with proto3 JSON forms.
pub use pbjson_types as wkt;

include!(concat!(env!("OUT_DIR"), "/kinds.rs"));

/// The generated protos checked in under `proto/generated/` are what the
/// build generates (see its README).
#[cfg(test)]
mod generated_protos {
    use std::path::{Path, PathBuf};

    fn protos(root: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "proto") {
                    found.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
                }
            }
        }
        found.sort();
        found
    }

    #[test]
    fn generated_protos_in_the_repository_are_current() {
        let built = Path::new(env!("OUT_DIR")).join("proto");
        let kept = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/generated");
        let bless = std::env::var_os("SKIFF_BLESS").is_some();
        let wanted = protos(&built);
        assert!(!wanted.is_empty(), "the build generated no protos");
        let mut stale = Vec::new();
        for file in &wanted {
            let text = std::fs::read_to_string(built.join(file)).unwrap();
            let old = std::fs::read_to_string(kept.join(file)).unwrap_or_default();
            if old != text {
                if bless {
                    std::fs::create_dir_all(kept.join(file).parent().unwrap()).unwrap();
                    std::fs::write(kept.join(file), &text).unwrap();
                } else {
                    stale.push(file.display().to_string());
                }
            }
        }
        for file in protos(&kept) {
            if !wanted.contains(&file) {
                if bless {
                    std::fs::remove_file(kept.join(&file)).unwrap();
                } else {
                    stale.push(format!("{} (no longer generated)", file.display()));
                }
            }
        }
        assert!(
            stale.is_empty(),
            "proto/generated is not what build.rs generates: {stale:?}; run `SKIFF_BLESS=1 cargo test -p skiff generated_protos`"
        );
    }
}

/// Caches hold every pod of a cluster decoded; the optional messages a pod
/// rarely sets are boxed (build.rs `BOXED`) so they cost a pointer when
/// unset (a Container went from 2,232 bytes to 440, a PodSpec from 1,184
/// to 624).
#[cfg(test)]
mod layout {
    use crate::pb::core::v1::{Container, Pod, PodSpec};

    #[test]
    fn a_pods_rarely_set_parts_are_not_laid_inline() {
        let (c, s) = (Container::default(), PodSpec::default());
        let fields = [
            ("Container.liveness_probe", size_of_val(&c.liveness_probe)),
            ("Container.readiness_probe", size_of_val(&c.readiness_probe)),
            ("Container.startup_probe", size_of_val(&c.startup_probe)),
            ("Container.lifecycle", size_of_val(&c.lifecycle)),
            (
                "Container.security_context",
                size_of_val(&c.security_context),
            ),
            ("PodSpec.security_context", size_of_val(&s.security_context)),
            ("PodSpec.affinity", size_of_val(&s.affinity)),
            ("PodSpec.dns_config", size_of_val(&s.dns_config)),
        ];
        for (name, size) in fields {
            assert_eq!(
                size,
                size_of::<usize>(),
                "{name} is laid inline ({size} bytes): it should be boxed (build.rs BOXED)"
            );
        }
        let sizes = [
            ("Container", size_of::<Container>(), 512),
            ("PodSpec", size_of::<PodSpec>(), 768),
            ("Pod", size_of::<Pod>(), 1536),
        ];
        for (name, size, bound) in sizes {
            assert!(
                size <= bound,
                "{name} is {size} bytes inline (bound {bound}): did a large optional message join it unboxed?"
            );
        }
    }
}
