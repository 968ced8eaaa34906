//! The binding subresource: a pod bound to a node in one write.

use skiff::keys;
use skiff::pb::core::v1::Binding;

use crate::error::{ApiError, Result};
use crate::strategy::Strategy;

use super::*;

impl Registry {
    /// Binds an object (a pod) to a node: sets spec.nodeName and the
    /// PodScheduled condition in one write.
    ///
    /// # Errors
    /// NotFound; ABORTED when it is bound already or its uid differs;
    /// INVALID_ARGUMENT without a target node.
    pub async fn bind<K: Strategy>(&self, binding: Binding) -> Result<K> {
        let meta = binding.metadata.unwrap_or_default();
        let namespace = effective_namespace::<K>(&meta.namespace);
        let name = meta.name;
        let node = binding.target.map(|t| (t.kind, t.name)).unwrap_or_default();
        if !(node.0.is_empty() || node.0 == "Node") {
            return Err(ApiError::Invalid(format!(
                "target.kind: Unsupported value: {:?}: a binding's target is a Node",
                node.0
            )));
        }
        if node.1.is_empty() {
            return Err(ApiError::Invalid(
                "target.name: Required value: the node to bind to".into(),
            ));
        }
        let key = keys::object::<K>(&namespace, &name);
        for _ in 0..MAX_RETRIES {
            let Some((mut obj, mod_rev)) = self.read::<K>(&key).await? else {
                return Err(not_found::<K>(&namespace, &name));
            };
            let uid = obj.metadata().map(|m| m.uid.clone()).unwrap_or_default();
            if !meta.uid.is_empty() && meta.uid != uid {
                return Err(ApiError::Precondition(format!(
                    "precondition failed: binding is for uid {:?}, the object's uid is {uid:?}",
                    meta.uid
                )));
            }
            let before = obj.clone();
            obj.bind(&node.1).map_err(ApiError::Precondition)?;
            let bytes = admit(&mut obj, Some(&before))?;
            match self.store.update(&key, bytes, Some(mod_rev)).await {
                Ok(rev) => {
                    obj.metadata_mut().resource_version = rev.to_string();
                    return Ok(obj);
                }
                // Changed meanwhile: read again (and fail if now bound).
                Err(skiff_store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(self.write_error::<K>(e, &namespace, &name)),
            }
        }
        Err(ApiError::Unavailable(format!(
            "{} {:?} is changing too fast to bind; try again",
            K::KIND,
            object_name(&namespace, &name)
        )))
    }
}
