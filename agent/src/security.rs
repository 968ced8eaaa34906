//! A pod's `securityContext` on the node: the runtime settings of each
//! container (the container's fields over the pod's, as the kubelet
//! merges them), the kubelet's `runAsNonRoot` check against the image's
//! user, the pod's sysctls, and `fsGroup` ownership of its volumes.
//!
//! One difference from the kubelet, by design: a container that names
//! no seccomp profile gets the runtime's default filter, as the kubelet
//! does with `--seccomp-default` (Kubernetes' own default is
//! `Unconfined`). `Unconfined` must be asked for.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use skiff::pb::core::v1::{Container, Pod, PodSpec, SeccompProfile};
use skiff_runtime::{Profile, Security};

/// Where the agent reads `Localhost` seccomp profiles, under its data
/// directory (the kubelet's `<root-dir>/seccomp`).
pub const SECCOMP_DIR: &str = "seccomp";

/// The runtime security settings of `container` in the pod `spec`.
///
/// # Errors
/// A `Localhost` seccomp profile that is not a readable file beneath
/// the agent's seccomp directory (shown as `CreateContainerConfigError`).
pub fn container_security(
    spec: &PodSpec,
    container: &Container,
    data_dir: &Path,
) -> Result<Security, String> {
    let pod = spec.security_context.clone().unwrap_or_default();
    let own = container.security_context.clone().unwrap_or_default();
    let capabilities = own.capabilities.clone().unwrap_or_default();
    let mut groups: Vec<i64> = pod.fs_group.into_iter().collect();
    for g in &pod.supplemental_groups {
        if !groups.contains(g) {
            groups.push(*g);
        }
    }
    let seccomp = match own
        .seccomp_profile
        .as_ref()
        .or(pod.seccomp_profile.as_ref())
    {
        None => Profile::RuntimeDefault,
        Some(profile) => seccomp(profile, data_dir)?,
    };
    let apparmor = match own
        .app_armor_profile
        .as_ref()
        .or(pod.app_armor_profile.as_ref())
    {
        None => Profile::RuntimeDefault,
        Some(p) => match p.r#type.as_str() {
            "Unconfined" => Profile::Unconfined,
            "Localhost" => Profile::Localhost(p.localhost_profile.clone().unwrap_or_default()),
            _ => Profile::RuntimeDefault,
        },
    };
    Ok(Security {
        user: own.run_as_user.or(pod.run_as_user),
        group: own.run_as_group.or(pod.run_as_group),
        supplemental_groups: groups,
        cap_add: capabilities.add,
        cap_drop: capabilities.drop,
        privileged: own.privileged.unwrap_or(false),
        read_only_root_filesystem: own.read_only_root_filesystem.unwrap_or(false),
        no_new_privileges: own.allow_privilege_escalation == Some(false),
        seccomp,
        apparmor,
    })
}

/// A seccomp profile; a `Localhost` one read from the agent's seccomp
/// directory (its path relative, never leaving it).
fn seccomp(profile: &SeccompProfile, data_dir: &Path) -> Result<Profile, String> {
    match profile.r#type.as_str() {
        "Unconfined" => Ok(Profile::Unconfined),
        "Localhost" => {
            let rel = profile.localhost_profile.as_deref().unwrap_or_default();
            let relative = !rel.is_empty()
                && Path::new(rel)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)));
            if !relative {
                return Err(format!(
                    "seccomp profile {rel:?}: must be a relative path below the node's seccomp directory, without '..'"
                ));
            }
            let path = data_dir.join(SECCOMP_DIR).join(rel);
            let json = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot load seccomp profile {:?}: {e}", path.display()))?;
            Ok(Profile::Localhost(json))
        }
        _ => Ok(Profile::RuntimeDefault),
    }
}

/// Whether [`verify_run_as_non_root`] needs the image's user: the
/// container must not run as root and names no uid.
pub fn needs_image_user(pod: &Pod, container: &Container) -> bool {
    let pod_sc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let own = container.security_context.clone().unwrap_or_default();
    own.run_as_non_root.or(pod_sc.run_as_non_root) == Some(true)
        && own.run_as_user.or(pod_sc.run_as_user).is_none()
}

/// The kubelet's check of `runAsNonRoot` (its words): with no uid given,
/// the image's user must be numeric and not 0.
///
/// # Errors
/// The reason the container may not start.
pub fn verify_run_as_non_root(
    pod: &Pod,
    container: &Container,
    image_user: &str,
) -> Result<(), String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let pod_sc = spec.security_context.unwrap_or_default();
    let own = container.security_context.clone().unwrap_or_default();
    if !own
        .run_as_non_root
        .or(pod_sc.run_as_non_root)
        .unwrap_or(false)
    {
        return Ok(());
    }
    let meta = pod.metadata.clone().unwrap_or_default();
    let who = format!(
        "(pod: \"{}_{}({})\", container: {})",
        meta.name, meta.namespace, meta.uid, container.name
    );
    if let Some(uid) = own.run_as_user.or(pod_sc.run_as_user) {
        if uid == 0 {
            return Err(format!(
                "container's runAsUser breaks non-root policy {who}"
            ));
        }
        return Ok(());
    }
    let user = image_user.split_once(':').map_or(image_user, |(u, _)| u);
    match user.parse::<u32>() {
        _ if user.is_empty() => Err(format!(
            "container has runAsNonRoot and image will run as root {who}"
        )),
        Ok(0) => Err(format!(
            "container has runAsNonRoot and image will run as root {who}"
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root {who}"
        )),
    }
}

/// The pod's sysctls, name and value, names in dotted form (Kubernetes
/// accepts `net/ipv4/ip_local_port_range`, `/` then separating and `.`
/// belonging to a name such as an interface's, and the kubelet swaps
/// the two before handing them to the runtime).
pub fn sysctls(spec: &PodSpec) -> Vec<(String, String)> {
    spec.security_context
        .as_ref()
        .map(|sc| {
            sc.sysctls
                .iter()
                .map(|s| (dotted(&s.name), s.value.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// A sysctl name with `/` separators in the dotted form.
fn dotted(name: &str) -> String {
    if !name.contains('/') {
        return name.to_string();
    }
    name.chars()
        .map(|c| match c {
            '/' => '.',
            '.' => '/',
            c => c,
        })
        .collect()
}

/// The deepest directory [`set_group_ownership`] descends into; a
/// volume nested deeper is an error (its pod waits, nothing is left half
/// owned and taken for done).
const MAX_DEPTH: usize = 128;

/// Kubernetes' `fsGroup` ownership of a volume: every file gets group
/// `gid` and group read and write (read only, for a read-only volume),
/// every directory also group search and the setgid bit, so that files
/// made later inherit the group. What a pod may have planted is never
/// followed or opened: symbolic links, devices, FIFOs and sockets only
/// get their own group changed, and a file swapped for something else
/// between its look-up and its opening is left alone.
///
/// It walks the whole volume: call it off the async runtime.
///
/// # Errors
/// The volume cannot be opened or changed, or is nested deeper than 128
/// directories.
pub fn set_group_ownership(root: &Path, gid: u32, read_only: bool) -> std::io::Result<()> {
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    own(&fd, gid, read_only, 0)
}

/// The mode bits `fsGroup` gives: group read and write (read only for a
/// read-only volume), and for directories group search and setgid.
fn group_bits(read_only: bool, dir: bool) -> u32 {
    let mut mask = if read_only { 0o440 } else { 0o660 };
    if dir {
        mask |= 0o110 | Mode::SGID.bits();
    }
    mask
}

/// Whether the volume's directory already has group `gid` and the bits
/// [`set_group_ownership`] gives (`fsGroupChangePolicy: OnRootMismatch`
/// then skips the volume, as the kubelet does).
pub fn group_ownership_matches(root: &Path, gid: u32, read_only: bool) -> bool {
    rustix::fs::lstat(root).is_ok_and(|st| {
        let wanted = group_bits(read_only, true);
        st.st_gid == gid && st.st_mode & wanted == wanted
    })
}

/// Changes one opened file or directory, then (for a directory) what is
/// in it.
fn own(fd: &OwnedFd, gid: u32, read_only: bool, depth: usize) -> std::io::Result<()> {
    let stat = rustix::fs::fstat(fd)?;
    let dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
    rustix::fs::fchown(fd, None, Some(rustix::fs::Gid::from_raw(gid)))?;
    // Chown clears setgid on executables: set the mode after it.
    let mode = stat.st_mode & 0o7777 | group_bits(read_only, dir);
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?;
    if !dir {
        return Ok(());
    }
    if depth >= MAX_DEPTH {
        return Err(std::io::Error::other(format!(
            "fsGroup: the volume nests directories deeper than {MAX_DEPTH}"
        )));
    }
    let entries = rustix::fs::Dir::read_from(fd)?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let found = rustix::fs::statat(fd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW)?;
        let kind = FileType::from_raw_mode(found.st_mode);
        if !matches!(kind, FileType::RegularFile | FileType::Directory) {
            // Never opened: its own group only, not what it points at.
            rustix::fs::chownat(
                fd.as_fd(),
                name,
                None,
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
            continue;
        }
        let flags = if kind == FileType::Directory {
            OFlags::DIRECTORY
        } else {
            OFlags::NONBLOCK | OFlags::NOCTTY
        };
        let child = match rustix::fs::openat(
            fd.as_fd(),
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | flags,
            Mode::empty(),
        ) {
            Ok(child) => child,
            // Swapped for a link or something else since the look-up, or
            // gone: not the file that was looked at, left alone.
            Err(
                rustix::io::Errno::LOOP
                | rustix::io::Errno::NOTDIR
                | rustix::io::Errno::NOENT
                | rustix::io::Errno::NXIO,
            ) => continue,
            Err(e) => return Err(e.into()),
        };
        let opened = rustix::fs::fstat(&child)?;
        if (opened.st_dev, opened.st_ino) != (found.st_dev, found.st_ino) {
            continue;
        }
        own(&child, gid, read_only, depth + 1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::{Capabilities, PodSecurityContext, SecurityContext};
    use skiff::pb::meta::v1::ObjectMeta;

    fn make_pod(pod_sc: PodSecurityContext, own: SecurityContext) -> (Pod, Container) {
        let container = Container {
            name: "app".into(),
            security_context: Some(Box::new(own)),
            ..Default::default()
        };
        let pod = Pod {
            metadata: Some(ObjectMeta {
                name: "web".into(),
                namespace: "shop".into(),
                uid: "u1".into(),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                security_context: Some(Box::new(pod_sc)),
                containers: vec![container.clone()],
                ..Default::default()
            }),
            ..Default::default()
        };
        (pod, container)
    }

    #[test]
    fn the_containers_fields_win_over_the_pods_and_groups_gather() {
        let (pod, c) = make_pod(
            PodSecurityContext {
                run_as_user: Some(1000),
                run_as_group: Some(3000),
                fs_group: Some(2000),
                supplemental_groups: vec![4000, 2000],
                ..Default::default()
            },
            SecurityContext {
                run_as_user: Some(1001),
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                capabilities: Some(Capabilities {
                    add: vec!["NET_ADMIN".into()],
                    drop: vec!["ALL".into()],
                }),
                ..Default::default()
            },
        );
        let s =
            container_security(pod.spec.as_ref().unwrap(), &c, Path::new("/nonexistent")).unwrap();
        assert_eq!(s.user, Some(1001));
        assert_eq!(s.group, Some(3000));
        assert_eq!(s.supplemental_groups, vec![2000, 4000]);
        assert!(s.no_new_privileges && s.read_only_root_filesystem && !s.privileged);
        assert_eq!(s.cap_drop, vec!["ALL"]);
        assert_eq!(s.seccomp, Profile::RuntimeDefault);
        // Nothing asked: the runtime's defaults.
        let (pod, c) = make_pod(Default::default(), Default::default());
        assert!(
            container_security(pod.spec.as_ref().unwrap(), &c, Path::new("/x"))
                .unwrap()
                .is_default()
        );
    }

    #[test]
    fn app_armor_profiles_come_from_the_container_else_its_pod() {
        let profile = |kind: &str, name: Option<&str>| {
            Some(skiff::pb::core::v1::AppArmorProfile {
                r#type: kind.into(),
                localhost_profile: name.map(Into::into),
            })
        };
        let apparmor = |pod_sc: PodSecurityContext, own: SecurityContext| {
            let (pod, c) = make_pod(pod_sc, own);
            container_security(pod.spec.as_ref().unwrap(), &c, Path::new("/x"))
                .unwrap()
                .apparmor
        };
        let pods = PodSecurityContext {
            app_armor_profile: profile("Localhost", Some("k8s-nginx")),
            ..Default::default()
        };
        assert_eq!(
            apparmor(pods.clone(), Default::default()),
            Profile::Localhost("k8s-nginx".into()),
            "the pod's profile, by its localhostProfile name"
        );
        let own = SecurityContext {
            app_armor_profile: profile("Unconfined", None),
            ..Default::default()
        };
        assert_eq!(
            apparmor(pods, own),
            Profile::Unconfined,
            "the container's wins"
        );
        assert_eq!(
            apparmor(Default::default(), Default::default()),
            Profile::RuntimeDefault
        );
    }

    #[test]
    fn localhost_seccomp_profiles_come_from_the_agents_directory_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(SECCOMP_DIR)).unwrap();
        std::fs::write(
            dir.path().join(SECCOMP_DIR).join("audit.json"),
            r#"{"defaultAction":"SCMP_ACT_LOG"}"#,
        )
        .unwrap();
        let with = |rel: &str| {
            let (pod, c) = make_pod(
                PodSecurityContext {
                    seccomp_profile: Some(SeccompProfile {
                        r#type: "Localhost".into(),
                        localhost_profile: Some(rel.into()),
                    }),
                    ..Default::default()
                },
                Default::default(),
            );
            container_security(pod.spec.as_ref().unwrap(), &c, dir.path()).map(|s| s.seccomp)
        };
        assert_eq!(
            with("audit.json").unwrap(),
            Profile::Localhost(r#"{"defaultAction":"SCMP_ACT_LOG"}"#.into())
        );
        assert!(with("../../etc/passwd").unwrap_err().contains("'..'"));
        assert!(with("/etc/passwd").unwrap_err().contains("relative"));
        assert!(with("absent.json").unwrap_err().contains("cannot load"));
    }

    #[test]
    fn run_as_non_root_is_judged_as_the_kubelet_does() {
        let non_root = |pod_sc: PodSecurityContext, own: SecurityContext, image: &str| {
            let (pod, c) = make_pod(pod_sc, own);
            verify_run_as_non_root(&pod, &c, image)
        };
        let asked = PodSecurityContext {
            run_as_non_root: Some(true),
            ..Default::default()
        };
        assert_eq!(
            non_root(asked.clone(), Default::default(), "").unwrap_err(),
            "container has runAsNonRoot and image will run as root (pod: \"web_shop(u1)\", container: app)"
        );
        assert!(non_root(asked.clone(), Default::default(), "0:0").is_err());
        assert!(non_root(asked.clone(), Default::default(), "1000:100").is_ok());
        assert!(
            non_root(asked.clone(), Default::default(), "nobody")
                .unwrap_err()
                .contains("non-numeric user (nobody)")
        );
        let root = SecurityContext {
            run_as_user: Some(0),
            ..Default::default()
        };
        assert!(
            non_root(asked.clone(), root, "1000")
                .unwrap_err()
                .starts_with("container's runAsUser breaks non-root policy")
        );
        let uid = SecurityContext {
            run_as_user: Some(1000),
            ..Default::default()
        };
        assert!(non_root(asked, uid, "").is_ok());
        // The container may turn it off.
        let off = SecurityContext {
            run_as_non_root: Some(false),
            ..Default::default()
        };
        assert!(
            non_root(
                PodSecurityContext {
                    run_as_non_root: Some(true),
                    ..Default::default()
                },
                off,
                ""
            )
            .is_ok()
        );
    }

    #[test]
    fn slashed_sysctl_names_become_dotted() {
        assert_eq!(
            dotted("net/ipv4/ip_local_port_range"),
            "net.ipv4.ip_local_port_range"
        );
        assert_eq!(
            dotted("net/ipv4/conf/eno2.100/rp_filter"),
            "net.ipv4.conf.eno2/100.rp_filter"
        );
        assert_eq!(dotted("kernel.shm_rmid_forced"), "kernel.shm_rmid_forced");
    }

    #[test]
    fn special_files_get_the_group_through_their_own_entry() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Opening a FIFO for reading would block with nobody writing; the
        // walk changes its group without opening it.
        set_group_ownership(dir.path(), 4321, false).unwrap();
        assert_eq!(std::fs::symlink_metadata(&fifo).unwrap().gid(), 4321);
    }

    #[test]
    fn fs_group_ownership_reaches_every_file_and_follows_no_link() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(vol.join("sub")).unwrap();
        std::fs::write(vol.join("sub/data"), b"x").unwrap();
        std::fs::set_permissions(vol.join("sub/data"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        // A file outside the volume, and a link to it planted inside.
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"secret").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&outside, vol.join("sub/link")).unwrap();
        let before = std::fs::metadata(&outside).unwrap();

        assert!(!group_ownership_matches(&vol, 4321, false));
        set_group_ownership(&vol, 4321, false).unwrap();
        assert!(group_ownership_matches(&vol, 4321, false));
        let data = std::fs::metadata(vol.join("sub/data")).unwrap();
        assert_eq!(data.gid(), 4321);
        assert_eq!(data.mode() & 0o7777, 0o660);
        let sub = std::fs::metadata(vol.join("sub")).unwrap();
        assert_eq!(sub.gid(), 4321);
        assert_eq!(sub.mode() & 0o2070, 0o2070);
        let after = std::fs::metadata(&outside).unwrap();
        assert_eq!((after.gid(), after.mode()), (before.gid(), before.mode()));
        assert_eq!(
            std::fs::symlink_metadata(vol.join("sub/link"))
                .unwrap()
                .gid(),
            4321
        );
        // A read-only volume: group read, no write.
        let ro = dir.path().join("ro");
        std::fs::create_dir_all(&ro).unwrap();
        std::fs::write(ro.join("key"), b"x").unwrap();
        std::fs::set_permissions(ro.join("key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        set_group_ownership(&ro, 4321, true).unwrap();
        let key = std::fs::metadata(ro.join("key")).unwrap();
        assert_eq!(key.mode() & 0o7777, 0o640);
    }
}
