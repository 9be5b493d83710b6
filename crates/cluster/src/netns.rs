//! Running code inside a named network namespace (`ip netns` names under `/run/netns`).
//!
//! `setns(2)` changes only the calling thread, so [`run_in`] does it on a fresh scoped thread:
//! the caller's namespace never changes, and sockets or links created inside stay in the target
//! namespace after the thread ends.

use std::fs::File;
use std::io;
use std::path::PathBuf;

/// Errors entering a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file could not be opened (the namespace does not exist?).
    #[error("network namespace {name:?} ({path}): {source}")]
    Open {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `setns` failed (missing CAP_SYS_ADMIN?).
    #[error("entering network namespace {name:?}: {source}")]
    Enter {
        name: String,
        #[source]
        source: io::Error,
    },
    /// The thread running inside the namespace panicked.
    #[error("the thread working in network namespace {name:?} panicked")]
    Panicked { name: String },
}

/// Path of a named network namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Whether a named network namespace exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Runs `f` inside the network namespace `name` (or in the caller's own namespace when `None`)
/// and returns its result. `f` runs on a separate thread; it may borrow from the caller.
pub fn run_in<T: Send>(name: Option<&str>, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let Some(name) = name else {
        return Ok(f());
    };
    let file = File::open(path(name)).map_err(|source| NetnsError::Open {
        name: name.to_string(),
        path: path(name),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetnsError::Enter {
                    name: name.to_string(),
                    source: io::Error::from(e),
                }
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Panicked {
            name: name.to_string(),
        })?
    })
}

/// Moves the calling thread into the network namespace `name` for good. Use at the start of a
/// thread that must live there (a server, a reader).
pub fn enter(name: &str) -> Result<(), NetnsError> {
    let file = File::open(path(name)).map_err(|source| NetnsError::Open {
        name: name.to_string(),
        path: path(name),
        source,
    })?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Enter {
        name: name.to_string(),
        source: io::Error::from(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_namespace_is_a_clear_error() {
        let err = run_in(Some("pt-does-not-exist"), || ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("pt-does-not-exist"), "{err}");
    }

    #[test]
    fn none_runs_here() {
        assert_eq!(run_in(None, || 7).unwrap(), 7);
    }
}
