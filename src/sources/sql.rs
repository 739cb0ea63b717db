//! Database servers: MySQL/MariaDB (`dispatch_command`, matched by its
//! demangled C++ signature) and PostgreSQL (`pgstat_report_activity`,
//! `AbortCurrentTransaction`). See `bpf/sql.bpf.c` for what each hook means.

use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, OpenObject, ProgramMut, UprobeOpts};

use super::attached::FileLinks;
use super::executables::ExecutableAttacher;
use crate::bpf::sql::{SqlSkel, SqlSkelBuilder};
use crate::discover::elf::{Function, Symbols};
use crate::discover::pinned::PinnedFile;
use crate::discover::procs::Executable;
use crate::kernel::{self, Filters};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Mysql,
    Postgres,
}

impl Family {
    /// Executable names of this family's servers.
    pub fn is_server_path(self, path: &str) -> bool {
        let name = path.rsplit('/').next().unwrap_or(path);
        match self {
            Family::Mysql => matches!(name, "mysqld" | "mariadbd"),
            Family::Postgres => matches!(name, "postgres" | "postmaster"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prog {
    MariadbDispatch,
    MysqlDispatch,
    DispatchReturn,
    MysqlError,
    PgActivity,
    PgAbort,
}

/// A probe: program, where, and whether it is a return probe.
type Hook = (Prog, Function, bool);

/// A server executable and the probes it needs.
#[derive(Debug, Clone)]
pub struct SqlBinary {
    /// The executable as opened once: parsed from and attached through it.
    pub file: Rc<PinnedFile>,
    pub path: PathBuf,
    pub display_path: String,
    /// `mariadb`, `mysql` or `postgres`.
    pub server: &'static str,
    hooks: Vec<Hook>,
}

impl SqlBinary {
    pub fn resolve(family: Family, exe: &Executable) -> Result<SqlBinary> {
        let file = Rc::new(exe.open()?);
        let display = exe.display_path.as_str();
        let (server, hooks) = match family {
            Family::Mysql => mysql_hooks(&file, display)?,
            Family::Postgres => postgres_hooks(&file, display)?,
        };
        Ok(SqlBinary { file, path: exe.path.clone(), display_path: display.to_string(), server, hooks })
    }
}

fn mysql_hooks(file: &PinnedFile, path: &str) -> Result<(&'static str, Vec<Hook>)> {
    let dispatch = Symbols::find_demangled(file, "dispatch_command", |d| d.starts_with("dispatch_command("))?;
    let mut hooks = Vec::new();
    let mut server = "";
    for (signature, f) in &dispatch {
        let (prog, name) = if signature.starts_with("dispatch_command(enum_server_command, THD*, char*") {
            (Prog::MariadbDispatch, "mariadb")
        } else if signature.starts_with("dispatch_command(THD*, COM_DATA const*, enum_server_command") {
            (Prog::MysqlDispatch, "mysql")
        } else {
            continue;
        };
        server = name;
        hooks.push((prog, *f, false));
        hooks.push((Prog::DispatchReturn, *f, true));
    }
    if hooks.is_empty() {
        let seen: Vec<_> = dispatch.iter().map(|(d, _)| d.as_str()).collect();
        bail!(
            "{}: no dispatch_command(enum_server_command, THD*, char*, ...) (MariaDB, MySQL 5.6) or \
             dispatch_command(THD*, COM_DATA const*, enum_server_command) (MySQL 5.7/8) in its symbols{}",
            path,
            if seen.is_empty() { String::new() } else { format!(" (found: {})", seen.join("; ")) }
        );
    }
    let errors = Symbols::find_demangled(file, "set_error_status", |d| {
        d.starts_with("Diagnostics_area::set_error_status(")
    })?;
    if errors.is_empty() {
        crate::eprintln_escaped!(
            "cleartap: warning: {}: no Diagnostics_area::set_error_status: failed statements will \
             be reported as successful=null",
            path
        );
    }
    hooks.extend(errors.into_iter().map(|(_, f)| (Prog::MysqlError, f, false)));
    Ok((server, hooks))
}

fn postgres_hooks(file: &PinnedFile, path: &str) -> Result<(&'static str, Vec<Hook>)> {
    let wanted = ["pgstat_report_activity", "AbortCurrentTransaction"];
    let symbols = Symbols::of(file, &wanted)?;
    let missing: Vec<_> = wanted.iter().filter(|w| symbols.get(w).is_none()).collect();
    if !missing.is_empty() {
        bail!("{}: missing {:?} in its symbols: not a PostgreSQL server cleartap can probe", path, missing);
    }
    Ok((
        "postgres",
        vec![
            (Prog::PgActivity, symbols.get(wanted[0]).unwrap(), false),
            (Prog::PgAbort, symbols.get(wanted[1]).unwrap(), false),
        ],
    ))
}

pub struct SqlProbes<'obj> {
    skel: SqlSkel<'obj>,
}

impl<'obj> SqlProbes<'obj> {
    pub fn load(
        storage: &'obj mut MaybeUninit<OpenObject>,
        filters: &Filters,
        ringbuf_bytes: u32,
    ) -> Result<Self> {
        let mut open = crate::open_filtered!(SqlSkelBuilder, storage, filters, "SQL");
        open.maps.events.set_max_entries(ringbuf_bytes).context("sizing the ring buffer")?;
        let cpus = libbpf_rs::num_possible_cpus().context("counting CPUs")? as u32;
        open.maps.query_scratch.set_max_entries(cpus).context("sizing the query scratch space")?;
        let skel = open.load().map_err(kernel::load_failed("the SQL BPF programs"))?;
        Ok(SqlProbes { skel })
    }

    fn program(&self, prog: Prog) -> &ProgramMut<'obj> {
        let p = &self.skel.progs;
        match prog {
            Prog::MariadbDispatch => &p.mariadb_dispatch,
            Prog::MysqlDispatch => &p.mysql_dispatch,
            Prog::DispatchReturn => &p.mysql_dispatch_return,
            Prog::MysqlError => &p.mysql_error,
            Prog::PgActivity => &p.pg_activity,
            Prog::PgAbort => &p.pg_abort,
        }
    }

    pub fn attach(&self, bin: &SqlBinary) -> Result<Vec<Link>> {
        let path = bin.file.proc_path();
        bin.hooks
            .iter()
            .map(|(prog, f, retprobe)| {
                let opts = UprobeOpts { retprobe: *retprobe, ..Default::default() };
                self.program(*prog)
                    .attach_uprobe_with_opts(-1, &path, f.file_offset as usize, opts)
                    .with_context(|| format!("attaching {prog:?} in {}", bin.display_path))
            })
            .collect()
    }

    /// The loaded object (`cleartap check` lists its programs).
    pub fn object(&self) -> &libbpf_rs::Object {
        libbpf_rs::skel::Skel::object(&self.skel)
    }

    pub fn events_map(&self) -> &libbpf_rs::MapMut<'obj> {
        &self.skel.maps.events
    }

    pub fn stats_map(&self) -> &libbpf_rs::MapMut<'obj> {
        &self.skel.maps.stats
    }
}

/// Finds server executables of `family` in use and attaches each file once.
pub fn attacher<'a>(probes: &'a SqlProbes, family: Family) -> ExecutableAttacher<'a, SqlBinary> {
    ExecutableAttacher::new(
        move |path| family.is_server_path(path),
        move |exe, _| {
            let bin = SqlBinary::resolve(family, exe)?;
            let links = probes.attach(&bin)?;
            let (path, display_path) = (bin.path.clone(), bin.display_path.clone());
            Ok((bin, vec![FileLinks { id: exe.id, path, display_path, links }]))
        },
    )
}
