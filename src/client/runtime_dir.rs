//! The per-user directory of spawned brokers' sockets and lock files, chosen per OS.
//!
//! Why its own place: it is the one security boundary of spawning. Two users of one host must
//! neither share a broker nor be able to plant a socket for each other, so whatever base an OS
//! offers, the directory is used only if it is a real directory owned by this user that nobody
//! else may enter (mode 0700); anything else is refused, on every OS.
//!
//! - `$XDG_RUNTIME_DIR/live-mutex` wherever that variable is set (Linux sessions set it; on
//!   other systems a user who sets it chooses it);
//! - macOS has no `XDG_RUNTIME_DIR`, but its `$TMPDIR` is per user (`/var/folders/…/T/`, mode
//!   0700): `$TMPDIR/live-mutex-$UID` (the uid too, in case `TMPDIR` was pointed at a shared
//!   directory);
//! - else `/tmp/live-mutex-$UID`.

use super::{Error, Result};
use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The per-user directory of spawned brokers' sockets and lock files, created if missing:
/// `$XDG_RUNTIME_DIR/live-mutex/`; else on macOS `$TMPDIR/live-mutex-$UID/`; else
/// `/tmp/live-mutex-$UID/`. It must be a directory owned by this user that nobody else may
/// enter (mode 0700), so that two users of one host neither share a broker nor can plant a
/// socket for each other; anything else is an error.
///
/// ```no_run
/// let dir = live_mutex::client::runtime_dir()?;
/// println!("spawned brokers live in {}", dir.display());
/// # Ok::<(), live_mutex::Error>(())
/// ```
pub fn runtime_dir() -> Result<PathBuf> {
    let dir = runtime_dir_path();
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::Spawn(format!(
                "cannot create the runtime directory {}: {e} (set XDG_RUNTIME_DIR to a \
                 writable directory, or LMX_URL)",
                dir.display()
            )));
        }
    }
    check_private(&dir, euid())?;
    Ok(dir)
}

/// Where [`runtime_dir`] is, without creating or checking it.
pub(crate) fn runtime_dir_path() -> PathBuf {
    choose(
        cfg!(target_os = "macos"),
        std::env::var_os("XDG_RUNTIME_DIR"),
        std::env::var_os("TMPDIR"),
        euid(),
    )
}

/// The choice itself, for any OS: `macos` says whether `$TMPDIR` is the per-user base.
fn choose(macos: bool, xdg: Option<OsString>, tmpdir: Option<OsString>, uid: u32) -> PathBuf {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(base) = set(xdg) {
        return base.join("live-mutex");
    }
    match set(tmpdir).filter(|_| macos) {
        Some(base) => base.join(format!("live-mutex-{uid}")),
        None => PathBuf::from(format!("/tmp/live-mutex-{uid}")),
    }
}

/// `dir` (not following a symlink) must be a directory owned by `uid` with no access for
/// group or others.
fn check_private(dir: &Path, uid: u32) -> Result<()> {
    let md = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::Spawn(format!("runtime directory {}: {e}", dir.display())))?;
    if md.is_dir() && md.uid() == uid && md.permissions().mode() & 0o077 == 0 {
        return Ok(());
    }
    Err(Error::Spawn(format!(
        "runtime directory {} is not a private directory of this user (want a directory \
         owned by uid {uid} with mode 0700; found uid {}, mode {:o}{}): remove it or set \
         XDG_RUNTIME_DIR",
        dir.display(),
        md.uid(),
        md.permissions().mode() & 0o7777,
        if md.is_dir() { "" } else { ", not a directory" }
    )))
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_os_gets_its_per_user_base() {
        let s = |v: &str| Some(OsString::from(v));
        let mac_tmp = "/var/folders/xy/abc/T/";
        // XDG_RUNTIME_DIR wins everywhere it is set.
        for macos in [false, true] {
            assert_eq!(
                choose(macos, s("/run/user/501"), s(mac_tmp), 501),
                Path::new("/run/user/501/live-mutex")
            );
        }
        // macOS: the per-user $TMPDIR, with the uid in case TMPDIR is shared.
        assert_eq!(
            choose(true, None, s(mac_tmp), 501),
            Path::new("/var/folders/xy/abc/T/live-mutex-501")
        );
        assert_eq!(
            choose(true, s(""), None, 501),
            Path::new("/tmp/live-mutex-501")
        );
        // Linux and FreeBSD: $TMPDIR is not per user there, so /tmp with the uid.
        assert_eq!(
            choose(false, None, s("/var/tmp"), 1000),
            Path::new("/tmp/live-mutex-1000")
        );
    }

    /// What the macOS branch picks is held to the same rule as everywhere: a directory that
    /// others may enter, one owned by someone else, a symlink or a file is refused.
    #[test]
    fn a_runtime_dir_that_is_not_private_is_refused_on_every_os() {
        let base = std::env::temp_dir().join(format!("lmx-rtdir-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let uid = euid();
        let dir = choose(true, None, Some(base.clone().into()), uid);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        check_private(&dir, uid).unwrap();
        let refused = |p: &Path, uid: u32| check_private(p, uid).unwrap_err().to_string();

        let other = refused(&dir, uid + 1);
        assert!(
            other.contains("is not a private directory of this user"),
            "{other}"
        );
        for mode in [0o750, 0o705, 0o777] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = refused(&dir, uid);
            assert!(
                e.contains(&format!("found uid {uid}, mode {mode:o})")),
                "{e}"
            );
        }
        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(refused(&link, uid).contains(", not a directory"));
        let file = base.join("file");
        std::fs::write(&file, "").unwrap();
        assert!(refused(&file, uid).contains(", not a directory"));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
