//! `describe`: an object's fields, conditions and Events.

use std::time::SystemTime;

use serde_json::Value;

use crate::{Ctl, Result, apply, kind_of, table, target, to_yaml};

impl Ctl {
    /// `describe KIND NAME`: the object as YAML-ish fields, its
    /// conditions, and its Events.
    ///
    /// # Errors
    /// A missing object.
    pub async fn describe(&self, args: &[String]) -> Result<()> {
        let (ops, name) = target(args)?;
        let ns = self.namespace_for(&*ops, false);
        let obj = ops
            .get(&self.channel, &ns, &name)
            .await
            .map_err(|s| self.server_error(s, ops.info().kind, &name))?;
        let meta = &obj["metadata"];
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{:<20}{v}\n", format!("{k}:")));
        line("Name", meta["name"].as_str().unwrap_or("").into());
        if ops.info().namespaced {
            line("Namespace", meta["namespace"].as_str().unwrap_or("").into());
        }
        let pairs = |v: &Value| {
            v.as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "<none>".into())
        };
        line("Labels", pairs(&meta["labels"]));
        let mut annotations = meta["annotations"].clone();
        if let Some(a) = annotations.as_object_mut() {
            a.remove(apply::LAST_APPLIED);
        }
        line("Annotations", pairs(&annotations));
        line(
            "CreationTimestamp",
            meta["creationTimestamp"].as_str().unwrap_or("").into(),
        );
        if let Some(spec) = obj.get("spec") {
            out.push_str("Spec:\n");
            for l in to_yaml(spec).lines() {
                out.push_str(&format!("  {l}\n"));
            }
        }
        if let Some(status) = obj.get("status") {
            let mut status = status.clone();
            let conditions = status.as_object_mut().and_then(|s| s.remove("conditions"));
            out.push_str("Status:\n");
            for l in to_yaml(&status).lines() {
                out.push_str(&format!("  {l}\n"));
            }
            if let Some(Value::Array(conditions)) = conditions {
                out.push_str("Conditions:\n");
                let mut rows = vec![vec![
                    "  Type".to_string(),
                    "Status".into(),
                    "Reason".into(),
                    "Message".into(),
                ]];
                for c in conditions {
                    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
                    rows.push(vec![
                        format!("  {}", s("type")),
                        s("status"),
                        s("reason"),
                        s("message"),
                    ]);
                }
                out.push_str(&table::render(&rows));
            }
        }
        let uid = meta["uid"].as_str().unwrap_or("");
        let events_ns = if ns.is_empty() {
            "default".to_string()
        } else {
            ns.clone()
        };
        let (events, _) = kind_of("event")?
            .list(
                &self.channel,
                &events_ns,
                "",
                &format!("involvedObject.name={name}"),
            )
            .await
            .map_err(|s| self.server_error(s, "Event", ""))?;
        let events: Vec<&Value> = events
            .iter()
            .filter(|e| {
                e["involvedObject"]["uid"]
                    .as_str()
                    .is_none_or(|u| u.is_empty() || u == uid)
            })
            .collect();
        if events.is_empty() {
            out.push_str("Events:             <none>\n");
        } else {
            out.push_str("Events:\n");
            let now = SystemTime::now();
            let mut rows = vec![vec![
                "  Type".to_string(),
                "Reason".into(),
                "Age".into(),
                "From".into(),
                "Message".into(),
            ]];
            for e in events {
                let count = e["count"].as_i64().unwrap_or(1);
                let age = table::age(&e["lastTimestamp"], now);
                let age = if count > 1 {
                    format!("{age} (x{count})")
                } else {
                    age
                };
                rows.push(vec![
                    format!("  {}", e["type"].as_str().unwrap_or("")),
                    e["reason"].as_str().unwrap_or("").into(),
                    age,
                    e["source"]["component"].as_str().unwrap_or("").into(),
                    e["message"].as_str().unwrap_or("").into(),
                ]);
            }
            out.push_str(&table::render(&rows));
        }
        print!("{out}");
        Ok(())
    }
}
