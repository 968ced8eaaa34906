//! The commands that change objects: `apply` and `create -f`, `delete`,
//! `scale`, `create job --from=cronjob/...`, `label` and `annotate`.

use serde_json::Value;

use crate::kinds::Ops;
use crate::{Ctl, CtlError, Result, apply, kind_of, manifest, target};

impl Ctl {
    /// `apply -f`: prints `kind/name created|configured|unchanged` per
    /// document; invalid documents are reported and skipped.
    ///
    /// # Errors
    /// Any invalid document or failed apply (after doing the rest).
    pub async fn apply(
        &self,
        files: &[String],
        dry_run: apply::DryRun,
        create_only: bool,
    ) -> Result<()> {
        let (documents, invalid) = manifest::read(files, self.recursive);
        let mut failures: Vec<String> = invalid.iter().map(|e| e.to_string()).collect();
        let suffix = match dry_run {
            apply::DryRun::None => "",
            apply::DryRun::Client => " (dry run)",
            apply::DryRun::Server => " (server dry run)",
        };
        for doc in &documents {
            let label = apply::object_name(&*doc.ops, doc.name());
            let result = if create_only {
                apply::create(&self.channel, doc, &self.namespace, dry_run)
                    .await
                    .map(|()| apply::Outcome::Created)
            } else {
                apply::apply(&self.channel, doc, &self.namespace, dry_run).await
            };
            match result {
                Ok(outcome) => println!("{label} {}{suffix}", outcome.as_str()),
                Err(s) => failures.push(format!(
                    "{}: {}",
                    doc.origin(),
                    self.server_error(s, doc.ops.info().kind, doc.name())
                )),
            }
        }
        if documents.is_empty() && failures.is_empty() {
            let nested = !self.recursive
                && files.iter().any(|f| {
                    std::fs::read_dir(f)
                        .map(|mut d| d.any(|e| e.is_ok_and(|e| e.path().is_dir())))
                        .unwrap_or(false)
                });
            failures.push(if nested {
                "error: no objects passed to apply (the directory's manifests are in subdirectories: add -R)".into()
            } else {
                "error: no objects passed to apply".into()
            });
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(CtlError(failures.join("\n")))
        }
    }

    /// `delete KIND NAME... | -f FILE`: prints `kind "name" deleted`.
    ///
    /// # Errors
    /// An unknown kind or a missing object (after deleting the rest).
    pub async fn delete(&self, args: &[String], files: &[String], cascade: &str) -> Result<()> {
        let propagation = match cascade {
            "" | "background" | "true" => "Background",
            "foreground" => "Foreground",
            "orphan" | "false" => "Orphan",
            other => {
                return Err(CtlError(format!(
                    "error: --cascade must be background, foreground or orphan, not {other:?}"
                )));
            }
        };
        let mut targets: Vec<(Box<dyn Ops>, String, String)> = Vec::new();
        let mut failures = Vec::new();
        if !files.is_empty() {
            let (documents, invalid) = manifest::read(files, self.recursive);
            failures.extend(invalid.iter().map(|e| e.to_string()));
            for doc in documents {
                let ns = apply::namespace_of(&doc, &self.namespace);
                let name = doc.name().to_string();
                targets.push((doc.ops, ns, name));
            }
        } else {
            match args {
                [one] if one.contains('/') => {
                    let (ops, name) = target(args)?;
                    let ns = self.namespace_for(&*ops, false);
                    targets.push((ops, ns, name));
                }
                [kind, names @ ..] if !names.is_empty() => {
                    for name in names {
                        let ops = kind_of(kind)?;
                        let ns = self.namespace_for(&*ops, false);
                        targets.push((ops, ns, name.clone()));
                    }
                }
                _ => {
                    return Err(CtlError(
                        "error: name what to delete: KIND NAME..., KIND/NAME or -f FILE".into(),
                    ));
                }
            }
        }
        for (ops, ns, name) in targets {
            match ops.delete(&self.channel, &ns, &name, propagation).await {
                Ok(_) => println!("{} {name:?} deleted", ops.info().kind.to_lowercase()),
                Err(s) => failures.push(self.server_error(s, ops.info().kind, &name).0),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(CtlError(failures.join("\n")))
        }
    }

    /// `scale KIND NAME --replicas N`.
    ///
    /// # Errors
    /// A kind without replicas, a missing object.
    pub async fn scale(&self, args: &[String], replicas: i32) -> Result<()> {
        let (ops, name) = target(args)?;
        if !matches!(
            ops.info().kind,
            "Deployment" | "ReplicaSet" | "ReplicationController" | "StatefulSet"
        ) {
            return Err(CtlError(format!(
                "error: {} cannot be scaled",
                ops.info().plural
            )));
        }
        self.modify(&*ops, &name, |obj| {
            obj["spec"]["replicas"] = Value::from(replicas);
            Ok(())
        })
        .await?;
        println!("{} scaled", apply::object_name(&*ops, &name));
        Ok(())
    }

    /// `create job NAME --from=cronjob/CRONJOB`: a Job of the CronJob's
    /// template now, as kubectl makes it (owned by the CronJob, annotated
    /// `cronjob.kubernetes.io/instantiate: manual`).
    ///
    /// # Errors
    /// Anything but a job from a cronjob; the CronJob missing; the create
    /// refused.
    pub async fn create_job_from(&self, what: &[String], from: &str, dry_run: bool) -> Result<()> {
        let [kind, name] = what else {
            return Err(CtlError(
                "error: name what to create: `create job NAME --from=cronjob/NAME`".into(),
            ));
        };
        if !matches!(kind.as_str(), "job" | "jobs") {
            return Err(CtlError(format!(
                "error: --from makes a job (`create job NAME --from=cronjob/NAME`), not a {kind}"
            )));
        }
        let Some(("cronjob" | "cronjobs" | "cj" | "cronjob.batch", source)) = from.split_once('/')
        else {
            return Err(CtlError(format!(
                "error: from must be an existing cronjob: {from}"
            )));
        };
        use skiff::pb::batch::v1::{CronJob, Job};
        let cronjob = skiff_client::Api::<CronJob>::new(self.channel.clone())
            .get(&self.namespace, source)
            .await
            .map_err(|s| self.server_error(s, "cronjob", source))?;
        let job = skiff::schedule::job_for(
            &cronjob,
            name.clone(),
            ("cronjob.kubernetes.io/instantiate", "manual".to_string()),
        );
        let api = skiff_client::Api::<Job>::new(self.channel.clone());
        let api = if dry_run { api.dry_run() } else { api };
        api.create(job)
            .await
            .map_err(|s| self.server_error(s, "job", name))?;
        let suffix = if dry_run { " (server dry run)" } else { "" };
        println!("job.batch/{name} created{suffix}");
        Ok(())
    }

    /// `label` / `annotate KIND NAME k=v k2-`.
    ///
    /// # Errors
    /// A malformed pair, an existing key without --overwrite.
    pub async fn set_metadata(&self, field: &str, args: &[String], overwrite: bool) -> Result<()> {
        let split = args
            .iter()
            .position(|a| a.contains('=') || a.ends_with('-'))
            .unwrap_or(args.len());
        let (ops, name) = target(&args[..split])?;
        let pairs = args[split..].to_vec();
        if pairs.is_empty() {
            return Err(CtlError(format!(
                "error: at least one {field} update is required: key=value or key-"
            )));
        }
        self.modify(&*ops, &name, |obj| {
            if !obj["metadata"][field].is_object() {
                obj["metadata"][field] = Value::Object(Default::default());
            }
            let map = obj["metadata"][field].as_object_mut().expect("an object");
            for pair in &pairs {
                if let Some((k, v)) = pair.split_once('=') {
                    if !overwrite && map.get(k).is_some_and(|old| old != v) {
                        return Err(CtlError(format!(
                            "error: '{k}' already has a value ({}), and --overwrite is false",
                            map[k].as_str().unwrap_or("")
                        )));
                    }
                    map.insert(k.to_string(), Value::String(v.to_string()));
                } else if let Some(key) = pair.strip_suffix('-') {
                    map.remove(key);
                }
            }
            Ok(())
        })
        .await?;
        let verb = if field == "labels" {
            "labeled"
        } else {
            "annotated"
        };
        println!("{} {verb}", apply::object_name(&*ops, &name));
        Ok(())
    }
}
