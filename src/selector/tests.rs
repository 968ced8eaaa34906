use super::*;

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn sel(s: &str) -> LabelSelector {
    LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn parse_error(s: &str) -> String {
    match LabelSelector::parse(s) {
        Ok(parsed) => panic!("{s:?} parsed as {parsed}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn empty_selector_matches_everything() {
    for empty in ["", "   ", "\t\n"] {
        let selector = sel(empty);
        assert!(selector.is_empty());
        assert!(selector.matches(&labels(&[])));
        assert!(selector.matches(&labels(&[("a", "b")])));
        assert_eq!(selector.to_string(), "");
    }
}

#[test]
fn equality_requires_the_key() {
    let selector = sel("app=web");
    assert!(selector.matches(&labels(&[("app", "web")])));
    assert!(!selector.matches(&labels(&[("app", "db")])));
    assert!(!selector.matches(&labels(&[])));
    assert_eq!(sel("app==web"), selector);
}

#[test]
fn not_equals_matches_missing_key() {
    let selector = sel("app!=web");
    assert!(selector.matches(&labels(&[])));
    assert!(selector.matches(&labels(&[("app", "db")])));
    assert!(!selector.matches(&labels(&[("app", "web")])));
}

#[test]
fn set_based_in_requires_the_key() {
    let selector = sel("env in (prod, staging)");
    assert!(selector.matches(&labels(&[("env", "prod")])));
    assert!(selector.matches(&labels(&[("env", "staging")])));
    assert!(!selector.matches(&labels(&[("env", "dev")])));
    assert!(!selector.matches(&labels(&[])));
}

#[test]
fn set_based_notin_matches_missing_key() {
    let selector = sel("env notin (prod,staging)");
    assert!(selector.matches(&labels(&[])));
    assert!(selector.matches(&labels(&[("env", "dev")])));
    assert!(!selector.matches(&labels(&[("env", "prod")])));
}

#[test]
fn exists_and_does_not_exist_check_presence_only() {
    let exists = sel("canary");
    assert!(exists.matches(&labels(&[("canary", "")])));
    assert!(!exists.matches(&labels(&[])));
    let absent = sel("!canary");
    assert!(absent.matches(&labels(&[])));
    assert!(!absent.matches(&labels(&[("canary", "true")])));
}

#[test]
fn all_requirements_must_match() {
    let selector = sel("app=web,tier!=db,env in (prod),!canary,owner");
    let base = [("app", "web"), ("env", "prod"), ("owner", "me")];
    assert!(selector.matches(&labels(&base)));
    let mut with_canary = base.to_vec();
    with_canary.push(("canary", "yes"));
    assert!(!selector.matches(&labels(&with_canary)));
    let mut db = base.to_vec();
    db.push(("tier", "db"));
    assert!(!selector.matches(&labels(&db)));
}

#[test]
fn matching_works_on_btreemaps_and_references() {
    let map = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
    assert!(sel("app=web").matches(&map));
    assert!(sel("app=web").matches(&&map));
}

#[test]
fn whitespace_between_tokens_is_ignored() {
    let spaced = sel("  app =  web ,\tenv in(prod ,staging ) , ! canary , tier notin ( a )  ");
    assert_eq!(
        spaced,
        sel("app=web,env in (prod,staging),!canary,tier notin (a)")
    );
}

#[test]
fn empty_values_follow_kubernetes() {
    assert_eq!(sel("a=").requirements()[0].values(), [""]);
    assert_eq!(sel("a=,b=c").requirements()[0].values(), [""]);
    assert_eq!(sel("a in ()").requirements()[0].values(), [""]);
    assert_eq!(sel("a in (x,)").requirements()[0].values(), ["", "x"]);
    assert_eq!(sel("a in (,x)").requirements()[0].values(), ["", "x"]);
    assert_eq!(
        sel("a in (x,,y)").requirements()[0].values(),
        ["", "x", "y"]
    );
    assert!(sel("a=").matches(&labels(&[("a", "")])));
    assert!(!sel("a=").matches(&labels(&[])));
}

#[test]
fn keywords_are_usable_as_keys_and_values() {
    let selector = sel("in=notin,notin in (in)");
    assert!(selector.matches(&labels(&[("in", "notin"), ("notin", "in")])));
}

#[test]
fn display_is_canonical_and_reparses() {
    let selector = sel("z in (b,a,b), a==1, !m , k, y notin (q), x!=2");
    let canonical = "a=1,k,!m,x!=2,y notin (q),z in (a,b)";
    assert_eq!(selector.to_string(), canonical);
    assert_eq!(sel(canonical), selector);
    for tricky in ["a=", "a in ()", "a in (,x)", "example.com/key=Value_1.2-3"] {
        let once = sel(tricky);
        assert_eq!(sel(&once.to_string()), once, "{tricky}");
    }
}

#[test]
fn requirements_expose_key_operator_and_sorted_values() {
    let selector = sel("b notin (y,x),a");
    let [a, b] = selector.requirements() else {
        panic!("expected two requirements");
    };
    assert_eq!(
        (a.key(), a.operator(), a.values()),
        ("a", Operator::Exists, &[][..])
    );
    assert_eq!(b.key(), "b");
    assert_eq!(b.operator(), Operator::NotIn);
    assert_eq!(b.values(), ["x", "y"]);
    assert_eq!(b.to_string(), "b notin (x,y)");
}

#[test]
fn unclosed_value_list_reports_missing_paren() {
    assert_eq!(
        parse_error("app in (a"),
        "invalid label selector \"app in (a\": missing closing ')'"
    );
    assert_eq!(
        parse_error("app in ("),
        "invalid label selector \"app in (\": missing closing ')'"
    );
}

#[test]
fn syntax_errors_name_what_was_found() {
    let cases = [
        ("a,", "trailing ','; expected a requirement after it"),
        (
            ",a",
            "empty requirement; expected a label key or '!' before ','",
        ),
        (
            "a,,b",
            "empty requirement; expected a label key or '!' before ','",
        ),
        (
            "a b",
            "expected '=', '==', '!=', 'in' or 'notin' after key \"a\", found \"b\"",
        ),
        (
            "a in b",
            "expected '(' after \"in\" for key \"a\", found \"b\"",
        ),
        (
            "a notin",
            "expected '(' after \"notin\" for key \"a\", found end of selector",
        ),
        (
            "a=(b)",
            "expected a value after '=' for key \"a\", found '('",
        ),
        (
            "a=b c",
            "expected ',' or end of selector after requirement \"a=b\", found \"c\"",
        ),
        (
            "a=b=c",
            "expected ',' or end of selector after requirement \"a=b\", found '='",
        ),
        (
            "!a=b",
            "expected ',' or end of selector after requirement \"!a\", found '='",
        ),
        ("!", "expected a label key after '!', found end of selector"),
        ("!!a", "expected a label key after '!', found '!'"),
        ("=a", "expected a label key or '!', found '='"),
        ("(a)", "expected a label key or '!', found '('"),
        (
            "a in (b c)",
            "expected ',' or ')' after value \"b\", found \"c\"",
        ),
        (
            "a in (b=c)",
            "expected ',' or ')' after value \"b\", found '='",
        ),
        (
            "a in ((b))",
            "expected a value, ',' or ')' in the values of key \"a\", found '('",
        ),
        (
            "a>1",
            "operator '>' after key \"a\" is not supported; use '=', '==', '!=', 'in' or 'notin'",
        ),
    ];
    for (input, reason) in cases {
        assert_eq!(
            parse_error(input),
            format!("invalid label selector {input:?}: {reason}"),
            "{input}"
        );
    }
}

#[test]
fn invalid_keys_and_values_are_rejected_with_kubernetes_reasons() {
    let err = parse_error("Bad_Prefix/app=web");
    assert!(
        err.starts_with("invalid label selector \"Bad_Prefix/app=web\": invalid label key \"Bad_Prefix/app\": prefix part a lowercase RFC 1123 subdomain"),
        "{err}"
    );
    let err = parse_error("app=-web");
    assert!(
        err.starts_with("invalid label selector \"app=-web\": invalid value \"-web\" for label key \"app\": a valid label must be an empty string"),
        "{err}"
    );
    assert!(parse_error("app in (ok,bad!)").contains("invalid"));
    assert!(
        parse_error(&format!("app={}", "v".repeat(64)))
            .contains("must be no more than 63 characters")
    );
    assert!(parse_error("!a/b/c").contains("invalid label key \"a/b/c\""));
    assert!(parse_error("ключ=x").contains("invalid label key \"ключ\""));
}

#[test]
fn from_parts_combines_match_labels_and_expressions() {
    let match_labels = labels(&[("app", "web"), ("tier", "front")]);
    let expressions = vec![
        (
            "env".to_owned(),
            "In".to_owned(),
            vec!["prod".to_owned(), "staging".to_owned()],
        ),
        ("canary".to_owned(), "DoesNotExist".to_owned(), vec![]),
        ("zone".to_owned(), "NotIn".to_owned(), vec!["b".to_owned()]),
        ("owner".to_owned(), "Exists".to_owned(), vec![]),
    ];
    let selector = LabelSelector::from_parts(&match_labels, &expressions).unwrap();
    assert_eq!(
        selector.to_string(),
        "app=web,!canary,env in (prod,staging),owner,tier=front,zone notin (b)"
    );
    assert_eq!(sel(&selector.to_string()), selector);
}

#[test]
fn from_parts_without_requirements_matches_everything() {
    let selector = LabelSelector::from_parts(&HashMap::new(), &[]).unwrap();
    assert!(selector.is_empty());
    assert!(selector.matches(&labels(&[("any", "thing")])));
    assert_eq!(selector, LabelSelector::everything());
}

#[test]
fn from_parts_rejects_unknown_operators_by_name() {
    let expressions = vec![
        ("a".to_owned(), "Exists".to_owned(), vec![]),
        ("app".to_owned(), "Equals".to_owned(), vec!["x".to_owned()]),
    ];
    let err = LabelSelector::from_parts(&HashMap::new(), &expressions).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid label selector matchExpressions[1]: unknown operator \"Equals\" for key \"app\"; valid operators are In, NotIn, Exists and DoesNotExist"
    );
}

#[test]
fn from_parts_checks_value_counts() {
    let no_values = vec![("app".to_owned(), "In".to_owned(), vec![])];
    assert_eq!(
        LabelSelector::from_parts(&HashMap::new(), &no_values)
            .unwrap_err()
            .to_string(),
        "invalid label selector matchExpressions[0]: operator In for key \"app\" needs at least one value"
    );
    let values = vec![(
        "app".to_owned(),
        "Exists".to_owned(),
        vec!["a".to_owned(), "b".to_owned()],
    )];
    assert_eq!(
        LabelSelector::from_parts(&HashMap::new(), &values)
            .unwrap_err()
            .to_string(),
        "invalid label selector matchExpressions[0]: operator Exists for key \"app\" takes no values, but 2 were given"
    );
}

#[test]
fn from_parts_validates_keys_and_values() {
    let err = LabelSelector::from_parts(&labels(&[("app", "bad value")]), &[]).unwrap_err();
    assert!(
        err.to_string().starts_with("invalid label selector matchLabels: invalid value \"bad value\" for label key \"app\": a valid label"),
        "{err}"
    );
    let expressions = vec![("bad key".to_owned(), "Exists".to_owned(), vec![])];
    let err = LabelSelector::from_parts(&HashMap::new(), &expressions).unwrap_err();
    assert!(
        matches!(err, Error::InvalidKey { ref context, .. } if context == "matchExpressions[0]"),
        "{err}"
    );
}

#[test]
fn field_selector_matches_equality_and_inequality() {
    let selector = FieldSelector::parse("spec.nodeName=node-1,status.phase!=Failed").unwrap();
    let pod = |node: &'static str, phase: &'static str| {
        move |field: &str| match field {
            "spec.nodeName" => Some(node),
            "status.phase" => Some(phase),
            _ => None,
        }
    };
    assert!(selector.matches(pod("node-1", "Running")));
    assert!(!selector.matches(pod("node-2", "Running")));
    assert!(!selector.matches(pod("node-1", "Failed")));
}

#[test]
fn field_selector_treats_missing_fields_as_empty() {
    let missing = |_: &str| None::<String>;
    assert!(
        FieldSelector::parse("spec.nodeName=")
            .unwrap()
            .matches(missing)
    );
    assert!(
        !FieldSelector::parse("spec.nodeName=a")
            .unwrap()
            .matches(missing)
    );
    assert!(
        FieldSelector::parse("spec.nodeName!=a")
            .unwrap()
            .matches(missing)
    );
}

#[test]
fn field_selector_accepts_double_equals_and_whitespace() {
    let selector: FieldSelector = " metadata.name == web , spec.nodeName = n1 ,"
        .parse()
        .unwrap();
    assert_eq!(selector.to_string(), "metadata.name=web,spec.nodeName=n1");
    assert!(FieldSelector::parse("").unwrap().is_empty());
    assert!(
        FieldSelector::parse("")
            .unwrap()
            .matches(|_: &str| None::<String>)
    );
}

#[test]
fn field_selector_value_for_narrows_on_equality_only() {
    let selector = FieldSelector::parse("spec.nodeName=node-1,metadata.name!=x").unwrap();
    assert_eq!(selector.value_for("spec.nodeName"), Some("node-1"));
    assert_eq!(selector.value_for("metadata.name"), None);
    assert_eq!(selector.value_for("status.phase"), None);
    assert_eq!(
        FieldSelector::parse("spec.nodeName==")
            .unwrap()
            .value_for("spec.nodeName"),
        Some("")
    );
}

#[test]
fn field_selector_unescapes_and_reescapes_values() {
    let selector = FieldSelector::parse(r"metadata.name=a\,b\=c\\d,x=y").unwrap();
    assert_eq!(selector.requirements()[0].value(), r"a,b=c\d");
    assert_eq!(selector.requirements()[0].operator(), FieldOperator::Equals);
    assert_eq!(selector.requirements()[0].field(), "metadata.name");
    assert_eq!(selector.to_string(), r"metadata.name=a\,b\=c\\d,x=y");
    assert_eq!(
        FieldSelector::parse(&selector.to_string()).unwrap(),
        selector
    );
}

#[test]
fn field_selector_rejects_malformed_terms_precisely() {
    let message = |s: &str| FieldSelector::parse(s).unwrap_err().to_string();
    assert_eq!(
        message("spec.nodeName"),
        "invalid field selector \"spec.nodeName\": term \"spec.nodeName\" has no operator; expected 'field=value', 'field==value' or 'field!=value'"
    );
    assert_eq!(
        message("=x"),
        "invalid field selector \"=x\": term \"=x\" has no field name before the operator"
    );
    assert_eq!(
        message("a=b=c"),
        "invalid field selector \"a=b=c\": in the value of field \"a\": unescaped '='; write '\\=' for a literal '='"
    );
    assert_eq!(
        message(r"a=b\x"),
        "invalid field selector \"a=b\\\\x\": in the value of field \"a\": invalid escape sequence \"\\x\"; only '\\\\', '\\,' and '\\=' are allowed"
    );
    assert!(message(r"a=b\").contains("trailing '\\'"));
    assert!(message("!=x").contains("has no field name"));
}

#[test]
fn field_names_are_paths_regression_fuzz_selectors() {
    // Found by the selectors fuzz target: "!   =" parsed as the field
    // "!" and printed as "!=", which means something else.
    let err = FieldSelector::parse("!          =   ").unwrap_err();
    assert!(err.to_string().contains("field name \"!\""), "{err}");
    assert!(FieldSelector::parse("a b=c").is_err());
    assert!(FieldSelector::parse("involvedObject.kind=Pod,spec.node-name_x/y=1").is_ok());
}

#[test]
fn field_selector_parse_with_lists_supported_fields() {
    let allowed = ["metadata.name", "metadata.namespace", "spec.nodeName"];
    assert!(FieldSelector::parse_with("spec.nodeName=n1", &allowed).is_ok());
    assert_eq!(
        FieldSelector::parse_with("spec.nodeName=n1,spec.host=x", &allowed)
            .unwrap_err()
            .to_string(),
        "invalid field selector \"spec.nodeName=n1,spec.host=x\": field \"spec.host\" is not supported; supported fields: metadata.name, metadata.namespace, spec.nodeName"
    );
    assert!(
        FieldSelector::parse_with("a=b", &[])
            .unwrap_err()
            .to_string()
            .ends_with("supported fields: none")
    );
    assert!(FieldSelector::parse_with("", &[]).unwrap().is_empty());
}

#[test]
fn parsers_never_panic_on_odd_input() {
    let inputs = [
        "\\",
        "é=é",
        "a=é",
        "(",
        ")",
        "!=",
        "==",
        "a in (é)",
        ",",
        "=",
        "\u{0}",
        "a\u{0}=b",
        "!(",
        "a notin ()",
        "a=\\,",
        "🦀 in (🦀)",
    ];
    for input in inputs {
        let _ = LabelSelector::parse(input);
        let _ = FieldSelector::parse(input);
        let _ = FieldSelector::parse_with(input, &["a"]);
    }
}
