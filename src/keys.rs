//! Where objects live in the store.
//!
//! `/registry/<plural>/<namespace>/<name>` for namespaced kinds and
//! `/registry/<plural>/<name>` for cluster-scoped ones, as in Kubernetes.
//! Every prefix ends in `/`, so `pods/default/` never matches
//! `pods/default-2/...`.

use crate::Resource;

/// Root of every object key.
pub const ROOT: &str = "/registry/";

/// The key of one object.
pub fn object<K: Resource>(namespace: &str, name: &str) -> String {
    if K::NAMESPACED {
        format!("{ROOT}{}/{namespace}/{name}", K::PLURAL)
    } else {
        format!("{ROOT}{}/{name}", K::PLURAL)
    }
}

/// The prefix of every object of a kind.
pub fn kind<K: Resource>() -> String {
    format!("{ROOT}{}/", K::PLURAL)
}

/// The prefix to list: one namespace, or the whole kind when `namespace`
/// is empty or the kind is cluster-scoped.
pub fn list<K: Resource>(namespace: &str) -> String {
    if K::NAMESPACED && !namespace.is_empty() {
        format!("{ROOT}{}/{namespace}/", K::PLURAL)
    } else {
        kind::<K>()
    }
}

/// Splits a key of kind `K` back into (namespace, name).
pub fn parse<K: Resource>(key: &str) -> Option<(&str, &str)> {
    let rest = key
        .strip_prefix(ROOT)?
        .strip_prefix(K::PLURAL)?
        .strip_prefix('/')?;
    if K::NAMESPACED {
        rest.split_once('/')
    } else {
        Some(("", rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::core::v1::{Namespace, Pod};

    #[test]
    fn namespaced_keys_carry_the_namespace() {
        assert_eq!(
            object::<Pod>("default", "web"),
            "/registry/pods/default/web"
        );
        assert_eq!(list::<Pod>("default"), "/registry/pods/default/");
        assert_eq!(list::<Pod>(""), "/registry/pods/");
        assert_eq!(
            parse::<Pod>("/registry/pods/default/web"),
            Some(("default", "web"))
        );
    }

    #[test]
    fn cluster_scoped_keys_ignore_the_namespace() {
        assert_eq!(
            object::<Namespace>("x", "kube"),
            "/registry/namespaces/kube"
        );
        assert_eq!(list::<Namespace>("x"), "/registry/namespaces/");
        assert_eq!(
            parse::<Namespace>("/registry/namespaces/kube"),
            Some(("", "kube"))
        );
    }
}
