//! What the steering program needs from the process and the kernel, checked
//! before the first `bpf` call so that a missing privilege or feature is
//! reported by name rather than as a bare `EPERM` or a verifier log.
//!
//! The program is an `sk_reuseport/migrate` program (Linux 5.14: it reads
//! `migrating_sk`, and its expected attach type selects or migrates) over a
//! `BPF_F_MMAPABLE` load array (Linux 5.5); the reuseport socket array and
//! the program type itself (Linux 4.19) come with them.

use std::io;

use balancer_common::BPF_F_MMAPABLE;

use super::SteeringError;
use crate::sys::{self, caps};

/// The features the program uses, each with the kernel that added it.
pub(crate) const MMAPABLE_ARRAYS: &str = "memory-mappable BPF arrays (BPF_F_MMAPABLE, Linux 5.5)";
pub(crate) const MIGRATE: &str = "sk_reuseport programs that migrate requests (Linux 5.14)";

/// Checks the effective capabilities: CAP_SYS_ADMIN, or CAP_BPF and
/// CAP_NET_ADMIN.
pub(crate) fn check_capabilities() -> Result<(), SteeringError> {
    let caps = sys::caps::effective().unwrap_or(0);
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(caps::CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing = match (has(caps::CAP_BPF), has(caps::CAP_NET_ADMIN)) {
        (true, true) => return Ok(()),
        (true, false) => "CAP_NET_ADMIN",
        (false, true) => "CAP_BPF",
        (false, false) => "CAP_BPF and CAP_NET_ADMIN",
    };
    Err(SteeringError::MissingCapability { missing })
}

/// Probes the kernel for every feature the program uses.
pub(crate) fn check_kernel() -> Result<(), SteeringError> {
    verdict(MMAPABLE_ARRAYS, sys::bpf::probe_array_flags(BPF_F_MMAPABLE))?;
    verdict(MIGRATE, sys::bpf::probe_sk_reuseport_migrate())
}

/// What a probe's result means: `EINVAL` (unknown flag, attach type or
/// context field), `EACCES` (the verifier refused the context access),
/// `E2BIG` (an attribute longer than the kernel knows), `ENOSYS` (no `bpf`
/// system call) mean the kernel lacks the feature; `EPERM` means the
/// process lacks privilege despite its capabilities (a seccomp filter or
/// `kernel.unprivileged_bpf_disabled` in a user namespace).
fn verdict(feature: &'static str, probe: io::Result<()>) -> Result<(), SteeringError> {
    let Err(source) = probe else {
        return Ok(());
    };
    match source.raw_os_error() {
        Some(libc::EINVAL | libc::EACCES | libc::E2BIG | libc::ENOSYS) => {
            Err(SteeringError::UnsupportedKernel { feature })
        }
        Some(libc::EPERM) => Err(SteeringError::MissingCapability {
            missing: "permission to use bpf(2)",
        }),
        _ => Err(SteeringError::Probe { feature, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(code: i32) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(code))
    }

    #[test]
    fn a_missing_feature_is_unsupported_kernel_naming_it_and_falls_back() {
        for code in [libc::EINVAL, libc::EACCES, libc::E2BIG, libc::ENOSYS] {
            let err = verdict(MIGRATE, errno(code)).unwrap_err();
            assert!(
                matches!(err, SteeringError::UnsupportedKernel { feature } if feature == MIGRATE),
                "{code}: {err:?}"
            );
            assert!(err.is_unavailable());
            assert!(err.to_string().contains("Linux 5.14"), "{err}");
        }
        let err = verdict(MMAPABLE_ARRAYS, errno(libc::EINVAL)).unwrap_err();
        assert!(
            err.to_string().contains("BPF_F_MMAPABLE, Linux 5.5"),
            "{err}"
        );
    }

    #[test]
    fn a_refused_bpf_call_is_a_missing_privilege_and_other_errors_are_reported() {
        let err = verdict(MIGRATE, errno(libc::EPERM)).unwrap_err();
        assert!(
            matches!(err, SteeringError::MissingCapability { .. }),
            "{err:?}"
        );
        assert!(err.is_unavailable());
        let err = verdict(MIGRATE, errno(libc::ENOMEM)).unwrap_err();
        assert!(matches!(err, SteeringError::Probe { .. }), "{err:?}");
        assert!(
            !err.is_unavailable(),
            "out of memory is not a missing feature"
        );
        assert!(verdict(MIGRATE, Ok(())).is_ok());
    }
}
