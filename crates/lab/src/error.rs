//! `LabError`: everything that can go wrong building, using or removing a lab.

use std::io;
use std::path::PathBuf;

use podtap_cluster::InventoryError;

/// Errors of the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab spec is not valid; every problem found is listed.
    #[error("invalid lab spec: {}", problems.join("; "))]
    InvalidSpec { problems: Vec<String> },

    /// A lab name is not of the form `[a-z0-9]{1,12}`.
    #[error("invalid lab name {name:?}: expected 1 to 12 characters from [a-z0-9]")]
    BadName { name: String },

    /// A namespace-sweep prefix does not start with `pt-`, the prefix podtap owns.
    #[error(
        "refusing to sweep network namespaces with prefix {prefix:?}: it must start with \"pt-\""
    )]
    BadPrefix { prefix: String },

    /// An external command (`ip`, `bridge`) could not be started.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },

    /// An external command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    /// The output of an external command was not what we expected.
    #[error("unexpected output from `{command}`: {source}")]
    CommandOutput {
        command: String,
        #[source]
        source: serde_json::Error,
    },

    /// A network namespace could not be opened or entered, or the work inside it panicked.
    #[error(transparent)]
    Netns(#[from] podtap_cluster::netns::NetnsError),

    /// A worker thread could not be started.
    #[error("cannot start a thread for {what}: {source}")]
    Thread {
        what: String,
        #[source]
        source: io::Error,
    },

    /// A sysctl could not be written.
    #[error("sysctl {key} in network namespace {netns}: {source}")]
    Sysctl {
        netns: String,
        key: String,
        #[source]
        source: io::Error,
    },

    /// Reading or writing the lab's state directory failed.
    #[error("lab state {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The lab's `lab.json` is not valid.
    #[error("lab state {path} is not valid: {source}")]
    StateParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// Reading or writing the inventory failed.
    #[error(transparent)]
    Inventory(#[from] InventoryError),

    /// No lab of this name exists.
    #[error("no lab named {name:?} (no state in {state_dir})")]
    NotFound { name: String, state_dir: PathBuf },

    /// A lab of this name exists with another spec.
    #[error(
        "lab {name:?} already exists with another spec ({existing}); requested {requested}; \
         run `podtap lab down {name}` first"
    )]
    SpecMismatch {
        name: String,
        existing: String,
        requested: String,
    },

    /// The lab has no node of this name.
    #[error("lab {lab:?} has no node {node:?}")]
    UnknownNode { lab: String, node: String },

    /// The lab has no pod of this name.
    #[error("lab {lab:?} has no pod {pod}")]
    UnknownPod { lab: String, pod: String },

    /// A pod of this name already exists.
    #[error("lab {lab:?} already has a pod {pod}")]
    PodExists { lab: String, pod: String },

    /// A pod name or namespace is not usable.
    #[error("invalid pod {pod:?}: {reason}")]
    BadPod { pod: String, reason: String },

    /// A lab host name is not usable.
    #[error("invalid lab host name {name:?}: {reason}")]
    BadHost { name: String, reason: String },

    /// The underlay has no free host address left.
    #[error("lab {lab:?} has no free host address left")]
    UnderlayFull { lab: String },

    /// The node's pod CIDR has no free address left.
    #[error("node {node:?} has no free pod address left")]
    NodeFull { node: String },

    /// Two pods on one node would get the same host veth name.
    #[error("host veth {veth} for pod {pod} is already used on node {node:?}")]
    VethClash {
        veth: String,
        pod: String,
        node: String,
    },

    /// A socket operation of the traffic servers or clients failed.
    #[error("{what}: {source}")]
    Socket {
        what: String,
        #[source]
        source: io::Error,
    },

    /// The sink's counters for this traffic cannot be read here (another process runs it).
    #[error(
        "the servers in pod netns {netns} are run by another process (e.g. `podtap lab serve`); \
         {kind} needs the sink's counters, stop that process first"
    )]
    ForeignServers { netns: String, kind: String },
}

impl LabError {
    /// Wraps an I/O error of a socket operation with what was being done.
    pub(crate) fn socket(what: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
        let what = what.into();
        move |source| LabError::Socket { what, source }
    }

    /// Wraps an I/O error on a state file.
    pub(crate) fn state(path: &std::path::Path) -> impl FnOnce(io::Error) -> LabError + '_ {
        move |source| LabError::State {
            path: path.to_path_buf(),
            source,
        }
    }
}
