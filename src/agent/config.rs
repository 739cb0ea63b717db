//! The agent's configuration file (TOML). Each `[sources.NAME]` table takes
//! exactly the options of the subcommand of the same name: its keys become
//! that subcommand's command line and clap parses them, so a source in the
//! agent and on the command line cannot disagree on names, defaults or
//! validation.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use serde::Deserialize;

use crate::cli::{self, Cli, SourceKind, COMMAND_LINE_ONLY};

/// A configuration that cannot be used: the message names the key. The
/// agent exits with status 2 on it.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn error(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    host: Option<String>,
    spool_dir: Option<PathBuf>,
    spool_max_bytes: Option<toml::Value>,
    #[serde(default)]
    sources: BTreeMap<String, toml::Table>,
    #[serde(default)]
    sinks: Sinks,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sinks {
    pub nats: Option<NatsSink>,
    pub file: Option<FileSink>,
}

#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSink {
    #[serde(deserialize_with = "one_or_many")]
    pub url: Vec<String>,
    #[serde(default = "default_stream")]
    pub stream: String,
    #[serde(default = "default_prefix")]
    pub subject_prefix: String,
    #[serde(default = "default_true")]
    pub create_stream: bool,
    /// Replicas of a stream the agent creates (a cluster: 3).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    pub creds: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Events carry plaintext and secrets: TLS is required unless this is
    /// set (a warning names a server that is not on loopback).
    #[serde(default)]
    pub plaintext: bool,
}

/// Everything but the password and the token, which are never printed.
impl fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |set: bool| if set { Some("<redacted>") } else { None };
        f.debug_struct("NatsSink")
            .field("url", &self.url)
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("create_stream", &self.create_stream)
            .field("replicas", &self.replicas)
            .field("creds", &self.creds)
            .field("user", &self.user)
            .field("password", &redacted(self.password.is_some()))
            .field("token", &redacted(self.token.is_some()))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("plaintext", &self.plaintext)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSink {
    pub path: PathBuf,
    /// Rotated when it reaches this size.
    #[serde(default = "default_file_max", deserialize_with = "size")]
    pub max_bytes: u64,
    /// Rotated files kept beside the current one.
    #[serde(default = "default_keep")]
    pub keep: u32,
}

fn default_stream() -> String {
    "CLEARTAP".into()
}
fn default_prefix() -> String {
    "cleartap".into()
}
fn default_replicas() -> usize {
    1
}
fn default_true() -> bool {
    true
}
fn default_file_max() -> u64 {
    100 << 20
}
fn default_keep() -> u32 {
    5
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => Ok(vec![s]),
        OneOrMany::Many(v) if !v.is_empty() => Ok(v),
        OneOrMany::Many(_) => Err(serde::de::Error::custom("at least one url is needed")),
    }
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    parse_size(&toml::Value::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// A TOML integer (bytes), or a string as `cli::parse_size` reads it (the
/// command line's syntax: `1GiB`, `512M`, `64K`, `4096`); above zero.
fn parse_size(value: &toml::Value) -> Result<u64, String> {
    let bytes = match value {
        toml::Value::Integer(n) => u64::try_from(*n).unwrap_or(0),
        toml::Value::String(s) => cli::parse_size(s)?,
        other => return Err(format!("expected a size such as \"1GiB\", found a {}", other.type_str())),
    };
    if bytes == 0 {
        return Err("a size above zero is needed".to_string());
    }
    Ok(bytes)
}

/// One configured source: its name and its parsed subcommand arguments.
#[derive(Debug)]
pub struct Source {
    pub name: &'static str,
    pub command: cli::Command,
    /// The table it came from: a reload restarts a source whose table changed.
    pub table: toml::Table,
}

#[derive(Debug)]
pub struct AgentConfig {
    pub host: String,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub sources: Vec<Source>,
    pub sinks: Sinks,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| error(format!("{}: {e}", path.display())))?;
        let config = Self::parse(&text).map_err(|e| error(format!("{}: {e}", path.display())))?;
        if let Some(nats) = &config.sinks.nats {
            if nats.password.is_some() || nats.token.is_some() {
                private_file(path, "it holds sinks.nats.password or token")?;
            }
            for (key, file) in [("creds", &nats.creds), ("tls_key", &nats.tls_key)] {
                if let Some(file) = file {
                    private_file(file, &format!("sinks.nats.{key} is a secret"))
                        .map_err(|e| error(format!("sinks.nats.{key}: {e}")))?;
                }
            }
        }
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| error(e.to_string().trim_end().to_string()))?;
        let spool_max_bytes = match &file.spool_max_bytes {
            Some(v) => parse_size(v).map_err(|e| error(format!("spool_max_bytes: {e}")))?,
            None => 1 << 30,
        };
        let mut sources = Vec::new();
        for (name, table) in &file.sources {
            sources.push(source(name, table)?);
        }
        sources.sort_by_key(|s| SourceKind::named(s.name));
        if sources.is_empty() {
            return Err(error(
                "no source: add at least one [sources.NAME] table (tls, exec, shell, mysql, postgres)",
            ));
        }
        if file.sinks.nats.is_none() && file.sinks.file.is_none() {
            return Err(error("no sink: add [sinks.nats] or [sinks.file] (events would go nowhere)"));
        }
        if let Some(nats) = &file.sinks.nats {
            check_nats(nats)?;
        }
        let host = match file.host {
            Some(h) => h,
            // CLEARTAP_HOST: a pod's own hostname is not its node's.
            None => std::env::var("CLEARTAP_HOST")
                .ok()
                .or_else(hostname)
                .ok_or_else(|| error("host: the hostname cannot be read; set `host`"))?,
        };
        check_subject_token("host", &host)?;
        Ok(AgentConfig {
            host,
            spool_dir: file.spool_dir.unwrap_or_else(|| "/var/lib/cleartap/spool".into()),
            spool_max_bytes,
            sources,
            sinks: file.sinks,
        })
    }
}

/// A file holding secrets must not be readable or writable by other
/// users: refused (exit 2) with the `chmod` that fixes it.
fn private_file(path: &Path, why: &str) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        std::fs::metadata(path).map_err(|e| error(format!("{}: {e}", path.display())))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(error(format!(
            "{}: mode {:o} lets other users read it, and {why}; run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )));
    }
    Ok(())
}

/// What the NATS sink would only find out later, in its own thread:
/// urls it cannot parse, files it cannot read, half an auth pair.
fn check_nats(nats: &NatsSink) -> Result<(), ConfigError> {
    check_subject_token("sinks.nats.subject_prefix", &nats.subject_prefix)?;
    if !(1..=5).contains(&nats.replicas) {
        return Err(error(format!("sinks.nats.replicas: {} (JetStream takes 1 to 5)", nats.replicas)));
    }
    for url in &nats.url {
        let addr = url
            .parse::<async_nats::ServerAddr>()
            .map_err(|e| error(format!("sinks.nats.url: {url:?} is not a NATS url ({e})")))?;
        let loopback = addr.host() == "localhost"
            || addr
                .host()
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if nats.plaintext && !loopback {
            crate::note!(
                "cleartap: warning: sinks.nats.plaintext: events (captured plaintext, TLS secrets) go to {} \
                 unencrypted",
                addr.host()
            );
        }
    }
    let files = [
        ("creds", &nats.creds),
        ("tls_ca", &nats.tls_ca),
        ("tls_cert", &nats.tls_cert),
        ("tls_key", &nats.tls_key),
    ];
    for (key, path) in files {
        if let Some(path) = path {
            std::fs::File::open(path)
                .map_err(|e| error(format!("sinks.nats.{key}: {}: {e}", path.display())))?;
        }
    }
    let pairs = [
        ("user", nats.user.is_some(), "password", nats.password.is_some()),
        ("tls_cert", nats.tls_cert.is_some(), "tls_key", nats.tls_key.is_some()),
    ];
    for (a, has_a, b, has_b) in pairs {
        if has_a != has_b {
            return Err(error(format!("sinks.nats: `{a}` and `{b}` go together")));
        }
    }
    Ok(())
}

/// Host and prefix become parts of NATS subjects: no dots, spaces or
/// wildcards in them.
fn check_subject_token(key: &str, value: &str) -> Result<(), ConfigError> {
    let bad = |c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control();
    if value.is_empty() || value.contains(bad) {
        return Err(error(format!(
            "{key}: {value:?} cannot be part of a NATS subject (no dots, spaces, `*` or `>`)"
        )));
    }
    Ok(())
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().replace('.', "_")).filter(|n| !n.is_empty())
}

/// `[sources.NAME]` -> the subcommand's arguments, parsed by clap.
fn source(name: &str, table: &toml::Table) -> Result<Source, ConfigError> {
    let name = SourceKind::named(name)
        .ok_or_else(|| {
            let known: Vec<_> = SourceKind::ALL.iter().map(|s| s.name()).collect();
            error(format!("sources.{name}: unknown source (known: {})", known.join(", ")))
        })?
        .name();
    let known = options_of(name);
    let mut args = vec!["cleartap".to_string(), name.to_string(), "--format".into(), "json".into()];
    for (key, value) in table {
        let option = key.replace('_', "-");
        let at = format!("sources.{name}.{key}");
        if !known.contains(&option) {
            return Err(error(format!("{at}: unknown key (`{name}` takes: {})", known.join(", "))));
        }
        let mine = arguments(&option, value).map_err(|e| error(format!("{at}: {e}")))?;
        // Each key alone first, so that an error names its key.
        let alone: Vec<String> = args[..4].iter().cloned().chain(mine.iter().cloned()).collect();
        Cli::try_parse_from(&alone).map_err(|e| error(format!("{at}: {}", clap_message(&e))))?;
        args.extend(mine);
    }
    let cli =
        Cli::try_parse_from(&args).map_err(|e| error(format!("sources.{name}: {}", clap_message(&e))))?;
    Ok(Source { name, command: cli.command, table: table.clone() })
}

/// The long options of subcommand `name` a config may set: all but those
/// under the `COMMAND_LINE_ONLY` heading, and clap's own.
fn options_of(name: &str) -> Vec<String> {
    let command = Cli::command();
    let sub = command.find_subcommand(name).expect("every source is a subcommand");
    sub.get_arguments()
        .filter(|a| a.get_help_heading() != Some(COMMAND_LINE_ONLY))
        .filter_map(|a| a.get_long())
        .filter(|long| !["help", "version"].contains(long))
        .map(String::from)
        .collect()
}

/// One key's value as command-line arguments: a string or number is the
/// option's value, `true` the flag itself, an array the option repeated.
fn arguments(option: &str, value: &toml::Value) -> Result<Vec<String>, String> {
    let flag = format!("--{option}");
    match value {
        toml::Value::String(s) => Ok(vec![flag, s.clone()]),
        toml::Value::Integer(n) => Ok(vec![flag, n.to_string()]),
        toml::Value::Boolean(true) => Ok(vec![flag]),
        toml::Value::Boolean(false) => Ok(Vec::new()),
        toml::Value::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    toml::Value::Array(_) | toml::Value::Table(_) | toml::Value::Boolean(_) => {
                        return Err(format!(
                            "expected strings or numbers in the array, found a {}",
                            item.type_str()
                        ))
                    }
                    _ => out.extend(arguments(option, item)?),
                }
            }
            Ok(out)
        }
        other => Err(format!("expected a string, number, boolean or array, found a {}", other.type_str())),
    }
}

/// The first line of clap's message, without its `error: ` prefix.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or("invalid").trim();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
host = "web-1"
spool_dir = "/tmp/spool"
spool_max_bytes = "64MiB"

[sources.tls]
comm = "curl"
library = ["openssl", "go"]
max_connections = 4096

[sources.exec]
[sources.postgres]
uid = 70

[sinks.nats]
url = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]

[sinks.file]
path = "/var/log/cleartap/events.jsonl"
max_bytes = "10MiB"
"#;

    #[test]
    fn secrets_never_print_and_tls_is_the_default() {
        let text = "[sources.exec]\n[sinks.nats]\nurl = \"nats://127.0.0.1:4222\"\nuser = \"u\"\n\
                    password = \"hunter2-pw\"\ntoken = \"tok-s3cret\"\n";
        let c = AgentConfig::parse(text).unwrap();
        let nats = c.sinks.nats.as_ref().unwrap();
        assert!(!nats.plaintext, "TLS unless plaintext is asked for");
        for shown in [format!("{nats:?}"), format!("{c:?}")] {
            assert!(!shown.contains("hunter2-pw") && !shown.contains("tok-s3cret"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }

    #[test]
    fn a_config_with_secrets_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let secret = "[sources.exec]\n[sinks.nats]\nurl = \"nats://127.0.0.1:4222\"\ntoken = \"t\"\n";
        std::fs::write(&path, secret).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("mode 644") && err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        AgentConfig::load(&path).unwrap();
        // Without secrets, a readable config is fine; a readable creds file is not.
        let creds = dir.path().join("nats.creds");
        std::fs::write(&creds, "creds").unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o640)).unwrap();
        let text = format!(
            "[sources.exec]\n[sinks.nats]\nurl = \"nats://127.0.0.1:4222\"\ncreds = \"{}\"\n",
            creds.display()
        );
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(err.starts_with("sinks.nats.creds: ") && err.contains("mode 640"), "{err}");
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
        AgentConfig::load(&path).unwrap();
    }

    #[test]
    fn a_full_config_parses_into_subcommand_arguments() {
        let c = AgentConfig::parse(FULL).unwrap();
        assert_eq!(c.host, "web-1");
        assert_eq!(c.spool_max_bytes, 64 << 20);
        let names: Vec<_> = c.sources.iter().map(|s| s.name).collect();
        assert_eq!(names, ["tls", "exec", "postgres"]);
        let cli::Command::Tls(tls) = &c.sources[0].command else { panic!() };
        assert_eq!(tls.filters.comm.as_deref(), Some("curl"));
        assert_eq!(tls.max_connections, 4096);
        assert_eq!(tls.output.format, crate::output::Format::Json);
        let cli::Command::Postgres(pg) = &c.sources[2].command else { panic!() };
        assert_eq!(pg.filters.uid, Some(70));
        let nats = c.sinks.nats.unwrap();
        assert_eq!(nats.url.len(), 2);
        assert_eq!(
            (nats.stream.as_str(), nats.subject_prefix.as_str(), nats.create_stream),
            ("CLEARTAP", "cleartap", true)
        );
        assert_eq!(c.sinks.file.unwrap().max_bytes, 10 << 20);
    }

    fn message(text: &str) -> String {
        AgentConfig::parse(text).unwrap_err().0
    }

    #[test]
    fn errors_name_the_key() {
        let sink = "\n[sinks.file]\npath = \"/tmp/x\"\n";
        assert!(
            message(&format!("[sources.tls]\ncom = \"x\"{sink}")).starts_with("sources.tls.com: unknown key")
        );
        assert!(message(&format!("[sources.exec]\npid = \"abc\"{sink}"))
            .starts_with("sources.exec.pid: invalid value"));
        // The options under the COMMAND_LINE_ONLY heading.
        for (key, value) in [
            ("format", "\"text\""),
            ("hex", "true"),
            ("keylog", "\"/k\""),
            ("write", "\"/w\""),
            ("force", "true"),
        ] {
            assert!(message(&format!("[sources.tls]\n{key} = {value}{sink}"))
                .starts_with(&format!("sources.tls.{key}: unknown key")));
        }
        assert!(AgentConfig::parse(&format!(
            "[sources.tls]\nmax_connections = 2048\nhold_unchecked = true{sink}"
        ))
        .is_ok());
        assert!(message(&format!("[sources.dns]{sink}")).starts_with("sources.dns: unknown source"));
        assert!(message(&format!("hots = \"a\"\n[sources.exec]{sink}")).contains("unknown field `hots`"));
        assert!(message(&format!("spool_max_bytes = \"1GB\"\n[sources.exec]{sink}")).starts_with(
            "spool_max_bytes: unknown unit \"GB\" in \"1GB\": sizes are in binary units, write G"
        ));
        assert!(message("[sources.exec]\n").starts_with("no sink"));
        assert!(message(&format!("host = \"a.b\"\n[sources.exec]{sink}")).starts_with("host: "));
        assert!(message("[sources.exec]\n[sinks.nats]\nurl = []\n").contains("at least one url"));
        assert!(
            message("[sources.exec]\n[sinks.nats]\nurl = \"nats://a b:x\"\n").starts_with("sinks.nats.url: ")
        );
        let creds =
            "[sources.exec]\n[sinks.nats]\nurl = \"nats://h:4222\"\ncreds = \"/nonexistent/x.creds\"\n";
        assert!(message(creds).starts_with("sinks.nats.creds: /nonexistent/x.creds: "));
        let half = "[sources.exec]\n[sinks.nats]\nurl = \"nats://h:4222\"\nuser = \"u\"\n";
        assert!(message(half).contains("`user` and `password` go together"));
        assert!(message("[sources.exec]\n[sinks.nats]\nurl = \"nats://x\"\nstrem = \"S\"\n")
            .contains("unknown field `strem`"));
    }

    #[test]
    fn sizes_read_as_on_the_command_line() {
        let sink = "[sinks.file]\npath = \"/tmp/x\"\n";
        for &(text, bytes) in cli::SIZE_EXAMPLES {
            let config = |key: &str| format!("{key} = {text:?}\n[sources.exec]\n{sink}");
            let spool = AgentConfig::parse(&config("spool_max_bytes")).map(|c| c.spool_max_bytes).ok();
            assert_eq!(spool, bytes.filter(|b| *b > 0), "spool_max_bytes = {text:?}");
            let file = format!("[sources.exec]\n[sinks.file]\npath = \"/tmp/x\"\nmax_bytes = {text:?}\n");
            let file = AgentConfig::parse(&file).ok().and_then(|c| c.sinks.file).map(|f| f.max_bytes);
            assert_eq!(file, bytes.filter(|b| *b > 0), "max_bytes = {text:?}");
            // A source's ringbuf_size goes to the command line's parser.
            let ring = AgentConfig::parse(&format!("[sources.exec]\nringbuf_size = {text:?}\n{sink}"))
                .map(|c| match &c.sources[0].command {
                    cli::Command::Exec(a) => a.output.ring_bytes(0).into(),
                    _ => unreachable!(),
                })
                .ok();
            assert_eq!(ring, cli::ring_size(text).ok().map(u64::from), "ringbuf_size = {text:?}");
        }
        assert_eq!(parse_size(&toml::Value::Integer(10)), Ok(10));
        assert!(parse_size(&toml::Value::Integer(0)).is_err());
        assert!(parse_size(&toml::Value::Integer(-1)).is_err());
        assert!(parse_size(&toml::Value::Boolean(true)).is_err());
    }
}
