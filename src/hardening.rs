//! Process hardening at start-up, before any key is opened: the process holds every key in
//! plaintext, so it must not write them to a core file or let another process of the same user
//! read its memory, and (optionally) must not let them reach swap.
//!
//! * Core dumps off: `RLIMIT_CORE` soft and hard limits set to 0 (the hard one so the process
//!   cannot raise it again), and the process marked not dumpable (`PR_SET_DUMPABLE` 0), which
//!   also stops `ptrace` and `/proc/<pid>/mem` for processes of the same user that lack
//!   `CAP_SYS_PTRACE`. `ALLOW_CORE_DUMPS` keeps both as they were, for debugging.
//! * `MLOCK`: `mlockall(MCL_CURRENT | MCL_FUTURE)`, so no page of the process is ever swapped
//!   out. It needs a memlock limit (`RLIMIT_MEMLOCK`) above the process's size, or
//!   `CAP_IPC_LOCK`; when it fails, start-up stops with one line naming the limit.
//! * Open files: the soft `RLIMIT_NOFILE` is raised to the hard one (as the Go runtime does), so
//!   the connection limit, not the descriptor limit, is what turns clients away.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// What to do; from the `ALLOW_CORE_DUMPS` and `MLOCK` settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub allow_core_dumps: bool,
    pub mlock: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HardeningError {
    #[error("cannot turn core dumps off: {0}")]
    CoreDumps(rustix::io::Errno),
    #[error(
        "cannot lock memory (MLOCK): {err}; the memlock limit (RLIMIT_MEMLOCK) is {limit}: raise \
         it (`ulimit -l unlimited`, systemd `LimitMEMLOCK=infinity`, or CAP_IPC_LOCK) or unset MLOCK"
    )]
    Mlock {
        err: rustix::io::Errno,
        limit: String,
    },
}

/// What [`apply`] did, for the start-up log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub core_dumps: bool,
    pub dumpable: bool,
    pub memory_locked: bool,
    /// The soft limit on open files after raising it (`None`: unlimited).
    pub open_files: Option<u64>,
}

/// Applies `options` to the current process. Call once, early, before secrets are loaded.
pub fn apply(options: Options) -> Result<Applied, HardeningError> {
    if !options.allow_core_dumps {
        let none = Rlimit {
            current: Some(0),
            maximum: Some(0),
        };
        setrlimit(Resource::Core, none).map_err(HardeningError::CoreDumps)?;
        set_not_dumpable().map_err(HardeningError::CoreDumps)?;
    }
    if options.mlock {
        lock_memory()?;
    }
    let open_files = raise_open_files();
    Ok(Applied {
        core_dumps: getrlimit(Resource::Core).current != Some(0),
        dumpable: is_dumpable(),
        memory_locked: options.mlock,
        open_files,
    })
}

/// [`apply`], then logs what is in force, and warns when the open-files limit is below what
/// `max_connections` needs.
pub fn apply_at_start_up(
    options: Options,
    max_connections: u32,
) -> Result<Applied, HardeningError> {
    let applied = apply(options)?;
    tracing::info!(
        core_dumps = applied.core_dumps,
        dumpable = applied.dumpable,
        memory_locked = applied.memory_locked,
        open_files = applied.open_files,
        "process hardened"
    );
    // A few descriptors beyond the connections: the listener, the database, logs.
    if applied
        .open_files
        .is_some_and(|files| files < u64::from(max_connections) + 64)
    {
        tracing::warn!(
            open_files = applied.open_files,
            max_connections,
            "the open-files limit is below MAX_CONNECTIONS: raise `ulimit -n` or lower MAX_CONNECTIONS"
        );
    }
    Ok(applied)
}

#[cfg(target_os = "linux")]
fn set_not_dumpable() -> rustix::io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
}

#[cfg(not(target_os = "linux"))]
fn set_not_dumpable() -> rustix::io::Result<()> {
    Ok(())
}

#[cfg(target_os = "linux")]
fn is_dumpable() -> bool {
    !matches!(
        rustix::process::dumpable_behavior(),
        Ok(rustix::process::DumpableBehavior::NotDumpable)
    )
}

#[cfg(not(target_os = "linux"))]
fn is_dumpable() -> bool {
    true
}

fn lock_memory() -> Result<(), HardeningError> {
    use rustix::mm::{MlockAllFlags, mlockall};
    mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE).map_err(|err| {
        let limit = match getrlimit(Resource::Memlock).current {
            Some(bytes) => format!("{} KiB", bytes / 1024),
            None => "unlimited".into(),
        };
        HardeningError::Mlock { err, limit }
    })
}

/// Raises the soft open-files limit to the hard one; returns the soft limit in force.
fn raise_open_files() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %err, "cannot raise the open-files limit");
        }
    }
    getrlimit(Resource::Nofile).current
}
