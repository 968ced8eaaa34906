//! Paths under a volume that a pod cannot redirect: `subPath` mounts and
//! the files the agent writes into projected volumes.
//!
//! A pod controls what is inside its writable volumes, symlinks included.
//! Joining a `subPath` onto the volume's directory and handing the string
//! to Docker lets the kernel follow a symlink the pod planted (`ln -s /
//! /v/escape`, then `subPath: escape`) to the host's `/` (Kubernetes'
//! CVE-2017-1002101). As the kubelet does since, the path is resolved here
//! by the kernel with `openat2(RESOLVE_BENEATH)` relative to the volume's
//! directory (any component, symlinks included, that would leave it fails
//! the resolution), and what was opened is pinned by a bind mount of the
//! open descriptor (`/proc/self/fd/N`) at a path the agent owns
//! (`pods/UID/volume-subpaths/VOLUME/CONTAINER/INDEX`): the container gets
//! that mount, so swapping a component for a symlink after the check
//! changes nothing. Without the privilege to mount (an agent not run as
//! root), a subPath of a volume the pod can write (emptyDir, hostPath) is
//! refused: handing on the checked path as a string would leave a window
//! for a pod racing the check. A read-only volume's (configMap, secret,
//! downwardAPI, projected: only the agent writes them) is handed on as
//! resolved.
//!
//! Kernels before 5.6 have no `openat2`: there the path is walked one
//! component at a time with `O_NOFOLLOW`, and any symlink on it is
//! refused.
//!
//! A pod's teardown unmounts the pins and removes them with `rmdir` and
//! `unlink` only, which fail on a mount point, so nothing is ever removed
//! through a mount into the volume (for a hostPath, the host's own files);
//! the rest of the pod's directory goes only once no pin is left.

use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// Why a path under a volume could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path is absolute or climbs with `..`.
    #[error("{0:?} must be a relative path without \"..\"")]
    NotRelative(String),
    /// Resolving it left the volume (through a symlink or `..`).
    #[error("{0:?} leads outside the volume (through a symbolic link or \"..\")")]
    Escapes(String),
    /// The agent may not mount, so it cannot pin a path of a volume the
    /// pod may write (see the module doc).
    #[error(
        "{0:?} of a volume the pod may write needs the agent to run as root (to pin it with a bind mount); mount the whole volume instead"
    )]
    Unpinned(String),
    /// The file system refused.
    #[error("{path:?}: {source}")]
    Io {
        /// The path, relative to the volume.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// A path under a volume, opened without leaving it.
#[derive(Debug)]
pub struct Opened {
    /// An `O_PATH` descriptor of what the path named when it was resolved.
    fd: OwnedFd,
    /// Whether that is a directory.
    is_dir: bool,
}

/// Refuses absolute paths and `..` components, as Kubernetes' validation
/// of `subPath` and of volume item paths does.
///
/// # Errors
/// [`Error::NotRelative`].
pub fn check_relative(rel: &str) -> Result<&Path, Error> {
    let path = Path::new(rel);
    let climbs = path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if rel.is_empty() || climbs {
        return Err(Error::NotRelative(rel.to_string()));
    }
    Ok(path)
}

fn io(path: &Path) -> impl Fn(rustix::io::Errno) -> Error + '_ {
    move |errno| {
        if errno == rustix::io::Errno::XDEV {
            // RESOLVE_BENEATH's word for a resolution that leaves the
            // directory (an absolute symlink, a `..` too many).
            Error::Escapes(path.display().to_string())
        } else {
            Error::Io {
                path: path.display().to_string(),
                source: errno.into(),
            }
        }
    }
}

/// Opens `base` (the volume's directory, whose own path is trusted).
fn open_base(base: &Path) -> Result<OwnedFd, Error> {
    rustix::fs::open(
        base,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| Error::Io {
        path: base.display().to_string(),
        source: errno.into(),
    })
}

/// Resolves `rel` beneath the directory `dir`: symlinks are followed only
/// while they stay beneath it. Without `openat2` (kernels before 5.6, or
/// a seccomp filter that refuses it), one component at a time with no
/// symlink followed at all.
fn beneath(dir: impl AsFd, rel: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    match rustix::fs::openat2(
        dir.as_fd(),
        rel,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    ) {
        Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => walk(dir.as_fd(), rel, flags),
        other => other,
    }
}

/// [`beneath`] without `openat2`: each component opened with
/// `O_NOFOLLOW` relative to the one before, a symlink anywhere refused.
fn walk(
    dir: std::os::fd::BorrowedFd<'_>,
    rel: &Path,
    flags: OFlags,
) -> rustix::io::Result<OwnedFd> {
    let names: Vec<_> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    let mut current: Option<OwnedFd> = None;
    for (i, name) in names.iter().enumerate() {
        let at = current.as_ref().map_or(dir, |fd| fd.as_fd());
        let last = i + 1 == names.len();
        // Not O_DIRECTORY: with O_NOFOLLOW it would say ENOTDIR for a
        // symlink, which must read as an escape.
        let open_flags = if last { flags } else { OFlags::PATH };
        let fd = rustix::fs::openat(
            at,
            *name,
            open_flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // O_PATH | O_NOFOLLOW opens a symlink itself rather than failing.
        let stat = rustix::fs::fstat(&fd)?;
        match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
            rustix::fs::FileType::Symlink => return Err(rustix::io::Errno::XDEV),
            rustix::fs::FileType::Directory => {}
            _ if !last => return Err(rustix::io::Errno::NOTDIR),
            _ => {}
        }
        current = Some(fd);
    }
    match current {
        Some(fd) => Ok(fd),
        None => rustix::fs::openat(dir, ".", flags | OFlags::CLOEXEC, Mode::empty()),
    }
}

/// Opens `rel` beneath `base`, creating the missing directories on the way
/// (and the last component as a directory) when `create` is set, as the
/// kubelet does for a `subPath` that does not exist yet.
///
/// # Errors
/// `rel` is not relative, leaves the volume, or the file system refused.
pub fn open(base: &Path, rel: &str, create: bool) -> Result<Opened, Error> {
    let rel = check_relative(rel)?;
    let root = open_base(base)?;
    let mut prefix = PathBuf::new();
    let mut parent: Option<OwnedFd> = None;
    for component in rel.components() {
        let Component::Normal(name) = component else {
            continue;
        };
        prefix.push(name);
        let fd = match beneath(&root, &prefix, OFlags::PATH) {
            Err(rustix::io::Errno::NOENT) if create => {
                let dir = parent.as_ref().map_or(root.as_fd(), |p| p.as_fd());
                match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(errno) => return Err(io(&prefix)(errno)),
                }
                beneath(&root, &prefix, OFlags::PATH).map_err(io(&prefix))?
            }
            other => other.map_err(io(&prefix))?,
        };
        parent = Some(fd);
    }
    let fd = parent.unwrap_or(root);
    let stat = rustix::fs::fstat(&fd).map_err(io(rel))?;
    let is_dir =
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory;
    Ok(Opened { fd, is_dir })
}

/// Where a container's `subPath` mount is pinned on the node.
pub fn pin_path(pod_dir: &Path, volume: &str, container: &str, index: usize) -> PathBuf {
    pod_dir
        .join("volume-subpaths")
        .join(volume)
        .join(container)
        .join(index.to_string())
}

/// The host path a container should mount for `rel` under `base`: the
/// opened path pinned by a bind mount at `pin` (see the module doc), or,
/// where the agent may not mount and the volume is `read_only` to pods,
/// the path as the kernel resolved it.
///
/// # Errors
/// As [`open`]; the pin could not be made; or it could not and the pod
/// may write the volume ([`Error::Unpinned`]).
pub fn mount_source(base: &Path, rel: &str, pin: &Path, read_only: bool) -> Result<PathBuf, Error> {
    let opened = open(base, rel, true)?;
    let pin_err = |source: std::io::Error| Error::Io {
        path: pin.display().to_string(),
        source,
    };
    // A container restarted gets a fresh resolution: what the volume holds
    // now is checked again.
    unmount_if_mounted(pin);
    if let Some(parent) = pin.parent() {
        std::fs::create_dir_all(parent).map_err(pin_err)?;
    }
    // A pin of the other type (the subPath was a file and is now a
    // directory, or the reverse) is made anew.
    if let Ok(meta) = std::fs::symlink_metadata(pin)
        && meta.is_dir() != opened.is_dir
    {
        let _ = std::fs::remove_dir(pin).or_else(|_| std::fs::remove_file(pin));
    }
    if opened.is_dir {
        match std::fs::create_dir(pin) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(pin_err(e)),
            _ => {}
        }
    } else if !pin.exists() {
        std::fs::File::create(pin).map_err(pin_err)?;
    }
    let source = PathBuf::from(format!("/proc/self/fd/{}", fd_number(&opened.fd)));
    match rustix::mount::mount_bind(&source, pin) {
        Ok(()) => Ok(pin.to_path_buf()),
        Err(rustix::io::Errno::PERM | rustix::io::Errno::ACCESS) if read_only => {
            std::fs::read_link(&source).map_err(pin_err)
        }
        Err(rustix::io::Errno::PERM | rustix::io::Errno::ACCESS) => {
            Err(Error::Unpinned(rel.to_string()))
        }
        Err(errno) => Err(pin_err(errno.into())),
    }
}

fn fd_number(fd: &OwnedFd) -> i32 {
    use std::os::fd::AsRawFd as _;
    fd.as_raw_fd()
}

fn unmount_if_mounted(path: &Path) {
    // Detached: a mount still in use by a container that is going away
    // does not block a new one.
    while rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH).is_ok() {}
}

/// The mount points at or below `dir` (deepest first), from
/// `/proc/self/mountinfo`, or None when it cannot be read.
fn mounts_under(dir: &Path) -> Option<Vec<PathBuf>> {
    // mountinfo holds canonical paths.
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    let mut found: Vec<PathBuf> = String::from_utf8_lossy(&info)
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape_mountinfo(point)))
        .filter(|point| point.starts_with(&dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Some(found)
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let digits: String = chars.by_ref().take(3).collect();
        match u8::from_str_radix(&digits, 8) {
            Ok(byte) => out.push(byte as char),
            Err(_) => {
                out.push('\\');
                out.push_str(&digits);
            }
        }
    }
    out
}

/// The pins under a pod's directory (`volume-subpaths/VOL/CONTAINER/N`).
fn pins(pod_dir: &Path) -> Vec<PathBuf> {
    let children = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let mut found = Vec::new();
    for volume in children(&pod_dir.join("volume-subpaths")) {
        for container in children(&volume) {
            found.extend(children(&container));
        }
    }
    found
}

/// Unmounts and removes every pin under a pod's directory, never removing
/// anything through a mount (see the module doc).
///
/// # Errors
/// A pin or mount under `pod_dir` that is still there: nothing more
/// under it may be removed then.
pub fn unmount_all(pod_dir: &Path) -> Result<(), PathBuf> {
    for pin in pins(pod_dir) {
        unmount_if_mounted(&pin);
        // rmdir and unlink refuse a mount point (EBUSY) and a directory
        // that is not empty: a pin still mounted stays, and so does
        // everything it shows.
        if std::fs::remove_dir(&pin).is_err() && std::fs::remove_file(&pin).is_err() {
            return Err(pin);
        }
    }
    let subpaths = pod_dir.join("volume-subpaths");
    for volume in std::fs::read_dir(&subpaths).into_iter().flatten().flatten() {
        for container in std::fs::read_dir(volume.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(container.path());
        }
        let _ = std::fs::remove_dir(volume.path());
    }
    match std::fs::remove_dir(&subpaths) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(subpaths),
        _ => {}
    }
    // Any other mount under the pod's directory (none is made there) also
    // keeps it; so does a mount table that cannot be read.
    for point in mounts_under(pod_dir).ok_or_else(|| pod_dir.to_path_buf())? {
        unmount_if_mounted(&point);
    }
    match mounts_under(pod_dir)
        .ok_or_else(|| pod_dir.to_path_buf())?
        .into_iter()
        .next()
    {
        Some(left) => Err(left),
        None => Ok(()),
    }
}

/// Writes `content` to `rel` beneath `dir` atomically (a temporary file
/// renamed over it) with `mode`, never following a symlink out of `dir`.
///
/// # Errors
/// `rel` is not relative, leaves `dir`, or the file system refused.
pub fn write(dir: &Path, rel: &str, content: &[u8], mode: u32) -> Result<(), Error> {
    let path = check_relative(rel)?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::NotRelative(rel.to_string()))?;
    let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => open(dir, &p.to_string_lossy(), true)?,
        None => Opened {
            fd: open_base(dir)?,
            is_dir: true,
        },
    };
    if !parent.is_dir {
        return Err(Error::Io {
            path: rel.to_string(),
            source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
        });
    }
    // An O_PATH descriptor serves as the directory of the *at calls.
    let dirfd = &parent.fd;
    let tmp = format!(".{}.skiff-tmp", name.to_string_lossy());
    let file = rustix::fs::openat(
        dirfd,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(io(path))?;
    let mut file = std::fs::File::from(file);
    file.write_all(content).map_err(|source| Error::Io {
        path: rel.to_string(),
        source,
    })?;
    rustix::fs::fchmod(&file, Mode::from_raw_mode(mode & 0o777)).map_err(io(path))?;
    drop(file);
    rustix::fs::renameat(dirfd, tmp.as_str(), dirfd, name).map_err(io(path))
}

/// `rel`'s content beneath `dir`, if it is a regular file reached without
/// leaving `dir`.
pub fn read(dir: &Path, rel: &str) -> Option<Vec<u8>> {
    let path = check_relative(rel).ok()?;
    let root = open_base(dir).ok()?;
    let fd = beneath(&root, path, OFlags::RDONLY).ok()?;
    let mut content = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut content).ok()?;
    Some(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_to_the_host_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("escape")).unwrap();
        let err = open(dir.path(), "escape", true).unwrap_err();
        assert!(matches!(err, Error::Escapes(_)), "{err}");
        let err = open(dir.path(), "escape/etc", true).unwrap_err();
        assert!(matches!(err, Error::Escapes(_)), "{err}");
    }

    #[test]
    fn a_relative_symlink_climbing_out_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("volume");
        std::fs::create_dir(&volume).unwrap();
        std::fs::create_dir(dir.path().join("secret")).unwrap();
        std::os::unix::fs::symlink("../secret", volume.join("up")).unwrap();
        let err = open(&volume, "up", false).unwrap_err();
        assert!(matches!(err, Error::Escapes(_)), "{err}");
    }

    #[test]
    fn a_symlink_staying_inside_the_volume_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rev-1/data")).unwrap();
        std::os::unix::fs::symlink("rev-1", dir.path().join("current")).unwrap();
        let opened = open(dir.path(), "current/data", false).unwrap();
        assert!(opened.is_dir);
    }

    #[test]
    fn climbing_and_absolute_paths_are_refused_before_any_lookup() {
        for bad in ["../x", "/etc", "a/../../b", ""] {
            assert!(
                matches!(check_relative(bad), Err(Error::NotRelative(_))),
                "{bad:?} passed"
            );
        }
        assert!(check_relative("a/./b").is_ok());
    }

    #[test]
    fn missing_directories_are_created_inside_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let opened = open(dir.path(), "a/b/c", true).unwrap();
        assert!(opened.is_dir);
        assert!(dir.path().join("a/b/c").is_dir());
    }

    #[test]
    fn writes_do_not_follow_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("volume");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, volume.join("sub")).unwrap();
        assert!(write(&volume, "sub/key", b"x", 0o644).is_err());
        assert!(!outside.join("key").exists());
        // A symlink as the file itself is replaced, not written through.
        std::os::unix::fs::symlink(outside.join("target"), volume.join("key")).unwrap();
        write(&volume, "key", b"y", 0o640).unwrap();
        assert!(!outside.join("target").exists());
        assert_eq!(read(&volume, "key").unwrap(), b"y");
    }

    #[test]
    fn mountinfo_escapes_are_read_back() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
    }

    #[test]
    fn without_openat2_the_walk_refuses_every_symlink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("link")).unwrap();
        let root = open_base(dir.path()).unwrap();
        assert!(walk(root.as_fd(), Path::new("a/b"), OFlags::PATH).is_ok());
        assert_eq!(
            walk(root.as_fd(), Path::new("link/b"), OFlags::PATH).unwrap_err(),
            rustix::io::Errno::XDEV
        );
        assert_eq!(
            walk(root.as_fd(), Path::new("link"), OFlags::PATH).unwrap_err(),
            rustix::io::Errno::XDEV
        );
    }

    /// Needs the privilege to mount (CI runs as root).
    #[test]
    fn a_pin_shows_the_resolved_directory_and_teardown_leaves_the_volume_alone() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("volume");
        std::fs::create_dir_all(volume.join("data")).unwrap();
        std::fs::write(volume.join("data/kept"), b"k").unwrap();
        let pod = dir.path().join("pod");
        let pin = pin_path(&pod, "v", "c", 0);
        let source = match mount_source(&volume, "data", &pin, false) {
            Err(Error::Unpinned(_)) => {
                eprintln!("skipped: no privilege to mount");
                return;
            }
            other => other.unwrap(),
        };
        assert_eq!(source, pin);
        assert_eq!(std::fs::read(pin.join("kept")).unwrap(), b"k");
        // Swapping the directory for a symlink changes nothing pinned.
        std::fs::rename(volume.join("data"), volume.join("moved")).unwrap();
        std::os::unix::fs::symlink("/", volume.join("data")).unwrap();
        assert_eq!(std::fs::read(pin.join("kept")).unwrap(), b"k");
        // A file pin where a directory one was is made anew.
        std::fs::remove_file(volume.join("data")).unwrap();
        std::fs::write(volume.join("data"), b"now a file").unwrap();
        assert_eq!(mount_source(&volume, "data", &pin, false).unwrap(), pin);
        assert_eq!(std::fs::read(&pin).unwrap(), b"now a file");
        unmount_all(&pod).unwrap();
        assert!(!pod.join("volume-subpaths").exists());
        assert_eq!(std::fs::read(volume.join("moved/kept")).unwrap(), b"k");
        assert_eq!(mounts_under(dir.path()).unwrap(), Vec::<PathBuf>::new());
    }
}
