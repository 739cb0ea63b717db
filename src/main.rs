//! cleartap: what programs really send and receive, in plaintext, with eBPF.
//! The binary is a thin shell over the library (`src/lib.rs`).

use clap::Parser;
use cleartap::{agent, cli, output, run};

fn main() {
    // First thing: from here on a signal means a clean stop.
    if let Err(e) = run::stop_on_signals() {
        cleartap::note!("cleartap: error: {}", output::escape::block(&format!("{e:#}")));
        std::process::exit(1);
    }
    run::raise_fd_limit();
    let cli = cli::Cli::parse();
    // Before any thread starts (capabilities are per thread): only -w and
    // `check` (which loads the classifier) need CAP_NET_ADMIN.
    let net_admin = match &cli.command {
        cli::Command::Tls(args) => args.write.is_some(),
        cli::Command::Check => true,
        _ => false,
    };
    cleartap::kernel::drop_unneeded_capabilities(net_admin);
    let result = match &cli.command {
        cli::Command::Tls(args) => run::tls::run(args),
        cli::Command::Shell(args)
        | cli::Command::Exec(args)
        | cli::Command::Mysql(args)
        | cli::Command::Postgres(args) => run::on_stdout(&cli.command, &args.output),
        cli::Command::Check => run::check::run(),
        cli::Command::Agent(args) => agent::run(args),
        cli::Command::Tail(args) => agent::tail::run(args),
        cli::Command::Read(args) => run::read::run(args),
    };
    if let Err(e) = result {
        // A chain may name a path or quote a server: nothing in it drives
        // the terminal (its lines kept: a TOML error shows the bad line).
        cleartap::note!("cleartap: error: {}", output::escape::block(&format!("{e:#}")));
        // A configuration that cannot be used: 2, as for bad arguments.
        let config = e.chain().any(|c| c.is::<agent::config::ConfigError>());
        std::process::exit(if config { 2 } else { 1 });
    }
}
