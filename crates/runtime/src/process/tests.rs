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

#[test]
fn the_shim_writes_each_line_as_a_record_of_its_stream_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let argv: Vec<String> = ["sh", "-c", "echo out; echo err >&2; printf last"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let before = SystemTime::now();
    assert_eq!(shim(dir.path(), &argv).unwrap(), 0);
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort_by_key(|l| l.split(' ').nth(3).unwrap_or_default().to_string());
    let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.splitn(4, ' ').collect()).collect();
    assert_eq!(fields.len(), 3, "{log:?}");
    let streams: Vec<(&str, &str, &str)> = fields.iter().map(|f| (f[1], f[2], f[3])).collect();
    assert_eq!(
        streams,
        [
            ("stderr", "F", "err"),
            ("stdout", "F", "last"),
            ("stdout", "F", "out")
        ]
    );
    for f in &fields {
        let at = humantime::parse_rfc3339(f[0]).unwrap();
        assert!(at >= before - Duration::from_secs(1), "{f:?}");
    }
}

#[test]
fn record_times_are_go_rfc3339_nano() {
    let at = SystemTime::UNIX_EPOCH + Duration::new(200, 120_000_000);
    let mut log = Vec::new();
    logs::write_record(&mut log, at, "stdout", true, b"x").unwrap();
    assert_eq!(log, b"1970-01-01T00:03:20.12Z stdout F x\n");
}

/// A log of records written at the given seconds since the epoch.
fn records(lines: &[(u64, &str, bool, &str)]) -> Vec<u8> {
    let mut log = Vec::new();
    for (at, stream, full, content) in lines {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(*at);
        logs::write_record(&mut log, at, stream, *full, content.as_bytes()).unwrap();
    }
    log
}

#[test]
fn a_reader_gets_the_lines_since_a_time_with_or_without_their_times() {
    let log = records(&[
        (100, "stdout", true, "early"),
        (200, "stderr", true, "late"),
        (300, "stdout", false, "split "),
        (301, "stdout", true, "line"),
    ]);
    let read = |since: Option<i64>, timestamps: bool| {
        let mut reader = logs::LogReader::new(&LogOptions {
            since,
            timestamps,
            ..Default::default()
        });
        // Fed in pieces that cut records anywhere.
        let mut out = Vec::new();
        for piece in log.chunks(7) {
            out.extend(reader.feed(piece));
        }
        out.extend(reader.finish());
        String::from_utf8(out).unwrap()
    };
    assert_eq!(read(None, false), "early\nlate\nsplit line\n");
    assert_eq!(read(Some(150), false), "late\nsplit line\n");
    assert_eq!(read(Some(301), false), "", "a line is judged by its start");
    assert_eq!(
        read(Some(200), true),
        "1970-01-01T00:03:20Z late\n1970-01-01T00:05:00Z split line\n"
    );
    // A log from before records is shown as it is.
    let mut reader = logs::LogReader::new(&LogOptions::default());
    let mut out = reader.feed(b"plain old\nlog");
    out.extend(reader.finish());
    assert_eq!(out, b"plain old\nlog\n");
}

#[tokio::test]
async fn logs_since_and_with_timestamps_come_through_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let runtime =
        ProcessRuntime::new(dir.path().join("c"), "n1", "/bin/true".into(), "127.0.0.1").unwrap();
    let container = dir.path().join("c").join("ctr-1");
    std::fs::create_dir_all(&container).unwrap();
    std::fs::write(
        container.join("log"),
        records(&[(100, "stdout", true, "old"), (200, "stdout", true, "new")]),
    )
    .unwrap();
    let read = async |options: LogOptions| {
        let mut stream = runtime.logs("ctr-1", &options).await.unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        String::from_utf8(out).unwrap()
    };
    assert_eq!(read(LogOptions::default()).await, "old\nnew\n");
    let since = read(LogOptions {
        since: Some(150),
        ..Default::default()
    })
    .await;
    assert_eq!(since, "new\n");
    let stamped = read(LogOptions {
        timestamps: true,
        tail: Some(1),
        ..Default::default()
    })
    .await;
    assert_eq!(stamped, "1970-01-01T00:03:20Z new\n");
}
