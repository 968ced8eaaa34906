//! Tests of the Docker runtime's pure parts: security options, times, build
//! contexts, the pause program.

use super::create::security_options;
use super::inspect::parse_time;
use super::*;
use std::time::SystemTime;

#[test]
fn confinement_becomes_security_options() {
    use crate::{Profile, Security};
    assert!(security_options(&Security::default()).is_empty());
    let asked = Security {
        no_new_privileges: true,
        seccomp: Profile::Localhost(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#.into()),
        apparmor: Profile::Unconfined,
        ..Default::default()
    };
    assert_eq!(
        security_options(&asked),
        [
            "no-new-privileges",
            r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW"}"#,
            "apparmor=unconfined"
        ]
    );
}

#[test]
fn docker_times_parse_and_the_zero_time_is_none() {
    let t = parse_time(Some("2026-11-26T14:12:00.123456789Z")).expect("parses");
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(secs, 1_795_702_320);
    assert_eq!(parse_time(Some("0001-01-01T00:00:00Z")), None);
    assert_eq!(parse_time(None), None);
}

#[test]
fn build_contexts_are_tar_archives_with_modes() {
    let bytes = tar_of(&[
        ("Dockerfile", 0o644, b"FROM scratch\n"),
        ("pause", 0o755, PAUSE),
    ])
    .unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let entries: Vec<(String, u32)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.header().mode().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [("Dockerfile".into(), 0o644), ("pause".into(), 0o755)]
    );
}

#[test]
fn the_pause_program_is_a_static_executable() {
    assert_eq!(&PAUSE[..4], b"\x7fELF");
}
