//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::output::{Format, LineFormat};

#[derive(Debug, Parser)]
#[command(
    name = "cleartap",
    version,
    about = "See what programs really send and receive, in plaintext, with eBPF."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The `--help` heading of the options only the command line takes: the
/// agent decides them itself (its output is its JSON; key logs and packet
/// captures are files for a person at the command line), so its
/// configuration refuses them (see `agent::config`).
pub const COMMAND_LINE_ONLY: &str = "Command line only (not in the agent's configuration)";

/// A capture source: a subcommand the agent can run too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceKind {
    Tls,
    Exec,
    Shell,
    Mysql,
    Postgres,
}

impl SourceKind {
    /// In the order the agent starts them.
    pub const ALL: [SourceKind; 5] =
        [SourceKind::Tls, SourceKind::Exec, SourceKind::Shell, SourceKind::Mysql, SourceKind::Postgres];

    /// Its subcommand, the agent's `[sources.NAME]` and its records' source.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Tls => "tls",
            SourceKind::Exec => "exec",
            SourceKind::Shell => "shell",
            SourceKind::Mysql => "mysql",
            SourceKind::Postgres => "postgres",
        }
    }

    pub fn named(name: &str) -> Option<SourceKind> {
        SourceKind::ALL.into_iter().find(|s| s.name() == name)
    }
}

#[derive(Debug, Subcommand)]
// Parsed once per run: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Capture TLS plaintext (OpenSSL/BoringSSL, GnuTLS, NSS) from every process, including later ones.
    #[command(after_help = "Examples:
  sudo cleartap tls                              every TLS process on the host, now and later
  sudo cleartap tls --pid 1234 --format json     one process, one JSON object per record
  sudo cleartap tls --comm curl --decode http    curl's HTTP exchanges only
  sudo cleartap tls --library gnutls,nss         only these libraries
  sudo cleartap tls --lib /opt/app/bin/server    also an executable with OpenSSL linked in
  sudo cleartap tls --keylog keys.log            TLS secrets in SSLKEYLOGFILE format too
  sudo cleartap tls --format binary -o cap.bin   bulk capture, raw payloads (cleartap read shows it)
  sudo cleartap tls -w cap.pcapng -i eth0 tcp port 443   packets with the secrets embedded")]
    Tls(TlsArgs),
    /// Every interactive command typed in bash or zsh, with user, tty and exit status.
    #[command(after_help = "Examples:
  sudo cleartap shell                            every command typed in bash or zsh
  sudo cleartap shell --uid 1000 --format json   one user's commands as JSON lines")]
    Shell(SourceArgs),
    /// Every program started (execve/execveat), with its arguments and result.
    #[command(after_help = "Examples:
  sudo cleartap exec                             every program started, with its arguments
  sudo cleartap exec --cgroup system.slice/nginx.service   only inside one service")]
    Exec(SourceArgs),
    /// Every statement MySQL/MariaDB servers on this host execute.
    #[command(after_help = "Examples:
  sudo cleartap mysql                            every statement, with latency and result
  sudo cleartap mysql --format json > audit.jsonl   a query audit trail")]
    Mysql(SourceArgs),
    /// Every statement PostgreSQL backends on this host execute.
    #[command(after_help = "Examples:
  sudo cleartap postgres                         every statement, with latency and result
  sudo cleartap postgres --uid 105 --format json   the backends of one server user")]
    Postgres(SourceArgs),
    /// Load every kernel program without attaching anything: does this kernel take them?
    #[command(after_help = "Examples:
  sudo cleartap check                            each program with the instructions the verifier took")]
    Check,
    /// Run every configured source as a daemon, streaming events to the configured sinks.
    #[command(after_help = "Examples:
  sudo cleartap agent --config /etc/cleartap/agent.toml
  sudo cleartap agent --config agent.toml --metrics 127.0.0.1:9464   with Prometheus metrics
  (packaging/agent.toml is a commented configuration to start from)")]
    Agent(AgentArgs),
    /// Read the fleet's events back from NATS JetStream, live or from the start.
    #[command(after_help = "Examples:
  cleartap tail --from tls://nats.example:4222                 new events of every host, as JSON
  cleartap tail --from tls://nats.example:4222 --host web-1 --source shell --format text
  cleartap tail --from nats://127.0.0.1:4222 --since 10m --no-follow   the last ten minutes, then stop")]
    Tail(TailArgs),
    /// Show a capture written with --format binary as JSON lines (those --format json writes) or text.
    #[command(after_help = "Examples:
  cleartap read cap.bin > cap.jsonl              the same JSON lines --format json writes
  cleartap read cap.bin --format text --hex      as the live text output, payloads in hex")]
    Read(ReadArgs),
}

impl Command {
    /// The capture source this subcommand runs (None: check, agent, tail).
    pub fn source(&self) -> Option<SourceKind> {
        match self {
            Command::Tls(_) => Some(SourceKind::Tls),
            Command::Exec(_) => Some(SourceKind::Exec),
            Command::Shell(_) => Some(SourceKind::Shell),
            Command::Mysql(_) => Some(SourceKind::Mysql),
            Command::Postgres(_) => Some(SourceKind::Postgres),
            Command::Check | Command::Agent(_) | Command::Tail(_) | Command::Read(_) => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// NATS server url (repeatable: the servers of a cluster).
    #[arg(long, value_name = "URL", required = true)]
    pub from: Vec<String>,
    /// The JetStream stream the agents publish to.
    #[arg(long, default_value = "CLEARTAP")]
    pub stream: String,
    /// The agents' subject prefix (subjects are PREFIX.HOST.SOURCE).
    #[arg(long, default_value = "cleartap")]
    pub subject_prefix: String,
    /// Only this host's events.
    #[arg(long)]
    pub host: Option<String>,
    /// Only this source's events (tls, exec, shell, mysql, postgres).
    #[arg(long)]
    pub source: Option<String>,
    /// From the start of the stream (default: only new events).
    #[arg(long, conflicts_with = "since")]
    pub all: bool,
    /// From this long ago (`10m`) or this time (`2026-11-26T10:00:00Z`).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Stop once every event already in the stream is printed.
    #[arg(long)]
    pub no_follow: bool,
    /// NATS credentials file.
    #[arg(long, value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// Output: json (as published) or text (as the live subcommands print).
    #[arg(long, value_enum, default_value_t = LineFormat::Json)]
    pub format: LineFormat,
    /// Text: TLS payloads as a hex dump.
    #[arg(long)]
    pub hex: bool,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// A file written by a capture with --format binary (`-`: standard input).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Output: json (the lines --format json writes) or text.
    #[arg(long, value_enum, default_value_t = LineFormat::Json)]
    pub format: LineFormat,
    /// Text: TLS payloads as a hex dump.
    #[arg(long)]
    pub hex: bool,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The configuration file (TOML; see docs/agent.md).
    #[arg(long, value_name = "FILE", default_value = "/etc/cleartap/agent.toml")]
    pub config: PathBuf,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9464 (port
    /// 0: a free one, printed on stderr).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

/// What every capture subcommand but `tls` takes: filters and output.
#[derive(Debug, Args)]
pub struct SourceArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only this process (thread group id); applied in the kernel.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only processes running with this user id; applied in the kernel.
    #[arg(long)]
    pub uid: Option<u32>,
    /// Only tasks with this command name (as in /proc/PID/comm, at most 15 bytes).
    #[arg(long)]
    pub comm: Option<String>,
    /// Only tasks in this cgroup v2 subtree, descendants included (path, absolute or
    /// relative to /sys/fs/cgroup).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format: readable text, one JSON object per line, or binary records
    /// (JSON fields with raw payloads, for bulk capture to a file; see `cleartap read`).
    #[arg(long, value_enum, default_value_t = Format::Text, help_heading = COMMAND_LINE_ONLY)]
    pub format: Format,
    /// Text format: show payloads as a hex dump.
    #[arg(long, help_heading = COMMAND_LINE_ONLY)]
    pub hex: bool,
    /// Write the records to this file, created mode 0600, instead of standard output
    /// (an existing file is refused; with `tls --force` it is replaced).
    #[arg(short = 'o', long = "output", value_name = "FILE", help_heading = COMMAND_LINE_ONLY)]
    pub output: Option<PathBuf>,
    /// Size of the kernel ring buffer (bytes; K/M/G or KiB/MiB/GiB suffixes; rounded up to a power of two;
    /// default 32M for `tls`, 16M for the other sources). It is mapped into cleartap, so it counts in its RSS.
    #[arg(long, value_parser = ring_size)]
    pub ringbuf_size: Option<u32>,
}

/// The ring buffer of the sources other than `tls`: a few records per
/// command or statement.
pub const RING_DEFAULT: u32 = 16 << 20;
/// `tls`'s: its writer reads records in place in the ring (`run::ring`),
/// so while a write waits for the disk the ring alone absorbs the traffic
/// (a 1 GiB stream, 800 MiB/s of records on both ends, lost records in
/// disk stalls in 7 of 16 hand runs here with 16 MiB, 1 of 4 with 32:
/// bench/README.md);
/// a single call larger than the ring is the case to raise it for.
pub const TLS_RING_DEFAULT: u32 = 32 << 20;

impl OutputArgs {
    /// The ring buffer's size: as given, else `default`.
    pub fn ring_bytes(&self, default: u32) -> u32 {
        self.ringbuf_size.unwrap_or(default)
    }

    pub fn style(&self, body_preview: usize) -> crate::output::Style {
        crate::output::Style { format: self.format, hex: self.hex, body_preview }
    }

    /// With `--output`: the file, created private, becomes standard
    /// output, where the writers put records (so a file there gets the
    /// same care: whole records only, written back as it grows).
    pub fn redirect(&self, force: bool) -> anyhow::Result<()> {
        use anyhow::Context;
        use std::os::fd::AsRawFd;
        let Some(path) = &self.output else { return Ok(()) };
        let existing = if force { crate::output::Existing::Replace } else { crate::output::Existing::Refuse };
        let file = crate::output::create_private(path, existing)
            .with_context(|| format!("--output {}", path.display()))?;
        // Ours alone (a shell's `>` may share its open file with stderr):
        // written past the page cache (output::direct).
        crate::output::direct::request(&file);
        // SAFETY: dup2 onto fd 1, which stays open for the process's life.
        if unsafe { libc::dup2(file.as_raw_fd(), 1) } < 0 {
            return Err(std::io::Error::last_os_error()).context("making --output standard output");
        }
        Ok(())
    }
}

/// What `tls` shows: raw records, decoded HTTP exchanges, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Decode {
    Http,
    Raw,
    Both,
}

#[derive(Debug, Args)]
pub struct TlsArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Also probe this library or executable (repeatable), e.g. a binary with OpenSSL linked in.
    #[arg(long = "lib", value_name = "PATH")]
    pub libs: Vec<PathBuf>,
    /// Never probe this library or executable (repeatable).
    #[arg(long = "exclude-lib", value_name = "PATH")]
    pub exclude_libs: Vec<PathBuf>,
    /// Also probe this Go executable (repeatable); Go programs are found by themselves too.
    #[arg(long = "go-binary", value_name = "PATH")]
    pub go_binaries: Vec<PathBuf>,
    /// Stop a process that execs a file, or opens a TLS library, not checked yet, until its probes
    /// are in; then continue it: first runs of new programs are captured from their first byte.
    /// Its parent sees it stop and continue (an interactive shell reports a foreground job
    /// stopped); see docs/capture.md.
    #[arg(long = "hold-unchecked")]
    pub hold_unchecked: bool,
    /// Which TLS libraries to capture.
    #[arg(long = "library", value_parser = library_names(), value_delimiter = ',',
          default_value = "openssl,gnutls,nss,rustls,go")]
    pub libraries: Vec<String>,
    /// Write the TLS secrets seen (OpenSSL, GnuTLS, Go) to this file in SSLKEYLOGFILE format, mode 0600.
    #[arg(long = "keylog", value_name = "FILE", help_heading = COMMAND_LINE_ONLY)]
    pub keylog: Option<PathBuf>,
    /// Write the packets of the -i interfaces to this pcapng file (`-` for stdout), mode 0600,
    /// with the TLS secrets embedded so that Wireshark decrypts it as it is.
    #[arg(short = 'w', long = "write", value_name = "FILE", help_heading = COMMAND_LINE_ONLY)]
    pub write: Option<PathBuf>,
    /// Interface to capture packets on with -w (repeatable; `any`: every interface). Default: any.
    #[arg(short = 'i', long = "interface", value_name = "IFACE", requires = "write", help_heading = COMMAND_LINE_ONLY)]
    pub interfaces: Vec<String>,
    /// Bytes of each packet to keep with -w (default: whole packets).
    #[arg(long, value_name = "N", requires = "write", value_parser = clap::value_parser!(u32).range(64..),
          help_heading = COMMAND_LINE_ONLY)]
    pub snaplen: Option<u32>,
    /// Append to an existing --keylog file, or replace an existing -w file, instead of refusing it.
    #[arg(long, help_heading = COMMAND_LINE_ONLY)]
    pub force: bool,
    /// Connections whose state the kernel keeps (LRU: the least recently used is dropped beyond it).
    #[arg(long = "max-connections", value_name = "N", default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_connections: u32,
    /// Show raw records, HTTP/1.1 and HTTP/2 exchanges decoded from them, or both.
    #[arg(long, value_enum, default_value_t = Decode::Both)]
    pub decode: Decode,
    /// HTTP exchanges: bytes of each body to show (decompressed when compressed).
    #[arg(long = "body", value_name = "N", default_value_t = 256)]
    pub body: usize,
    /// With -w: a packet filter in tcpdump syntax (e.g. `tcp port 443`), applied exactly as libpcap does.
    #[arg(value_name = "FILTER", trailing_var_arg = true, allow_hyphen_values = true, requires = "write",
          help_heading = COMMAND_LINE_ONLY)]
    pub filter: Vec<String>,
}

/// `--library` values: the names in the registry of TLS libraries
/// (`sources::TLS_SOURCES`), and `go`, each with its description.
fn library_names() -> clap::builder::PossibleValuesParser {
    use crate::sources::{gotls, TLS_SOURCES};
    let values = TLS_SOURCES
        .iter()
        .map(|s| clap::builder::PossibleValue::new(s.name).help(s.about))
        .chain([clap::builder::PossibleValue::new(gotls::NAME).help(gotls::ABOUT)]);
    clap::builder::PossibleValuesParser::new(values)
}

/// A size in bytes, as the command line (`--ringbuf-size`) and the agent's
/// TOML (`spool_max_bytes`, `[sinks.file] max_bytes`, a source's
/// `ringbuf_size`) both write it: a whole number, then optionally a binary
/// unit in any case, a space between them allowed: `B`, `K` or `KiB`
/// (1024), `M` or `MiB`, `G` or `GiB`, `T` or `TiB`. `KB`, `MB`, `GB` and
/// `TB` are refused rather than guessed: they usually mean powers of 1000,
/// and the docs write binary units.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 =
        number.parse().map_err(|_| format!("{text:?} is not a size such as \"64K\", \"32M\" or \"1GiB\""))?;
    let unit = unit.trim();
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        decimal @ ("kb" | "mb" | "gb" | "tb") => {
            let binary = decimal[..1].to_ascii_uppercase();
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: sizes are in binary units, write {binary} or {binary}iB"
            ));
        }
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (B, K or KiB, M or MiB, G or GiB, T or TiB)"
            ))
        }
    };
    number.checked_shl(shift).filter(|n| n >> shift == number).ok_or_else(|| format!("{text:?} is too large"))
}

/// `--ringbuf-size`: a size as `parse_size` reads it, then rounded up to a
/// power of two as the kernel requires, at least one page, at most 2 GiB.
pub fn ring_size(s: &str) -> Result<u32, String> {
    let bytes = parse_size(s)?.max(4096).checked_next_power_of_two();
    bytes
        .and_then(|b| u32::try_from(b).ok())
        .ok_or_else(|| format!("{:?} is too large (at most 2G)", s.trim()))
}

/// The same inputs for every caller of `parse_size` (the agent's tests use
/// them too): the text and the bytes it means, None when refused.
#[cfg(test)]
pub(crate) const SIZE_EXAMPLES: &[(&str, Option<u64>)] = &[
    ("4096", Some(4096)),
    ("0", Some(0)),
    ("512B", Some(512)),
    ("64K", Some(64 << 10)),
    ("64k", Some(64 << 10)),
    ("1KiB", Some(1 << 10)),
    ("32M", Some(32 << 20)),
    ("32 MiB", Some(32 << 20)),
    ("1mib", Some(1 << 20)),
    ("1G", Some(1 << 30)),
    ("1GiB", Some(1 << 30)),
    ("2T", Some(2 << 40)),
    ("1TiB", Some(1 << 40)),
    ("32MB", None),
    ("1GB", None),
    ("1kb", None),
    ("12X", None),
    ("1.5G", None),
    ("-1", None),
    ("GiB", None),
    ("", None),
    ("99999999999999TiB", None),
    ("99999999999999999999", None),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for &(text, bytes) in SIZE_EXAMPLES {
            assert_eq!(parse_size(text).ok(), bytes, "{text:?}");
        }
        assert!(parse_size("1GB").unwrap_err().contains("write G or GiB"));
    }

    #[test]
    fn ring_sizes_are_sizes_rounded_up_to_a_power_of_two() {
        for &(text, bytes) in SIZE_EXAMPLES {
            let ring = bytes.map(|b| b.max(4096).next_power_of_two()).filter(|b| *b <= 1 << 31);
            assert_eq!(ring_size(text).ok().map(u64::from), ring, "{text:?}");
            // The option parses as the function does.
            let parsed = Cli::try_parse_from(["cleartap", "exec", "--ringbuf-size", text]);
            match parsed.map(|c| c.command) {
                Ok(Command::Exec(a)) => assert_eq!(a.output.ringbuf_size.map(u64::from), ring, "{text:?}"),
                Ok(_) => unreachable!(),
                Err(_) => assert_eq!(ring, None, "{text:?}"),
            }
        }
        assert_eq!(ring_size("5000"), Ok(8192));
        assert_eq!(ring_size("1"), Ok(4096));
        assert_eq!(ring_size("2G"), Ok(1 << 31));
        assert!(ring_size("4G").is_err());
        assert!(ring_size("9223372036854775809").is_err());
    }

    #[test]
    fn every_subcommand_has_examples_that_parse() {
        use clap::CommandFactory;
        let command = Cli::command();
        for sub in command.get_subcommands() {
            let help = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.starts_with("Examples:\n"), "{}: no Examples section", sub.get_name());
            let examples: Vec<&str> = help
                .lines()
                .filter_map(|l| l.trim_start().strip_prefix("sudo ").or(Some(l.trim_start())))
                .filter(|l| l.starts_with("cleartap "))
                .collect();
            assert!(!examples.is_empty(), "{}", sub.get_name());
            for example in examples {
                // The command (before a shell redirection), then two spaces
                // before what it does.
                let line = example.split("  ").next().unwrap().split(" > ").next().unwrap();
                let args: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(args.get(1), Some(&sub.get_name()), "{example}");
                Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{example}: {e}"));
            }
        }
    }
}
