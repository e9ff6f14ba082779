//! Files and directories only PicoFlow's own user may read.
//!
//! What PicoFlow writes carries secrets (task output in logs, records and exports; values
//! tasks publish), so every file it creates is `0600` and every directory `0700`, whatever
//! the umask. The process umask itself is never changed: tasks inherit it. Modes are set on
//! the open descriptor (`fchmod`), never by path, and files are opened with `O_NOFOLLOW`, so
//! a symbolic link planted where PicoFlow writes is refused, not followed.
//!
//! A directory that must be private (the one holding task outputs) is checked with `lstat`
//! when it already exists: a directory, not a symbolic link, owned by the effective user,
//! mode `0700`. Anything else is refused with an error naming the path and what is wrong.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;

/// Mode of every file PicoFlow creates.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Mode of every directory PicoFlow creates.
pub(crate) const DIR_MODE: u32 = 0o700;

fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    // O_NONBLOCK: opening a FIFO planted (or named by mistake) where a file is expected must
    // not wait for a writer; on a regular file it changes nothing.
    o.mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK);
    o
}

/// The error of an open that met a symbolic link (`O_NOFOLLOW`: `ELOOP`; or `EACCES` where the
/// kernel protects links in sticky directories) says so.
fn said(path: &Path, e: io::Error) -> io::Error {
    let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match link && matches!(e.raw_os_error(), Some(libc::ELOOP | libc::EACCES)) {
        true => io::Error::new(
            io::ErrorKind::PermissionDenied,
            "is a symbolic link: PicoFlow does not follow links where it keeps files",
        ),
        false => e,
    }
}

/// Anything but a regular file — a device such as `/dev/null`, a FIFO, a socket — is refused
/// where PicoFlow keeps a file: it would be taken for an empty file, made `0600`, or block.
fn regular(f: File) -> io::Result<File> {
    match f.metadata()?.is_file() {
        true => Ok(f),
        false => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file: PicoFlow keeps its files only in regular files",
        )),
    }
}

/// Creates `path`, which must not exist (`O_EXCL`, so no link is followed either), for
/// writing, and sets its mode to `mode` on the descriptor.
pub(crate) fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    let f = options().write(true).create_new(true).open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(f)
}

/// Opens `path` for appending, creating it `0600` if needed; see [`ours`] for an existing
/// file.
pub(crate) fn open_append(path: &Path) -> io::Result<File> {
    ours(
        options()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| said(path, e))?,
    )
}

/// Opens `path` for reading and writing, creating it `0600` if needed (never truncating);
/// see [`ours`] for an existing file.
pub(crate) fn open_rw(path: &Path) -> io::Result<File> {
    ours(
        options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| said(path, e))?,
    )
}

/// A file PicoFlow writes must be its user's: another user's file planted where PicoFlow
/// writes (a journal or log name in a shared directory) would receive its secrets. One of
/// ours that others could read is made `0600`.
fn ours(f: File) -> io::Result<File> {
    let f = regular(f)?;
    let uid = f.metadata()?.uid();
    if uid != euid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "is owned by uid {uid}, not by uid {}: PicoFlow writes only its own files",
                euid()
            ),
        ));
    }
    tighten(&f)?;
    Ok(f)
}

/// Opens an existing `path` for writing (never creating it) without following a symbolic
/// link; see [`ours`]. The error for a link says so, and so does the one for anything but a
/// regular file: a device or a FIFO (`/dev/null`) would otherwise be taken for an empty
/// file, made 0600 and replaced by a new one.
#[cfg(feature = "sqlite")]
pub(crate) fn open_existing(path: &Path) -> io::Result<File> {
    match options().read(true).write(true).open(path) {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "is a symbolic link: PicoFlow does not write through links",
        )),
        other => ours(other?),
    }
}

/// Checks that `path` (not following a link) is still the file open as `f`.
#[cfg(feature = "sqlite")]
pub(crate) fn same_file(f: &File, path: &Path) -> io::Result<()> {
    let (a, b) = (f.metadata()?, std::fs::symlink_metadata(path)?);
    if (a.dev(), a.ino()) == (b.dev(), b.ino()) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "was replaced while PicoFlow opened it: not written",
        ))
    }
}

/// Opens `path`, a regular file, for reading without following a symbolic link.
pub(crate) fn open_read(path: &Path) -> io::Result<File> {
    regular(options().read(true).open(path).map_err(|e| said(path, e))?)
}

/// Writes `bytes` to `path` through a new `0600` file beside it renamed over it, so a
/// reader never sees half of it.
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    create_new(&tmp, FILE_MODE)?.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

/// Takes group and other permissions away from a file we own (files of earlier versions,
/// created under a umask such as 022). Another user's file is left as it is.
pub(crate) fn tighten(f: &File) -> io::Result<()> {
    let m = f.metadata()?;
    if m.mode() & 0o077 != 0 && m.uid() == euid() {
        f.set_permissions(std::fs::Permissions::from_mode(m.mode() & 0o700))?;
    }
    Ok(())
}

/// Like `create_dir_all`, but each directory it creates is `0700` whatever the umask.
/// Directories that exist are left as they are.
pub(crate) fn create_dirs(path: &Path) -> io::Result<()> {
    if path.as_os_str().is_empty() || path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        create_dirs(parent)?;
    }
    match make_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other,
    }
}

/// [`create_dirs`] for the directory `dir` that will hold `what` (the state file, the PID
/// file), saying so in the log when it did not exist: a mistyped `--db-path` or an unmounted
/// disk then shows as a new directory rather than passing unnoticed.
pub(crate) fn create_dirs_for(dir: &Path, what: &str) -> io::Result<()> {
    if dir.as_os_str().is_empty() || std::fs::symlink_metadata(dir).is_ok() {
        return create_dirs(dir);
    }
    create_dirs(dir)?;
    tracing::warn!(
        directory = %dir.display(),
        "created the directory {} for {what}: it did not exist",
        dir.display()
    );
    Ok(())
}

/// Creates one directory `0700`: `mkdir` never follows a link and fails on any existing
/// name; the mode is then set on the directory's own descriptor (the umask may have taken
/// owner bits away).
fn make_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(DIR_MODE).create(path)?;
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    d.set_permissions(std::fs::Permissions::from_mode(DIR_MODE))
}

/// Makes `path` a private directory: creates it `0700` (and its missing parents), or checks
/// the one there (see [`check_dir`]).
pub(crate) fn private_dir(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        create_dirs(parent)?;
    }
    match make_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => check_dir(path),
        other => other,
    }
}

/// Checks with `lstat` that `path` is a directory (not a symbolic link), owned by the
/// effective user, with mode `0700`; the error says what is wrong (the caller names the
/// path).
pub(crate) fn check_dir(path: &Path) -> io::Result<()> {
    let m = std::fs::symlink_metadata(path)?;
    problem(&m, euid(), true).map_or(Ok(()), |why| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{why}; PicoFlow needs a directory of its own user with mode 0700 here (remove it and PicoFlow creates one)"),
        ))
    })
}

/// What makes `m` unfit for a directory of user `uid`, if anything: not a directory (a link
/// included), another owner, and with `private` a mode other than `0700`.
fn problem(m: &std::fs::Metadata, uid: u32, private: bool) -> Option<String> {
    let t = m.file_type();
    let kind = if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        ""
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() || t.is_socket() || t.is_char_device() || t.is_block_device() {
        "a special file"
    } else {
        "not a directory"
    };
    if !kind.is_empty() {
        return Some(format!("is {kind}, not a directory"));
    }
    if m.uid() != uid {
        return Some(format!("is owned by uid {}, not by uid {uid}", m.uid()));
    }
    let mode = m.mode() & 0o7777;
    (private && mode != DIR_MODE).then(|| format!("has mode {mode:04o}, not 0700"))
}

/// Checks that `dir`, where PicoFlow keeps its files (the state file's directory, the logs
/// directory), cannot be changed under it by another user: owned by the effective user or
/// root, and not writable by group or others unless the sticky bit is set (as on `/tmp`).
/// Otherwise that user could swap names in it between PicoFlow's checks and its writes.
pub(crate) fn trusted_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let m = std::fs::metadata(dir)?;
    untrusted(&m, euid()).map_or(Ok(()), |why| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{why}: another user could replace what PicoFlow keeps there; use a directory \
                 of PicoFlow's user (or root) that others cannot write to"
            ),
        ))
    })
}

/// The write bits of a file or directory with metadata `m` that let other users change it:
/// others', and the group's unless the group is the effective user's own primary group and
/// the user owns it (the user private group of Debian's `adduser`, where a umask of 002 makes
/// a user's directories `0775`).
pub(crate) fn writable_by_others(m: &std::fs::Metadata) -> u32 {
    // SAFETY: getegid has no preconditions.
    let own_group = m.uid() == euid() && m.gid() == unsafe { libc::getegid() };
    if own_group {
        0o002
    } else {
        0o022
    }
}

/// What makes a directory with metadata `m` untrusted by user `uid`, if anything.
fn untrusted(m: &std::fs::Metadata, uid: u32) -> Option<String> {
    let mode = m.mode() & 0o7777;
    if !m.is_dir() {
        Some("is not a directory".into())
    } else if m.uid() != uid && m.uid() != 0 {
        Some(format!(
            "is owned by uid {}, not by uid {uid} or root",
            m.uid()
        ))
    } else if mode & writable_by_others(m) != 0 && mode & 0o1000 == 0 {
        Some(format!(
            "has mode {mode:04o}: writable by group or others without the sticky bit"
        ))
    } else {
        None
    }
}

/// Makes `path` a directory PicoFlow may write in: creates it `0700`, or checks with
/// `lstat` that the one there is a directory (not a symbolic link) of the effective user.
/// Its mode is left as it is (log directories of older versions may be `0755`).
pub(crate) fn own_dir(path: &Path) -> io::Result<()> {
    match make_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let m = std::fs::symlink_metadata(path)?;
            match problem(&m, euid(), false) {
                Some(why) => Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{why}; PicoFlow writes only in directories of its own user"),
                )),
                None => Ok(()),
            }
        }
        other => other,
    }
}

/// The effective user id.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Fills `buf` from the kernel's random source (`getrandom(2)`), retrying on interruption.
pub(crate) fn random_bytes(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe the writable rest of `buf`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            filled += n as usize;
        } else if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // Kernels without getrandom (before 3.17) are not supported by Rust's std either.
            panic!("getrandom failed: {}", io::Error::last_os_error());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pf-private-{name}-{}", crate::new_id()));
        create_dirs(&d).unwrap();
        d
    }

    #[test]
    fn a_new_private_dir_is_0700_and_is_accepted_again() {
        let root = scratch("new");
        let d = root.join("a/b");
        private_dir(&d).unwrap();
        for p in [&root.join("a"), &d] {
            assert_eq!(std::fs::metadata(p).unwrap().mode() & 0o7777, 0o700);
        }
        private_dir(&d).unwrap();
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_symlink_in_place_of_the_private_dir_is_refused() {
        let root = scratch("link");
        let target = root.join("target");
        make_dir(&target).unwrap();
        let link = root.join("run");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = private_dir(&link).unwrap_err().to_string();
        assert!(e.contains("is a symbolic link, not a directory"), "{e}");
        // A dangling link too: mkdir does not create its target.
        std::fs::remove_dir(&target).unwrap();
        let e = private_dir(&link).unwrap_err().to_string();
        assert!(e.contains("is a symbolic link"), "{e}");
        assert!(!target.exists());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_private_dir_with_a_wider_mode_or_a_file_is_refused() {
        let root = scratch("mode");
        let d = root.join("run");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = private_dir(&d).unwrap_err().to_string();
        assert!(e.contains("has mode 0777, not 0700"), "{e}");
        let f = root.join("file");
        std::fs::write(&f, "").unwrap();
        let e = private_dir(&f).unwrap_err().to_string();
        assert!(e.contains("is a regular file"), "{e}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_private_dir_of_another_user_is_refused() {
        let root = scratch("owner");
        let d = root.join("run");
        make_dir(&d).unwrap();
        let m = std::fs::symlink_metadata(&d).unwrap();
        // Checked as if we were another user: works without root.
        let other = m.uid().wrapping_add(1);
        let why = problem(&m, other, true).unwrap();
        assert_eq!(
            why,
            format!("is owned by uid {}, not by uid {other}", m.uid())
        );
        assert_eq!(problem(&m, m.uid(), true), None);
        // As root, a directory really owned by nobody (65534).
        if euid() == 0 {
            std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
            let e = private_dir(&d).unwrap_err().to_string();
            assert!(e.contains("is owned by uid 65534, not by uid 0"), "{e}");
            // Nor is another user's file written to, even by root.
            let f = root.join("planted.journal");
            std::fs::write(&f, "").unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
            std::os::unix::fs::chown(&f, Some(65534), Some(65534)).unwrap();
            let e = open_append(&f).unwrap_err().to_string();
            assert!(e.contains("is owned by uid 65534, not by uid 0"), "{e}");
            assert!(open_rw(&f).is_err());
            assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o666);
        } else {
            println!("not root: the chown to nobody part of this test is skipped");
        }
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn files_are_0600_whatever_the_umask_and_links_are_not_followed() {
        let root = scratch("files");
        let f = root.join("new");
        create_new(&f, FILE_MODE).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o600);
        // An older world-readable file of ours is tightened when opened.
        let old = root.join("old");
        std::fs::write(&old, "x").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        open_append(&old).unwrap();
        assert_eq!(std::fs::metadata(&old).unwrap().mode() & 0o7777, 0o600);
        // A link where a file goes is refused, and its target is untouched.
        let victim = root.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = root.join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(open_append(&link).is_err());
        assert!(open_rw(&link).is_err());
        assert!(open_read(&link).is_err());
        assert!(create_new(&link, 0o666).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::metadata(&victim).unwrap().mode() & 0o7777, 0o640);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_directory_others_can_change_is_not_trusted() {
        let root = scratch("trusted");
        let m = |mode: u32| {
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::metadata(&root).unwrap()
        };
        let me = euid();
        // The directory is ours and its group our primary group: group write is ours too.
        for ok in [0o700, 0o755, 0o1777, 0o1770, 0o770, 0o775] {
            assert_eq!(untrusted(&m(ok), me), None, "{ok:o}");
        }
        for bad in [0o777, 0o702, 0o757] {
            let why = untrusted(&m(bad), me).unwrap();
            assert!(why.contains("without the sticky bit"), "{why}");
        }
        // Another user's directory: root's is trusted by everyone, so checked as another
        // user only when ours is not root's.
        if me != 0 {
            let why = untrusted(&m(0o700), me + 1).unwrap();
            assert!(why.starts_with("is owned by uid"), "{why}");
        } else if let Ok(other) = std::fs::metadata("/proc/self/fd") {
            // (the CLI tests chown a directory to a throwaway user)
            assert_eq!(untrusted(&other, 12345), None, "root's directory");
        }
        // A level of the logs tree: a link in its place is refused, even one to ours.
        let link = root.join("link");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        let e = own_dir(&link).unwrap_err().to_string();
        assert!(e.contains("is a symbolic link"), "{e}");
        own_dir(&root.join("new")).unwrap();
        own_dir(&root.join("new")).unwrap();
        m(0o700);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn random_bytes_fill_the_buffer() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        random_bytes(&mut a);
        random_bytes(&mut b);
        assert_ne!(a, b);
    }
}
