//! A small tmpfs, mounted for one test, to fill a disk for real. Needs root,
//! as CI has; a test that cannot mount fails, it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A small tmpfs mounted for one test and unmounted after it, even when
/// the test fails.
pub struct SmallDisk {
    mount_point: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(options: &str) -> SmallDisk {
        let mount_point = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(mount_point.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs (this test needs root, as CI has): {status}"
        );
        SmallDisk { mount_point }
    }

    pub fn path(&self) -> &Path {
        self.mount_point.path()
    }

    pub fn inbox(&self) -> PathBuf {
        self.mount_point.path().join("inbox")
    }

    /// Bytes an unprivileged writer may still use, and free inodes.
    pub fn free(&self) -> (u64, u64) {
        let stat = rustix::fs::statvfs(self.mount_point.path()).unwrap();
        (stat.f_bavail * stat.f_frsize, stat.f_favail)
    }

    /// Fails the test if the free space is below `reserve`.
    pub fn assert_keeps(&self, reserve: u64, step: &str) {
        let (free, _) = self.free();
        assert!(
            free >= reserve,
            "after {step}: {free} bytes free, below the reserve of {reserve}"
        );
    }

    /// Bytes of partial data in the inbox's hidden area.
    pub fn held_partial_bytes(&self) -> u64 {
        std::fs::read_dir(self.inbox().join(".haul"))
            .unwrap()
            .map(|entry| entry.unwrap().metadata().unwrap().len())
            .sum()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mount_point.path())
            .status();
    }
}
