//! cleartap: what programs really send and receive, in plaintext, with eBPF.

mod bpf;
mod capture;
mod cli;
mod context;
mod discover;
mod events;
mod kernel;
mod output;
mod sources;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let result = match &cli.command {
        cli::Command::Tls(args) => capture::run_tls(args),
    };
    if let Err(e) = result {
        eprintln!("cleartap: error: {e:#}");
        std::process::exit(1);
    }
}
