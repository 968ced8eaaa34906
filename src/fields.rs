//! The field audit: `docs/FIELDS.md` names, for every field of every
//! message in `proto/`, what acts on it and the test that shows it.
//! These tests keep it whole: a field added to `proto/` without a row
//! fails them, as does a row for a field that is gone or a test that
//! does not exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use prost::Message as _;
use prost_types::{DescriptorProto, FileDescriptorSet};

/// The statuses a row may have (`docs/FIELDS.md` says what each means).
const STATUSES: &[&str] = &["acts", "written", "refused", "stored"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `package.Message.jsonName` of every field, packages without `skiff.`,
/// nested messages joined with dots, map entries left out.
fn proto_fields() -> BTreeSet<String> {
    let set =
        FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("the descriptor set");
    let mut fields = BTreeSet::new();
    fn walk(prefix: &str, message: &DescriptorProto, fields: &mut BTreeSet<String>) {
        if message.options.as_ref().is_some_and(|o| o.map_entry()) {
            return;
        }
        let name = format!("{prefix}.{}", message.name());
        for field in &message.field {
            let json = if field.json_name().is_empty() {
                field.name().to_string()
            } else {
                field.json_name().to_string()
            };
            fields.insert(format!("{name}.{json}"));
        }
        for nested in &message.nested_type {
            walk(&name, nested, fields);
        }
    }
    for file in &set.file {
        let Some(package) = file.package().strip_prefix("skiff.") else {
            continue;
        };
        for message in &file.message_type {
            walk(package, message, &mut fields);
        }
    }
    fields
}

/// The audit's rows: field → (status, test).
fn audit_rows() -> BTreeMap<String, (String, String)> {
    let text = std::fs::read_to_string(repo().join("docs/FIELDS.md")).expect("docs/FIELDS.md");
    let mut rows = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert_eq!(cells.len(), 4, "a row has four cells: {line}");
        let unquote = |s: &str| s.trim_matches('`').to_string();
        let field = unquote(cells[0]);
        let previous = rows.insert(field.clone(), (cells[1].to_string(), unquote(cells[3])));
        assert!(previous.is_none(), "{field} has two rows");
    }
    rows
}

/// Every test in the repository's Rust and Python sources, by name, with
/// the file it is in: Rust functions under `#[test]` or `#[tokio::test]`,
/// Python `def test_*`.
fn tests() -> BTreeMap<String, PathBuf> {
    let mut tests = BTreeMap::new();
    let mut dirs: Vec<PathBuf> = ["src", "services", "agent", "crates", "cmd", "tests"]
        .iter()
        .map(|d| repo().join(d))
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    dirs.push(path);
                }
                continue;
            }
            let rust = match path.extension().and_then(|e| e.to_str()) {
                Some("rs") => true,
                Some("py") => false,
                _ => continue,
            };
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for name in test_names(&text, rust) {
                tests.insert(name, path.clone());
            }
        }
    }
    tests
}

/// The tests a source file defines.
fn test_names(text: &str, rust: bool) -> Vec<String> {
    let mut names = Vec::new();
    let mut attributed = false;
    for line in text.lines() {
        let line = line.trim_start();
        if rust && (line.starts_with("#[test]") || line.starts_with("#[tokio::test")) {
            attributed = true;
            continue;
        }
        let line = line.strip_prefix("async ").unwrap_or(line);
        let (prefix, wanted) = if rust {
            ("fn ", attributed)
        } else {
            ("def test_", true)
        };
        if let Some(rest) = line.strip_prefix(prefix)
            && let Some((name, _)) = rest.split_once('(')
        {
            if wanted {
                let name = if rust {
                    name.to_string()
                } else {
                    format!("test_{name}")
                };
                names.push(name);
            }
            attributed = false;
        }
    }
    names
}

#[test]
fn every_proto_field_has_an_audit_entry() {
    let fields = proto_fields();
    assert!(fields.len() > 900, "the descriptor set lists the fields");
    assert!(
        fields.contains("core.v1.PodSpec.hostPID"),
        "JSON names are used"
    );
    let rows = audit_rows();
    let missing: Vec<_> = fields.iter().filter(|f| !rows.contains_key(*f)).collect();
    assert!(
        missing.is_empty(),
        "fields in proto/ without a row in docs/FIELDS.md (say what acts on each, or refuse it): {missing:?}"
    );
    let gone: Vec<_> = rows.keys().filter(|f| !fields.contains(*f)).collect();
    assert!(
        gone.is_empty(),
        "rows for fields no longer in proto/: {gone:?}"
    );
    let tests = tests();
    let strategy = repo().join("services/apiserver/src/strategy");
    for (field, (status, test)) in &rows {
        assert!(
            STATUSES.contains(&status.as_str()),
            "{field}: status {status:?} is not one of {STATUSES:?}"
        );
        let Some(file) = tests.get(test) else {
            panic!("{field}: no test named {test:?}");
        };
        // A refusal is the API server's: shown by a test of its rules.
        assert!(
            status != "refused" || file.starts_with(&strategy),
            "{field}: refused, but {test:?} is not a test of the API server's rules"
        );
    }
}

#[test]
fn only_tests_count_as_tests() {
    let rust = "fn helper() {}\n    #[tokio::test(flavor = \"multi_thread\")]\n    async fn one_thing() {}\n#[test]\nfn two() {}\nfn env(\n";
    assert_eq!(test_names(rust, true), ["one_thing", "two"]);
    let python = "def helper(x):\n    pass\ndef test_three(client):\n";
    assert_eq!(test_names(python, false), ["test_three"]);
    assert!(Path::new(&repo().join("docs/FIELDS.md")).exists());
}
