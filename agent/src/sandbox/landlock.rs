//! Landlock, applied by the helper to itself before it execs user code: reads
//! only beneath the view's read-only paths, writes only beneath its writable
//! ones, and (ABI 6) no signals to and no abstract unix sockets of processes
//! outside the sandbox; at the `landlock` level also (ABI 4) TCP connections
//! only to the HTTPS port. Paths that do not exist are not granted.

use std::path::PathBuf;

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetError, RulesetStatus, Scope, ABI,
};

/// The newest ABI the rules are written for.
const TARGET_ABI: ABI = ABI::V6;

/// Why Landlock was not applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LandlockError {
    #[error("Landlock refused the ruleset: {0}")]
    Ruleset(#[from] RulesetError),
    #[error("the kernel did not enforce the Landlock ruleset")]
    NotEnforced,
}

/// The kernel's Landlock ABI version; 0 without Landlock.
pub(crate) fn abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute and the version flag the call only returns
    // the ABI version (or -1).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(v).unwrap_or(0).max(0)
}

/// Restricts this process (and what it execs) to `read_only` and `writable`,
/// and scopes its signals and abstract sockets; with `tcp`, TCP connections
/// go only to those ports. Sets no_new_privs.
pub(crate) fn restrict(
    read_only: &[PathBuf],
    writable: &[PathBuf],
    tcp: Option<&[u16]>,
) -> Result<(), LandlockError> {
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TARGET_ABI))?;
    if tcp.is_some() {
        ruleset = ruleset.handle_access(AccessNet::ConnectTcp)?;
    }
    let ports = tcp.unwrap_or_default().iter();
    let status = ruleset
        .scope(Scope::Signal | Scope::AbstractUnixSocket)?
        .create()?
        .add_rules(path_beneath_rules(
            read_only,
            AccessFs::from_read(TARGET_ABI),
        ))?
        .add_rules(path_beneath_rules(writable, AccessFs::from_all(TARGET_ABI)))?
        .add_rules(ports.map(|&p| Ok::<_, RulesetError>(NetPort::new(p, AccessNet::ConnectTcp))))?
        .restrict_self()?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(LandlockError::NotEnforced);
    }
    Ok(())
}
