//! The command line: global flags, the subcommands (also what `shell` parses each line
//! into), and how clap's own errors are shown.

use clap::{Parser, Subcommand};
use coord::Path;

const AFTER_HELP: &str = "\
Examples:
  coordctl --url zk://127.0.0.1:2181/myapp tree /
  coordctl --url etcd://127.0.0.1:2379/myapp create /config/db 'host=a' --parents
  coordctl --url consul://127.0.0.1:8500/myapp elect scheduler node-1
  COORD_URL=zk://127.0.0.1:2181/myapp coordctl lock nightly -- ./backup.sh
  coordctl --url mem:// shell        (mem:// lives inside one process: try it in the shell)
  coordctl backends                  (the URL schemes compiled into this coordctl)

Exit codes:
  0    success
  1    other error (malformed data, refused by the server, ...)
  2    usage error: bad arguments, bad path, bad value, missing or bad URL
  3    not found: the node, a create's parent, an election's leader or a service
  4    conflict: version mismatch (--version), already exists (create),
       has children (rm without --recursive)
  5    connection failure or timeout, or the session was lost (and with it an
       ephemeral node, a leadership or a lock)
  130  Ctrl-C while waiting for a lock
  lock NAME -- CMD exits with CMD's own exit code (127 if CMD cannot be started,
  128+N if CMD was killed by signal N).";

/// A command-line client for coord: browse and edit the tree, watch it, and use the
/// election, lock and registry recipes, on ZooKeeper, etcd, Consul or in memory.
#[derive(Parser, Debug)]
#[command(name = "coordctl", version, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// The backend: zk://host:2181[,host:port…]/namespace, etcd://host:2379/namespace,
    /// consul://host:8500/namespace or mem://name (the name is optional)
    #[arg(long, env = "COORD_URL", global = true, value_name = "URL")]
    pub(crate) url: Option<String>,
    /// Machine-readable output: one JSON object per line (errors too, on stderr)
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Give up on connecting, and on each request, after this many seconds (waits for a
    /// leadership, a lock or watch events are not limited)
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10.0)]
    pub(crate) timeout: f64,
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

/// One command line inside `coordctl shell`.
#[derive(Parser, Debug)]
#[command(name = "coordctl", no_binary_name = true)]
pub(crate) struct Line {
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

// The subcommands: each variant's doc comment is its help text.
#[derive(Subcommand, Debug, Clone)]
pub(crate) enum Cmd {
    /// List the children of a node
    Ls {
        /// The node, such as /app
        path: Path,
    },
    /// Print the tree below a node (with values and ephemeral markers) as it is walked
    Tree {
        /// The top node
        #[arg(default_value = "/")]
        path: Path,
    },
    /// Print a node's value
    Get {
        /// The node
        path: Path,
    },
    /// Print a node's metadata: version, ephemeral owner, value size, number of children
    Stat {
        /// The node
        path: Path,
    },
    /// Write a node's value (the node must exist)
    Set {
        /// The node
        path: Path,
        /// The new value
        value: String,
        /// Write only if the node is still at this version (compare-and-set; see `stat`)
        #[arg(long, value_name = "V", value_parser = parse_version)]
        version: Option<u64>,
    },
    /// Create a node. An --ephemeral node lives only as long as this command: it is held
    /// until Ctrl-C (in `shell`, until you leave the shell)
    Create {
        /// The node; with --sequential, the prefix of its name
        path: Path,
        /// The value (empty if not given)
        value: Option<String>,
        /// Bind the node to this command's session: it disappears when coordctl exits
        #[arg(long)]
        ephemeral: bool,
        /// Append a unique, increasing 10-digit sequence number to the name
        #[arg(long)]
        sequential: bool,
        /// Create missing parent nodes first
        #[arg(long, short)]
        parents: bool,
    },
    /// Delete a node
    Rm {
        /// The node
        path: Path,
        /// Delete everything below it too
        #[arg(long, short)]
        recursive: bool,
        /// Delete only if the node is still at this version
        #[arg(long, value_name = "V", value_parser = parse_version)]
        version: Option<u64>,
    },
    /// Print a node's changes (or its children's with --children) until Ctrl-C
    Watch {
        /// The node
        path: Path,
        /// Watch the list of children instead of the value
        #[arg(long)]
        children: bool,
        /// Stop after this many changes (the current state is not counted)
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Print the leader of an election (exit 3 if nobody campaigns)
    Leader {
        /// The election's name (a full path if it starts with `/`)
        election: String,
        /// Whose protocol the election speaks (coord, curator-lock, curator-latch, kazoo,
        /// etcd-concurrency, consul-lock, consul-election)
        #[arg(long, value_name = "DIALECT", default_value = "coord", value_parser = parse_dialect)]
        dialect: coord::dialect::Dialect,
    },
    /// Campaign in an election; once elected, print the fencing token and hold the
    /// leadership until Ctrl-C (then resign) or until it is lost (exit 5)
    Elect {
        /// The election's name (a full path if it starts with `/`)
        election: String,
        /// The value to lead with (what `leader` shows), such as this node's address
        value: String,
        /// Whose protocol the election speaks (see `leader --help`)
        #[arg(long, value_name = "DIALECT", default_value = "coord", value_parser = parse_dialect)]
        dialect: coord::dialect::Dialect,
    },
    /// Run a command while holding a lock, and exit with the command's exit code
    #[command(
        after_help = "The command gets COORD_LOCK=NAME and COORD_FENCING_TOKEN=N in its \
        environment. If the lock is lost while it runs, it is killed and coordctl exits 5."
    )]
    Lock {
        /// The lock's name (a full path if it starts with `/`)
        name: String,
        /// Whose protocol the lock speaks (see `leader --help`)
        #[arg(long, value_name = "DIALECT", default_value = "coord", value_parser = parse_dialect)]
        dialect: coord::dialect::Dialect,
        /// The command and its arguments, after `--`
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// List the registered services, or the instances of one service
    Services {
        /// A service's name
        name: Option<String>,
    },
    /// Print a semaphore's limit, the holders of its leases and the waiters, in queue order
    /// (exit 3 if it was never used)
    Semaphore {
        /// The semaphore's name
        name: String,
    },
    /// Print the readers and the writer holding a read-write lock and those waiting, in
    /// queue order
    Rwlock {
        /// The read-write lock's name
        name: String,
    },
    /// Print a shared counter's value (0 if it was never written); with --add N, add N
    /// (exactly once, however many others add at the same time) and print the new value
    Counter {
        /// The counter's name
        name: String,
        /// The amount to add (may be negative: --add=-3)
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        add: Option<i64>,
    },
    /// List the URL schemes this coordctl was built with (mem, zk, etcd, consul), one per line
    #[command(
        after_help = "Needs no --url. A scheme that is not listed was left out at build time \
        (coord's cargo features zk, etcd, consul): a URL with it is a usage error (exit 2)."
    )]
    Backends,
    /// Read commands from standard input, one per line, on one connection (like zkCli).
    /// A line ending in `&` runs in the background; `wait` waits for those; `exit` leaves
    #[command(
        after_help = "Every command of coordctl works here, without `coordctl` and \
        without the global flags. Ephemeral nodes live until you leave the shell. The exit \
        code is that of the last command that failed, 0 if none did."
    )]
    Shell {
        /// Print each command before its output (for transcripts)
        #[arg(long)]
        echo: bool,
    },
}

/// `--version`'s value: a number as `stat` prints it, with or without a leading `v`.
fn parse_version(s: &str) -> Result<u64, String> {
    s.strip_prefix('v')
        .unwrap_or(s)
        .parse()
        .map_err(|_| format!("`{s}` is not a version (a number as `stat` prints it, like 3)"))
}

/// `--dialect`'s value, by [`coord::dialect::Dialect::parse`].
fn parse_dialect(s: &str) -> Result<coord::dialect::Dialect, String> {
    coord::dialect::Dialect::parse(s).map_err(|e| e.to_string())
}

/// Whether clap's "error" is really a request for help or the version (printed, exit 0).
pub(crate) fn is_help(e: &clap::Error) -> bool {
    use clap::error::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    )
}

/// The first line of a clap error, without its `error: ` prefix: errors are one line.
pub(crate) fn clap_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("bad arguments");
    format!(
        "{} (see `coordctl --help`)",
        first.trim_start_matches("error: ").trim_end()
    )
}
