//! Manifests: YAML (multi-document) or JSON files, directories of them, or
//! stdin, read into checked documents of known kinds. Every error names the
//! file, the document (1-based) and the field.

use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_json::Value;

use crate::kinds::{self, Ops};

/// One document of a manifest file, checked against its kind.
pub struct Document {
    /// The file it came from (`-` for stdin).
    pub source: String,
    /// Its place in the file, from 1.
    pub index: usize,
    /// The object, as its kind reads it.
    pub value: Value,
    /// Its kind.
    pub ops: Box<dyn Ops>,
}

impl Document {
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }

    /// Where it came from, for messages: `web.yaml (document 2)`.
    pub fn origin(&self) -> String {
        format!("{} (document {})", self.source, self.index)
    }
}

/// A document that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("error: {file} (document {index}): {message}")]
pub struct Invalid {
    /// The file.
    pub file: String,
    /// The document, from 1 (0: the file itself).
    pub index: usize,
    /// What is wrong, naming the field.
    pub message: String,
}

/// Reads every manifest under `paths` (files, directories of `.yaml`,
/// `.yml` and `.json` files — with `recursive`, their subdirectories too,
/// as kubectl's `-R` — and `-` for stdin): the documents that check, and
/// an error for each that does not.
pub fn read(paths: &[String], recursive: bool) -> (Vec<Document>, Vec<Invalid>) {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        for (source, text) in sources(path, recursive, &mut errors) {
            parse(&source, &text, &mut documents, &mut errors);
        }
    }
    (documents, errors)
}

/// The manifest files of directory `dir` (and of its subdirectories when
/// `recursive`), sorted.
fn manifest_files(dir: &Path, recursive: bool) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            if recursive {
                files.extend(manifest_files(&entry, true)?);
            }
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            files.push(entry);
        }
    }
    Ok(files)
}

fn sources(path: &str, recursive: bool, errors: &mut Vec<Invalid>) -> Vec<(String, String)> {
    let unreadable = |e: std::io::Error| Invalid {
        file: path.to_string(),
        index: 0,
        message: format!("cannot read it: {e}"),
    };
    if path == "-" {
        let mut text = String::new();
        return match std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
            Ok(_) => vec![("-".into(), text)],
            Err(e) => {
                errors.push(unreadable(e));
                Vec::new()
            }
        };
    }
    let p = Path::new(path);
    if p.is_dir() {
        let files = match manifest_files(p, recursive) {
            Ok(files) => files,
            Err(e) => {
                errors.push(unreadable(e));
                return Vec::new();
            }
        };
        return files
            .into_iter()
            .filter_map(|f| match std::fs::read_to_string(&f) {
                Ok(text) => Some((f.display().to_string(), text)),
                Err(e) => {
                    errors.push(Invalid {
                        file: f.display().to_string(),
                        index: 0,
                        message: format!("cannot read it: {e}"),
                    });
                    None
                }
            })
            .collect();
    }
    match std::fs::read_to_string(p) {
        Ok(text) => vec![(path.to_string(), text)],
        Err(e) => {
            errors.push(unreadable(e));
            Vec::new()
        }
    }
}

/// Splits one file into documents (YAML; JSON is YAML too) and checks each.
pub fn parse(source: &str, text: &str, documents: &mut Vec<Document>, errors: &mut Vec<Invalid>) {
    let invalid = |index: usize, message: String| Invalid {
        file: source.to_string(),
        index,
        message,
    };
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = match Value::deserialize(doc) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                errors.push(invalid(index, format!("invalid YAML: {e}")));
                // The rest of the stream cannot be trusted after a syntax
                // error.
                break;
            }
        };
        match check(value) {
            Ok((value, ops)) => documents.push(Document {
                source: source.to_string(),
                index,
                value,
                ops,
            }),
            Err(message) => errors.push(invalid(index, message)),
        }
    }
}

fn check(value: Value) -> Result<(Value, Box<dyn Ops>), String> {
    if !value.is_object() {
        return Err("a manifest is an object with apiVersion, kind and metadata".into());
    }
    let api_version = value["apiVersion"].as_str().unwrap_or("");
    let kind = value["kind"].as_str().unwrap_or("");
    if api_version.is_empty() {
        return Err("apiVersion: Required value".into());
    }
    if kind.is_empty() {
        return Err("kind: Required value".into());
    }
    let Some(ops) = kinds::for_manifest(api_version, kind) else {
        let supported: Vec<String> = kinds::all()
            .iter()
            .map(|k| format!("{}/{}", k.info().api_version, k.info().kind))
            .collect();
        return Err(format!(
            "no matches for kind {kind:?} in version {api_version:?} (supported: {})",
            supported.join(", ")
        ));
    };
    let name = value["metadata"]["name"].as_str().unwrap_or("");
    let generate = value["metadata"]["generateName"].as_str().unwrap_or("");
    if name.is_empty() && generate.is_empty() {
        return Err("metadata.name: Required value".into());
    }
    let checked = ops.check(&value)?;
    Ok((checked, ops))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> (Vec<Document>, Vec<Invalid>) {
        let (mut docs, mut errs) = (Vec::new(), Vec::new());
        parse("app.yaml", text, &mut docs, &mut errs);
        (docs, errs)
    }

    #[test]
    fn multi_document_yaml_reads_each_kind() {
        let (docs, errs) = read_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: b}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: web\n        image: busybox\n        resources: {limits: {cpu: 500m, memory: 64Mi}}\n  strategy: {rollingUpdate: {maxSurge: 25%, maxUnavailable: 1}}\n---\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].ops.info().kind, "Deployment");
        assert_eq!(docs[1].name(), "web");
        assert_eq!(docs[1].origin(), "app.yaml (document 2)");
    }

    #[test]
    fn bad_documents_are_named_with_their_field() {
        let (docs, errs) = read_text(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\nspec: {containers: [{name: c, image: i}]}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec: {containers: [{name: c, imagee: i}]}\n---\n\
             apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {labels: {a: b}}\n",
        );
        assert_eq!(docs.len(), 1, "only the good document");
        let messages: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            messages[0].contains("(document 2)")
                && messages[0].contains("spec.containers[0]")
                && messages[0].contains("imagee"),
            "{messages:?}"
        );
        assert!(
            messages[1].contains("(document 3)") && messages[1].contains("Widget"),
            "{messages:?}"
        );
        assert!(
            messages[2].contains("(document 4)") && messages[2].contains("metadata.name"),
            "{messages:?}"
        );
    }

    #[test]
    fn subdirectories_are_read_only_when_recursive() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("app");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(
            sub.join("cm.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
        )
        .unwrap();
        std::fs::write(sub.join("README.md"), "not a manifest").unwrap();
        let top = vec![dir.path().display().to_string()];
        assert!(read(&top, false).0.is_empty());
        let (docs, errs) = read(&top, true);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(docs.len(), 1);
    }

    #[test]
    fn invalid_yaml_is_reported() {
        let (_, errs) = read_text("apiVersion: v1\nkind: [Pod\n");
        assert!(errs[0].to_string().contains("invalid YAML"), "{errs:?}");
    }
}
