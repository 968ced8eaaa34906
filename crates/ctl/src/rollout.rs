//! `rollout status|history|undo|pause|resume` of a Deployment.

use std::time::Duration;

use serde_json::Value;

use crate::{Ctl, CtlError, Result, kind_of, table};

impl Ctl {
    /// `rollout status deployment/NAME`: progress lines until done.
    ///
    /// # Errors
    /// A missing deployment, a deadline exceeded, or `timeout`.
    pub async fn rollout_status(&self, name: &str, timeout: Duration) -> Result<()> {
        let ops = kind_of("deployment")?;
        let started = std::time::Instant::now();
        let mut last = String::new();
        loop {
            let d = ops
                .get(&self.channel, &self.namespace, name)
                .await
                .map_err(|s| self.server_error(s, "Deployment", name))?;
            let int = |p: &str| d.pointer(p).and_then(Value::as_i64).unwrap_or(0);
            let want = d
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let (updated, total, available) = (
                int("/status/updatedReplicas"),
                int("/status/replicas"),
                int("/status/availableReplicas"),
            );
            let observed = int("/status/observedGeneration") >= int("/metadata/generation");
            let timed_out = d["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["reason"] == "ProgressDeadlineExceeded"));
            if timed_out {
                return Err(CtlError(format!(
                    "error: deployment {name:?} exceeded its progress deadline"
                )));
            }
            let line = if !observed {
                "Waiting for deployment spec update to be observed...".to_string()
            } else if updated < want {
                format!(
                    "Waiting for deployment {name:?} rollout to finish: {updated} out of {want} new replicas have been updated..."
                )
            } else if total > updated {
                format!(
                    "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
                    total - updated
                )
            } else if available < updated {
                format!(
                    "Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."
                )
            } else {
                println!("deployment {name:?} successfully rolled out");
                return Ok(());
            };
            if line != last {
                println!("{line}");
                last = line;
            }
            if started.elapsed() > timeout {
                return Err(CtlError(format!(
                    "error: timed out waiting for the condition ({timeout:?})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The Deployment's ReplicaSets by revision, oldest first.
    async fn revisions(&self, name: &str) -> Result<Vec<(i64, Value)>> {
        let deployment = kind_of("deployment")?
            .get(&self.channel, &self.namespace, name)
            .await
            .map_err(|s| self.server_error(s, "Deployment", name))?;
        let uid = deployment["metadata"]["uid"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let (sets, _) = kind_of("replicaset")?
            .list(&self.channel, &self.namespace, "", "")
            .await
            .map_err(|s| self.server_error(s, "ReplicaSet", ""))?;
        let mut owned: Vec<(i64, Value)> = sets
            .into_iter()
            .filter(|rs| {
                rs["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|r| r["uid"] == uid.as_str()))
            })
            .map(|rs| {
                let revision = rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0);
                (revision, rs)
            })
            .collect();
        owned.sort_by_key(|(r, _)| *r);
        Ok(owned)
    }

    /// `rollout history deployment/NAME`.
    ///
    /// # Errors
    /// A missing deployment.
    pub async fn rollout_history(&self, name: &str) -> Result<()> {
        let revisions = self.revisions(name).await?;
        println!("deployment.apps/{name}");
        let mut rows = vec![vec!["REVISION".to_string(), "CHANGE-CAUSE".to_string()]];
        for (revision, rs) in revisions {
            let cause = rs["metadata"]["annotations"]["kubernetes.io/change-cause"]
                .as_str()
                .unwrap_or("<none>");
            rows.push(vec![revision.to_string(), cause.to_string()]);
        }
        print!("{}", table::render(&rows));
        Ok(())
    }

    /// `rollout undo deployment/NAME [--to-revision N]`.
    ///
    /// # Errors
    /// A missing deployment or revision.
    pub async fn rollout_undo(&self, name: &str, to_revision: i64) -> Result<()> {
        if to_revision > 0
            && !self
                .revisions(name)
                .await?
                .iter()
                .any(|(r, _)| *r == to_revision)
        {
            return Err(CtlError(format!(
                "error: unable to find the specified revision {to_revision}"
            )));
        }
        let ops = kind_of("deployment")?;
        self.modify(&*ops, name, |d| {
            if !d["metadata"]["annotations"].is_object() {
                d["metadata"]["annotations"] = Value::Object(Default::default());
            }
            d["metadata"]["annotations"]["skiff.dev/rollback-to-revision"] =
                Value::String(to_revision.to_string());
            Ok(())
        })
        .await?;
        // Done when the controller has taken the request (the annotation
        // goes): a `rollout status` right after then sees the new rollout.
        for _ in 0..100 {
            let d = ops
                .get(&self.channel, &self.namespace, name)
                .await
                .map_err(|s| self.server_error(s, "Deployment", name))?;
            if d["metadata"]["annotations"]
                .get("skiff.dev/rollback-to-revision")
                .is_none()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("deployment.apps/{name} rolled back");
        Ok(())
    }

    /// `rollout pause|resume deployment/NAME`.
    ///
    /// # Errors
    /// A missing deployment.
    pub async fn rollout_pause(&self, name: &str, paused: bool) -> Result<()> {
        let ops = kind_of("deployment")?;
        self.modify(&*ops, name, |d| {
            d["spec"]["paused"] = Value::Bool(paused);
            Ok(())
        })
        .await?;
        println!(
            "deployment.apps/{name} {}",
            if paused { "paused" } else { "resumed" }
        );
        Ok(())
    }
}
