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
/// nested messages joined with dots, map entries left out; each with the
/// field's name in the proto (as Rust spells it).
fn proto_fields() -> BTreeMap<String, String> {
    let set =
        FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("the descriptor set");
    let mut fields = BTreeMap::new();
    fn walk(prefix: &str, message: &DescriptorProto, fields: &mut BTreeMap<String, String>) {
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
            fields.insert(format!("{name}.{json}"), field.name().to_string());
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

/// The tests a source file defines (with, in Rust, the checks
/// `on_both_stores!` makes a test of on each store).
fn test_names(text: &str, rust: bool) -> Vec<String> {
    let mut names = Vec::new();
    let mut attributed = false;
    let mut in_macro = false;
    for line in text.lines() {
        let line = line.trim_start();
        if rust && line.starts_with("on_both_stores!(") {
            in_macro = true;
            continue;
        }
        if in_macro {
            let name = line.trim_end_matches([',', ')', ';', ' ']);
            if !name.is_empty() {
                names.push(name.to_string());
            }
            in_macro = !line.contains(')');
            continue;
        }
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

/// The functions a source file defines, by name: each one's text, from
/// its `fn`/`def` line to the next function at its indentation or less
/// (functions of the same name, as in different test modules, joined).
fn functions(text: &str) -> BTreeMap<String, String> {
    let starts: Vec<(usize, usize, String)> = text
        .lines()
        .scan(0, |offset, line| {
            let at = *offset;
            *offset += line.len() + 1;
            Some((at, line))
        })
        .filter_map(|(at, line)| {
            let indent = line.len() - line.trim_start().len();
            let mut rest = line.trim_start();
            for prefix in ["pub(crate) ", "pub(super) ", "pub ", "async "] {
                rest = rest.strip_prefix(prefix).unwrap_or(rest);
            }
            let rest = rest
                .strip_prefix("fn ")
                .or_else(|| rest.strip_prefix("def "))?;
            let (name, _) = rest.split_once(['(', '<'])?;
            Some((at, indent, name.trim().to_string()))
        })
        .collect();
    let mut functions: BTreeMap<String, String> = BTreeMap::new();
    for (i, (at, indent, name)) in starts.iter().enumerate() {
        let end = starts[i + 1..]
            .iter()
            .find(|(_, other, _)| other <= indent)
            .map_or(text.len(), |(next, _, _)| *next);
        functions
            .entry(name.clone())
            .or_default()
            .push_str(&text[*at..end]);
    }
    functions
}

/// The text a test reads as: its own, that of the functions of its file
/// it calls (and they call), and the files it `include_str!`s.
fn test_text(test: &str, file: &Path) -> String {
    let source = std::fs::read_to_string(file).unwrap_or_default();
    let functions = functions(&source);
    let Some(own) = functions.get(test) else {
        return String::new();
    };
    let mut text = own.clone();
    let mut seen = BTreeSet::from([test.to_string()]);
    let mut todo = vec![own.clone()];
    while let Some(body) = todo.pop() {
        let words = body.split(|c: char| !(c.is_alphanumeric() || c == '_'));
        for word in words {
            if let Some(called) = functions.get(word)
                && seen.insert(word.to_string())
            {
                text.push_str(called);
                todo.push(called.clone());
            }
        }
    }
    for included in text.clone().split("include_str!(\"").skip(1) {
        if let Some((path, _)) = included.split_once('"')
            && let Some(dir) = file.parent()
            && let Ok(content) = std::fs::read_to_string(dir.join(path))
        {
            text.push_str(&content);
        }
    }
    text
}

#[test]
fn every_proto_field_has_an_audit_entry() {
    let fields = proto_fields();
    assert!(fields.len() > 900, "the descriptor set lists the fields");
    assert!(
        fields.contains_key("core.v1.PodSpec.hostPID"),
        "JSON names are used"
    );
    let rows = audit_rows();
    let missing: Vec<_> = fields.keys().filter(|f| !rows.contains_key(*f)).collect();
    assert!(
        missing.is_empty(),
        "fields in proto/ without a row in docs/FIELDS.md (say what acts on each, or refuse it): {missing:?}"
    );
    let gone: Vec<_> = rows.keys().filter(|f| !fields.contains_key(*f)).collect();
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
    let checks = "async fn three(c: Cluster) {}\non_both_stores!(\n    three,\n    four,\n);\nfn five() {}\n";
    assert_eq!(test_names(checks, true), ["three", "four"]);
    let python = "def helper(x):\n    pass\ndef test_three(client):\n";
    assert_eq!(test_names(python, false), ["test_three"]);
    assert!(Path::new(&repo().join("docs/FIELDS.md")).exists());
}

/// Rows whose test acts on the field without spelling it: a real client
/// (kubectl, the Python client, grpcurl) or Skiff's own components send
/// it, or a shared path handles it, and the test shows the effect. Each
/// says how. A row whose test comes to name its field must leave this
/// list (the test below says so).
const UNNAMED: &[(&str, &str)] = &[];

#[test]
fn every_acting_field_is_named_by_its_test() {
    let names = proto_fields();
    let tests = tests();
    let (mut unnamed, mut stale) = (Vec::new(), Vec::new());
    for (field, (status, test)) in audit_rows() {
        let (Some(proto), Some(file)) = (names.get(&field), tests.get(&test)) else {
            continue; // the test above reports it
        };
        if status != "acts" {
            continue;
        }
        let text = test_text(&test, file);
        let json = field.rsplit('.').next().unwrap_or_default();
        // As JSON and the proto spell it, or as a oneof's variant
        // (`closeStdin` → `CloseStdin`).
        let variant: String = json
            .chars()
            .take(1)
            .flat_map(char::to_uppercase)
            .chain(json.chars().skip(1))
            .collect();
        let named = [json, proto.as_str(), variant.as_str()]
            .iter()
            .any(|name| text.contains(name));
        let excused = UNNAMED.iter().any(|(f, _)| *f == field);
        if named && excused {
            stale.push(field);
        } else if !named && !excused {
            unnamed.push(format!("{field} ({test})"));
        }
    }
    assert!(
        unnamed.is_empty(),
        "{} rows of docs/FIELDS.md name a test that never mentions the field (point each at a test that acts on it, or say in UNNAMED how its test does without naming it):\n{}",
        unnamed.len(),
        unnamed.join("\n")
    );
    assert!(
        stale.is_empty(),
        "UNNAMED entries whose test now names the field: remove them: {stale:?}"
    );
}

#[test]
fn a_test_reads_with_the_helpers_it_calls() {
    let rust = "fn helper() {\n    inner(1)\n}\n\nfn inner(x: u8) {\n    let depth = x;\n}\n\nfn unrelated() {\n    let width = 2;\n}\n\n#[test]\nfn the_test() {\n    helper();\n}\n";
    let functions = functions(rust);
    assert_eq!(functions.len(), 4);
    assert!(functions["helper"].contains("inner(1)"));
    assert!(!functions["helper"].contains("depth"));
    let dir = std::env::temp_dir().join(format!("skiff-fields-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("t.rs");
    std::fs::write(&file, rust).unwrap();
    let text = test_text("the_test", &file);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(text.contains("depth"), "through helper to inner");
    assert!(!text.contains("width"), "not what it does not call");
}
