//! `get`: listing or reading objects, printed as tables, YAML, JSON or
//! names, and `get -w`'s lines as changes happen.

use std::io::Write as _;
use std::time::SystemTime;

use futures::StreamExt as _;
use serde_json::Value;

use crate::kinds::Ops;
use crate::{Ctl, Output, Result, apply, kind_of, table, to_yaml};

impl Ctl {
    /// `get KIND [NAME...]`.
    ///
    /// # Errors
    /// An unknown kind, a missing object, an unreachable server.
    #[allow(clippy::too_many_arguments)]
    pub async fn get(
        &self,
        kind: &str,
        names: &[String],
        all_namespaces: bool,
        labels: &str,
        fields: &str,
        output: Output,
        watch: bool,
    ) -> Result<()> {
        let ops = kind_of(kind)?;
        let namespace = self.namespace_for(&*ops, all_namespaces);
        let mut items = Vec::new();
        let mut version = String::new();
        if names.is_empty() {
            let (list, rv) = ops
                .list(&self.channel, &namespace, labels, fields)
                .await
                .map_err(|s| self.server_error(s, kind, ""))?;
            items = list;
            version = rv;
        } else {
            for name in names {
                let item = ops
                    .get(&self.channel, &self.namespace_for(&*ops, false), name)
                    .await
                    .map_err(|s| self.server_error(s, kind, name))?;
                items.push(item);
            }
        }
        let all = all_namespaces && ops.info().namespaced;
        self.print(&*ops, &items, names.len() == 1, all, output);
        if items.is_empty() && matches!(output, Output::Table | Output::Wide) && !watch {
            let place = if namespace.is_empty() {
                String::new()
            } else {
                format!(" in {namespace} namespace")
            };
            eprintln!("No resources found{place}.");
        }
        if watch {
            self.watch(
                &*ops, &namespace, labels, fields, &version, names, &items, all, output,
            )
            .await?;
        }
        Ok(())
    }

    /// `get -w`: after the list, one line (or document) per change, as
    /// it happens, until interrupted.
    #[allow(clippy::too_many_arguments)]
    async fn watch(
        &self,
        ops: &dyn Ops,
        namespace: &str,
        labels: &str,
        fields: &str,
        version: &str,
        names: &[String],
        listed: &[Value],
        all: bool,
        output: Output,
    ) -> Result<()> {
        let kind = ops.info().kind;
        let mut events = ops
            .watch(&self.channel, namespace, labels, fields, version)
            .await
            .map_err(|s| self.server_error(s, kind, ""))?;
        let wide = output == Output::Wide;
        // Rows line up under the list's header.
        let mut widths: Vec<usize> = Vec::new();
        for row in table::rows(kind, listed, wide, all, SystemTime::now()) {
            for (i, cell) in row.iter().enumerate() {
                let w = cell.chars().count();
                if widths.len() <= i {
                    widths.push(w);
                } else {
                    widths[i] = widths[i].max(w);
                }
            }
        }
        while let Some(event) = events.next().await {
            let (_, object) = event.map_err(|s| self.server_error(s, kind, ""))?;
            let name = object["metadata"]["name"].as_str().unwrap_or("");
            if !names.is_empty() && !names.iter().any(|n| n == name) {
                continue;
            }
            match output {
                Output::Table | Output::Wide => {
                    let table = table::rows(
                        kind,
                        std::slice::from_ref(&object),
                        wide,
                        all,
                        SystemTime::now(),
                    );
                    let row = &table[1];
                    let mut line = String::new();
                    for (i, cell) in row.iter().enumerate() {
                        line.push_str(cell);
                        if i + 1 < row.len() {
                            let w = widths
                                .get(i)
                                .copied()
                                .unwrap_or(0)
                                .max(cell.chars().count());
                            line.push_str(&" ".repeat(w - cell.chars().count() + 3));
                        }
                    }
                    println!("{}", line.trim_end());
                }
                _ => self.print(ops, std::slice::from_ref(&object), true, all, output),
            }
            let _ = std::io::stdout().flush();
        }
        Ok(())
    }

    fn print(
        &self,
        ops: &dyn Ops,
        items: &[Value],
        single: bool,
        all_namespaces: bool,
        output: Output,
    ) {
        let info = ops.info();
        match output {
            Output::Table | Output::Wide => {
                if !items.is_empty() {
                    let rows = table::rows(
                        info.kind,
                        items,
                        output == Output::Wide,
                        all_namespaces,
                        SystemTime::now(),
                    );
                    print!("{}", table::render(&rows));
                }
            }
            Output::Name => {
                for item in items {
                    println!(
                        "{}",
                        apply::object_name(ops, item["metadata"]["name"].as_str().unwrap_or(""))
                    );
                }
            }
            Output::Yaml | Output::Json => {
                let value = if single {
                    items[0].clone()
                } else {
                    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
                };
                if output == Output::Yaml {
                    print!("{}", to_yaml(&value));
                } else {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&value).unwrap_or_default()
                    );
                }
            }
        }
        let _ = std::io::stdout().flush();
    }
}
