//! Tests of the process runtime: refused settings, the shim, logs and
//! liveness.

use super::*;

#[tokio::test]
async fn security_settings_and_sysctls_it_cannot_apply_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let runtime =
        ProcessRuntime::new(dir.path().join("c"), "n1", "/bin/true".into(), "127.0.0.1").unwrap();
    let refused = runtime
        .run_sandbox(&SandboxSpec {
            name: "pod-a".into(),
            sysctls: vec![("net.ipv4.ip_local_port_range".into(), "2000 3000".into())],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Unsupported(_)), "{refused}");
    let sandbox = runtime
        .run_sandbox(&SandboxSpec {
            name: "pod-b".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let container = |security| ContainerSpec {
        name: "app".into(),
        command: Some(vec!["sleep".into(), "1".into()]),
        sandbox_id: sandbox.clone(),
        security,
        ..Default::default()
    };
    let dropped = crate::Security {
        cap_drop: vec!["NET_RAW".into()],
        ..Default::default()
    };
    let refused = runtime.create(&container(dropped)).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("cannot apply a securityContext"),
        "{refused}"
    );
    runtime
        .create(&container(Default::default()))
        .await
        .unwrap();
}

#[test]
fn tail_finds_the_last_lines() {
    let log = b"a\nb\nc\n";
    assert_eq!(&log[tail_offset(log, 2)..], b"b\nc\n");
    assert_eq!(&log[tail_offset(log, 5)..], b"a\nb\nc\n");
    assert_eq!(&log[tail_offset(log, 0)..], b"");
}

#[test]
fn the_shim_records_the_pid_the_output_and_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let argv: Vec<String> = ["sh", "-c", "echo out; echo err >&2; exit 3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let code = shim(dir.path(), &argv).unwrap();
    assert_eq!(code, 3);
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(log.contains("out") && log.contains("err"), "{log:?}");
    assert!(ProcessRuntime::pid(dir.path()).is_some());
    assert_eq!(ProcessRuntime::exit(dir.path()).unwrap().code, 3);
}

#[test]
fn a_missing_program_exits_127_with_the_reason_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let code = shim(dir.path(), &["/nonexistent/program".to_string()]).unwrap();
    assert_eq!(code, 127);
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(log.contains("/nonexistent/program"), "{log:?}");
}

#[test]
fn dead_or_other_processes_are_not_alive() {
    let me = std::process::id();
    assert!(alive(me, start_time(me)));
    assert!(
        !alive(me, start_time(me).map(|t| t + 1)),
        "a reused pid is another process"
    );
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert!(!alive(pid, None));
}
