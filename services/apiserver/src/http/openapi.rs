//! OpenAPI v3 schemas of the kinds, made from the proto descriptors the
//! build compiled (with their comments as descriptions), the way
//! Kubernetes publishes its types: each kind's schema carries its
//! `x-kubernetes-group-version-kind`, fields referring to other messages
//! use `allOf: [$ref]` beside their own description, lists merged by a
//! key say so (`x-kubernetes-patch-merge-key`, the same keys the server's
//! strategic merge uses), `IntOrString` fields and free-form fields
//! (`fieldsV1`) are marked as Kubernetes marks them. `kubectl explain`
//! reads these.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use serde_json::{Map, Value, json};

/// Every message of the descriptor set, by full name (`.skiff.apps.v1.Deployment`).
struct Messages {
    by_name: HashMap<String, Described>,
}

/// A message and the comments of it and its fields.
struct Described {
    message: DescriptorProto,
    comment: String,
    field_comments: Vec<String>,
}

fn messages() -> &'static Messages {
    static MESSAGES: OnceLock<Messages> = OnceLock::new();
    MESSAGES.get_or_init(|| {
        let mut by_name = HashMap::new();
        // The build wrote the set: it decodes.
        let set = FileDescriptorSet::decode(skiff::pb::FILE_DESCRIPTOR_SET).unwrap_or_default();
        for file in set.file {
            let comments: HashMap<Vec<i32>, String> = file
                .source_code_info
                .iter()
                .flat_map(|info| &info.location)
                .filter_map(|l| {
                    let text = l.leading_comments.as_deref()?.trim();
                    (!text.is_empty()).then(|| (l.path.clone(), text.to_string()))
                })
                .collect();
            let package = file.package.unwrap_or_default();
            for (i, message) in file.message_type.into_iter().enumerate() {
                collect(
                    &format!(".{package}"),
                    message,
                    vec![4, i as i32],
                    &comments,
                    &mut by_name,
                );
            }
        }
        Messages { by_name }
    })
}

/// Adds `message` (at `path` in its file) and its nested messages.
fn collect(
    scope: &str,
    message: DescriptorProto,
    path: Vec<i32>,
    comments: &HashMap<Vec<i32>, String>,
    into: &mut HashMap<String, Described>,
) {
    let name = format!("{scope}.{}", message.name());
    for (j, nested) in message.nested_type.iter().enumerate() {
        let mut nested_path = path.clone();
        nested_path.extend([3, j as i32]);
        collect(&name, nested.clone(), nested_path, comments, into);
    }
    let field_comments = (0..message.field.len())
        .map(|k| {
            let mut field_path = path.clone();
            field_path.extend([2, k as i32]);
            comments.get(&field_path).cloned().unwrap_or_default()
        })
        .collect();
    let comment = comments.get(&path).cloned().unwrap_or_default();
    into.insert(
        name,
        Described {
            message,
            comment,
            field_comments,
        },
    );
}

/// The proto package of a Kubernetes group and version: `skiff.apps.v1`,
/// `skiff.core.v1` for the core group, `skiff.rbac.v1` for
/// `rbac.authorization.k8s.io`.
fn package_of(group: &str, version: &str) -> String {
    let short = group.split('.').next().filter(|g| !g.is_empty());
    format!("skiff.{}.{version}", short.unwrap_or("core"))
}

/// A schema name of a message (`skiff.apps.v1.Deployment`).
fn schema_name(full: &str) -> String {
    full.trim_start_matches('.').to_string()
}

/// The schemas of `kinds` (kind, group, version) and of every message
/// they reach, by name.
pub fn components(kinds: &[(&str, &str, &str)]) -> Map<String, Value> {
    let all = messages();
    let mut out = Map::new();
    let mut queue: Vec<(String, String)> = Vec::new();
    for (kind, group, version) in kinds {
        let full = format!(".{}.{kind}", package_of(group, version));
        let Some(described) = all.by_name.get(&full) else {
            continue;
        };
        let mut schema = message_schema(described, "", &mut queue);
        schema["x-kubernetes-group-version-kind"] =
            json!([{"group": group, "kind": kind, "version": version}]);
        out.insert(schema_name(&full), schema);
    }
    // Referenced messages, each once (the parent field name picks merge
    // keys, as the server's strategic merge does).
    while let Some((full, parent)) = queue.pop() {
        let name = schema_name(&full);
        if out.contains_key(&name) {
            continue;
        }
        let Some(described) = all.by_name.get(&full) else {
            continue;
        };
        let schema = message_schema(described, &parent, &mut queue);
        out.insert(name, schema);
    }
    out
}

/// One message's schema; the messages it refers to are queued with the
/// JSON name of the field that refers to them.
fn message_schema(described: &Described, parent: &str, queue: &mut Vec<(String, String)>) -> Value {
    let mut properties = Map::new();
    for (field, comment) in described
        .message
        .field
        .iter()
        .zip(&described.field_comments)
    {
        let json_name = field.json_name().to_string();
        let mut property = field_schema(field, queue, &json_name);
        if field.label() == Label::Repeated && !is_map(field) {
            property = json!({"type": "array", "items": property});
            let item_fields = item_field_names(field);
            let path = if parent.is_empty() {
                json_name.clone()
            } else {
                format!("{parent}.{json_name}")
            };
            let sample = Value::Object(item_fields.into_iter().map(|f| (f, Value::Null)).collect());
            if let Some(key) = super::patch::merge_key(&path, Some(&sample)) {
                property["x-kubernetes-patch-merge-key"] = json!(key);
                property["x-kubernetes-patch-strategy"] = json!("merge");
                property["x-kubernetes-list-type"] = json!("map");
                property["x-kubernetes-list-map-keys"] = json!([key]);
            }
        }
        let comment = if comment.is_empty() {
            common_description(&json_name)
        } else {
            comment.as_str()
        };
        if !comment.is_empty() {
            property["description"] = json!(comment);
        }
        properties.insert(json_name, property);
    }
    let mut schema = json!({"type": "object", "properties": properties});
    if !described.comment.is_empty() {
        schema["description"] = json!(described.comment);
    }
    schema
}

/// What the fields every kind has mean, where the proto says nothing.
fn common_description(json_name: &str) -> &str {
    match json_name {
        "apiVersion" => {
            "The versioned schema of this object (`apps/v1`, `v1`): what its fields mean."
        }
        "kind" => "What the object is (`Deployment`), in CamelCase.",
        "metadata" => {
            "The object's name, namespace, labels, annotations, owners and the server's bookkeeping (uid, resourceVersion, generation, creation and deletion times)."
        }
        "spec" => "What the object should be: the desired state, written by its users.",
        "status" => {
            "What the object is, as last observed: written by the system, read-only to users."
        }
        _ => "",
    }
}

/// Points every `$ref` of `schemas` at `prefix` (`#/definitions/` for
/// OpenAPI v2) instead of v3's `#/components/schemas/`.
pub fn refer_to(schemas: &mut Value, prefix: &str) {
    match schemas {
        Value::Object(fields) => {
            for (key, value) in fields.iter_mut() {
                match value {
                    Value::String(target) if key == "$ref" => {
                        if let Some(name) = target.strip_prefix("#/components/schemas/") {
                            *target = format!("{prefix}{name}");
                        }
                    }
                    other => refer_to(other, prefix),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| refer_to(i, prefix)),
        _ => {}
    }
}

fn is_map(field: &FieldDescriptorProto) -> bool {
    field.r#type() == Type::Message
        && messages()
            .by_name
            .get(field.type_name())
            .is_some_and(|m| m.message.options.as_ref().is_some_and(|o| o.map_entry()))
}

/// The JSON names of the fields of a repeated message field's items.
fn item_field_names(field: &FieldDescriptorProto) -> Vec<String> {
    if field.r#type() != Type::Message {
        return Vec::new();
    }
    messages()
        .by_name
        .get(field.type_name())
        .map(|m| {
            m.message
                .field
                .iter()
                .map(|f| f.json_name().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The schema of one value of `field` (an item, when it is repeated).
fn field_schema(
    field: &FieldDescriptorProto,
    queue: &mut Vec<(String, String)>,
    json_name: &str,
) -> Value {
    match field.r#type() {
        Type::String => json!({"type": "string"}),
        Type::Bool => json!({"type": "boolean"}),
        Type::Bytes => json!({"type": "string", "format": "byte"}),
        Type::Double | Type::Float => json!({"type": "number", "format": "double"}),
        Type::Int32 | Type::Sint32 | Type::Sfixed32 | Type::Uint32 | Type::Fixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Type::Int64 | Type::Sint64 | Type::Sfixed64 | Type::Uint64 | Type::Fixed64 => {
            json!({"type": "integer", "format": "int64"})
        }
        Type::Enum => json!({"type": "string"}),
        Type::Message | Type::Group => {
            let full = field.type_name();
            match full {
                ".google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
                ".google.protobuf.Duration" => json!({"type": "string"}),
                ".google.protobuf.Struct" => {
                    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
                }
                // Skiff's `google.protobuf.Value` fields are Kubernetes'
                // IntOrString (ports, maxSurge, maxUnavailable).
                ".google.protobuf.Value" => {
                    json!({"type": "string", "format": "int-or-string", "x-kubernetes-int-or-string": true})
                }
                ".google.protobuf.StringValue" => json!({"type": "string"}),
                ".google.protobuf.BoolValue" => json!({"type": "boolean"}),
                ".google.protobuf.Int32Value" | ".google.protobuf.UInt32Value" => {
                    json!({"type": "integer", "format": "int32"})
                }
                ".google.protobuf.Int64Value" | ".google.protobuf.UInt64Value" => {
                    json!({"type": "integer", "format": "int64"})
                }
                ".google.protobuf.DoubleValue" | ".google.protobuf.FloatValue" => {
                    json!({"type": "number", "format": "double"})
                }
                _ if is_map(field) => {
                    let value = messages()
                        .by_name
                        .get(full)
                        .and_then(|entry| entry.message.field.get(1))
                        .map(|v| field_schema(v, queue, json_name))
                        .unwrap_or_else(|| json!({"type": "string"}));
                    json!({"type": "object", "additionalProperties": value})
                }
                _ => {
                    queue.push((full.to_string(), json_name.to_string()));
                    json!({"allOf": [{"$ref": format!("#/components/schemas/{}", schema_name(full))}]})
                }
            }
        }
    }
}

/// Whether every kind's message is in the descriptor set (a kind whose
/// schema would be missing from its document).
#[cfg(test)]
fn missing(kinds: &[(&str, &str, &str)]) -> Vec<String> {
    kinds
        .iter()
        .filter(|(kind, group, version)| {
            !messages()
                .by_name
                .contains_key(&format!(".{}.{kind}", package_of(group, version)))
        })
        .map(|(kind, _, _)| kind.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_schema_with_its_gvk_and_described_fields() {
        let kinds: Vec<(&str, &str, &str)> = super::super::KINDS
            .iter()
            .map(|k| (k.kind, k.group, k.version))
            .collect();
        assert_eq!(missing(&kinds), Vec::<String>::new());
        let schemas = components(&[("Deployment", "apps", "v1")]);
        let deployment = &schemas["skiff.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "kind": "Deployment", "version": "v1"}])
        );
        let strategy = &schemas["skiff.apps.v1.DeploymentSpec"]["properties"]["strategy"];
        assert_eq!(
            strategy["allOf"][0]["$ref"],
            "#/components/schemas/skiff.apps.v1.DeploymentStrategy"
        );
        assert!(
            strategy["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
        // Containers merge by name, their ports by containerPort: the
        // server's strategic merge keys.
        let pod_spec = &schemas["skiff.core.v1.PodSpec"]["properties"];
        assert_eq!(
            pod_spec["containers"]["x-kubernetes-patch-merge-key"],
            "name"
        );
        let container = &schemas["skiff.core.v1.Container"]["properties"];
        assert_eq!(
            container["ports"]["x-kubernetes-patch-merge-key"],
            "containerPort"
        );
        assert_eq!(
            container["ports"]["items"]["allOf"][0]["$ref"],
            "#/components/schemas/skiff.core.v1.ContainerPort"
        );
        let meta = &schemas["skiff.meta.v1.ObjectMeta"]["properties"];
        assert_eq!(meta["labels"]["additionalProperties"]["type"], "string");
        assert_eq!(meta["creationTimestamp"]["format"], "date-time");
    }
}
