use std::collections::{BTreeMap, HashMap};

use super::*;

const SUBDOMAIN_MESSAGE: &str = r"a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

#[test]
fn dns1123_label_accepts_lowercase_alphanumerics_and_inner_hyphens() {
    for ok in ["a", "0", "abc", "a-b", "a--b", "123-abc", &"a".repeat(63)] {
        assert_eq!(is_dns1123_label(ok), Ok(()), "{ok}");
    }
}

#[test]
fn dns1123_label_rejects_bad_shapes() {
    for bad in ["", "A", "-a", "a-", "a_b", "a b", "é", &"a".repeat(64)] {
        assert!(is_dns1123_label(bad).is_err(), "{bad}");
    }
}

#[test]
fn dns1123_label_with_dots_says_dots_are_the_problem() {
    assert_eq!(is_dns1123_label("a.b"), Err("must not contain dots".into()));
}

#[test]
fn dns1123_label_reports_length_and_charset_together() {
    let err = is_dns1123_label(&"A".repeat(64)).unwrap_err();
    assert!(
        err.0
            .starts_with("must be no more than 63 characters; a lowercase RFC 1123 label")
    );
}

#[test]
fn dns1123_subdomain_accepts_dotted_labels() {
    for ok in ["a", "example.com", "a-b.c-d.e", "1.2.3.4", &"a".repeat(253)] {
        assert_eq!(is_dns1123_subdomain(ok), Ok(()), "{ok}");
    }
}

#[test]
fn dns1123_subdomain_rejects_empty_labels_uppercase_and_length() {
    for bad in [
        "",
        ".",
        "a.",
        ".a",
        "a..b",
        "Foo",
        "a_b.c",
        "a.-b",
        &"a".repeat(254),
    ] {
        assert!(is_dns1123_subdomain(bad).is_err(), "{bad}");
    }
}

#[test]
fn dns1123_subdomain_message_matches_kubernetes() {
    assert_eq!(is_dns1123_subdomain("Foo"), Err(SUBDOMAIN_MESSAGE.into()));
}

#[test]
fn dns1035_label_requires_a_leading_letter() {
    assert_eq!(is_dns1035_label("my-service"), Ok(()));
    assert!(
        is_dns1035_label("1abc")
            .unwrap_err()
            .0
            .contains("start with an alphabetic character")
    );
    assert!(is_dns1035_label("").is_err());
}

#[test]
fn qualified_name_accepts_names_and_prefixed_names() {
    for ok in [
        "a",
        "MyName",
        "my.name",
        "123-abc",
        "a_b",
        "example.com/MyName",
        "k8s.io/app",
        &"a".repeat(63),
    ] {
        assert_eq!(is_qualified_name(ok), Ok(()), "{ok}");
    }
}

#[test]
fn qualified_name_rejects_bad_names() {
    for bad in [
        "",
        "-a",
        "a-",
        "a b",
        "a/b/c",
        "/a",
        "a/",
        "Example.com/a",
        &"a".repeat(64),
    ] {
        assert!(is_qualified_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn qualified_name_messages_name_the_part_at_fault() {
    assert_eq!(
        is_qualified_name("/a"),
        Err("prefix part must be non-empty".into())
    );
    let err = is_qualified_name("Bad_Prefix/a").unwrap_err();
    assert!(
        err.0
            .starts_with("prefix part a lowercase RFC 1123 subdomain"),
        "{err}"
    );
    let err = is_qualified_name("a/").unwrap_err();
    assert!(
        err.0
            .starts_with("name part must be non-empty; name part must consist of"),
        "{err}"
    );
    let err = is_qualified_name("a b").unwrap_err();
    assert_eq!(
        err.0,
        "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
    );
    let err = is_qualified_name("a/b/c").unwrap_err();
    assert!(
        err.0.starts_with("a qualified name must consist of"),
        "{err}"
    );
    assert!(
        err.0
            .ends_with("with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"),
        "{err}"
    );
}

#[test]
fn label_value_allows_empty_and_rejects_bad_edges() {
    for ok in [
        "",
        "a",
        "MyValue",
        "my_value",
        "12345",
        "a.b-c_d",
        &"a".repeat(63),
    ] {
        assert_eq!(is_label_value(ok), Ok(()), "{ok}");
    }
    for bad in ["-a", "a-", "_a", "a b", "a/b", "a=b", &"a".repeat(64)] {
        assert!(is_label_value(bad).is_err(), "{bad}");
    }
    assert_eq!(
        is_label_value(&"a".repeat(64)),
        Err("must be no more than 63 characters".into())
    );
}

#[test]
fn c_identifier_rejects_leading_digit_and_punctuation() {
    assert_eq!(is_c_identifier("_my_NAME1"), Ok(()));
    for bad in ["", "1a", "a-b", "a.b"] {
        assert!(is_c_identifier(bad).is_err(), "{bad}");
    }
}

#[test]
fn env_var_name_allows_dots_and_dashes_but_not_leading_digits() {
    for ok in ["MY_ENV.NAME", "my.env-name", "MyEnvName1", "-a", ".a", "_"] {
        assert_eq!(is_env_var_name(ok), Ok(()), "{ok}");
    }
    for bad in ["", "1A", "A=B", "A B", "é"] {
        assert!(is_env_var_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn env_var_name_rejects_relative_path_lookalikes() {
    assert_eq!(is_env_var_name("."), Err("must not be '.'".into()));
    assert_eq!(is_env_var_name(".."), Err("must not be '..'".into()));
    assert_eq!(
        is_env_var_name("..a"),
        Err("must not start with '..'".into())
    );
}

#[test]
fn port_name_follows_iana_service_name_rules() {
    for ok in ["http", "h2c", "web-8080", "a", &"a".repeat(15)] {
        assert_eq!(is_port_name(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        "80",
        "-http",
        "http-",
        "ht--tp",
        "HTTP",
        "http_2",
        &"a".repeat(16),
    ] {
        assert!(is_port_name(bad).is_err(), "{bad}");
    }
    assert_eq!(
        is_port_name("a--"),
        Err("must not contain consecutive hyphens; must not begin or end with a hyphen".into())
    );
}

#[test]
fn port_number_must_be_between_1_and_65535() {
    assert_eq!(is_valid_port_num(1), Ok(()));
    assert_eq!(is_valid_port_num(65535), Ok(()));
    for bad in [0, -1, 65536, i32::MIN, i32::MAX] {
        assert_eq!(
            is_valid_port_num(bad),
            Err("must be between 1 and 65535, inclusive".into())
        );
    }
}

#[test]
fn field_errors_display_like_kubernetes() {
    let mut errors = FieldErrors::new();
    errors.invalid(
        "metadata.name",
        "Foo",
        is_dns1123_subdomain("Foo").unwrap_err(),
    );
    errors.required("spec.containers");
    assert_eq!(
        errors.to_string(),
        format!(
            "metadata.name: Invalid value: \"Foo\": {SUBDOMAIN_MESSAGE}; spec.containers: Required value"
        )
    );
}

#[test]
fn field_errors_show_numbers_unquoted() {
    let mut errors = FieldErrors::new();
    errors.invalid("spec.ports[0].port", 0, is_valid_port_num(0).unwrap_err());
    assert_eq!(
        errors.to_string(),
        "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
    );
}

#[test]
fn field_errors_helpers_use_kubernetes_error_types() {
    let mut errors = FieldErrors::new();
    errors.forbidden("spec.nodeName", "may not be set on create");
    errors.not_supported(
        "spec.restartPolicy",
        "Sometimes",
        &["Always", "OnFailure", "Never"],
    );
    errors.duplicate("spec.containers[1].name", "app");
    errors.too_long("metadata.name", 253);
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "spec.nodeName: Forbidden: may not be set on create",
            "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
            "spec.containers[1].name: Duplicate value: \"app\"",
            "metadata.name: Too long: may not be more than 253 bytes",
        ]
    );
}

#[test]
fn field_errors_into_result_is_ok_only_when_empty() {
    assert_eq!(FieldErrors::new().into_result(), Ok(()));
    let mut errors = FieldErrors::new();
    errors.push("a", "b");
    assert_eq!(errors.len(), 1);
    let err = errors.clone().into_result().unwrap_err();
    assert_eq!(err, errors);
    let module_error: Error = err.into();
    assert_eq!(module_error.to_string(), "a: b");
}

#[test]
fn invalid_value_echo_is_truncated_on_a_char_boundary() {
    let mut errors = FieldErrors::new();
    let huge = "é".repeat(100_000);
    errors.invalid("x", &huge, "too odd");
    let message = &errors.errors()[0].message;
    assert!(
        message.len() < 2 * MAX_ECHOED_VALUE_BYTES,
        "{}",
        message.len()
    );
    assert!(message.contains("truncated"));
    assert!(message.ends_with(": too odd"));
}

#[test]
fn validate_labels_reports_bad_keys_and_values_in_key_order() {
    let labels: HashMap<String, String> = [("z", "-bad"), ("app", "web"), ("bad key", "ok")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let mut errors = FieldErrors::new();
    validate_labels("metadata.labels", &labels, &mut errors);
    assert_eq!(errors.len(), 2);
    assert!(
        errors.errors()[0]
            .message
            .starts_with("Invalid value: \"bad key\": name part must consist of")
    );
    assert!(
        errors.errors()[1]
            .message
            .starts_with("Invalid value: \"-bad\": a valid label must be an empty string")
    );
    assert!(errors.iter().all(|e| e.path == "metadata.labels"));
}

#[test]
fn validate_labels_accepts_btreemaps_of_valid_labels() {
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "web".to_owned()),
        ("tier".to_owned(), String::new()),
    ]);
    let mut errors = FieldErrors::new();
    validate_labels("metadata.labels", &labels, &mut errors);
    assert!(errors.is_empty(), "{errors}");
}

#[test]
fn validate_annotations_ignores_key_case() {
    let annotations = HashMap::from([(
        "Example.com/Some-Key".to_owned(),
        "any value at all, even {json}".to_owned(),
    )]);
    let mut errors = FieldErrors::new();
    validate_annotations("metadata.annotations", &annotations, &mut errors);
    assert!(errors.is_empty(), "{errors}");
}

#[test]
fn validate_annotations_rejects_bad_keys() {
    let annotations = HashMap::from([("a/b/c".to_owned(), String::new())]);
    let mut errors = FieldErrors::new();
    validate_annotations("metadata.annotations", &annotations, &mut errors);
    assert_eq!(errors.len(), 1);
    assert!(
        errors
            .to_string()
            .starts_with("metadata.annotations: Invalid value: \"a/b/c\": a qualified name")
    );
}

#[test]
fn validate_annotations_limits_total_size_to_256_kib() {
    let at_limit = HashMap::from([("k".to_owned(), "v".repeat(TOTAL_ANNOTATION_SIZE_LIMIT - 1))]);
    let mut errors = FieldErrors::new();
    validate_annotations("metadata.annotations", &at_limit, &mut errors);
    assert!(errors.is_empty());

    let over = HashMap::from([("k".to_owned(), "v".repeat(TOTAL_ANNOTATION_SIZE_LIMIT))]);
    validate_annotations("metadata.annotations", &over, &mut errors);
    assert_eq!(
        errors.to_string(),
        "metadata.annotations: Too long: may not be more than 262144 bytes (annotations total 262145 bytes)"
    );
}
