//! `coordctl`: a command-line client for coord, on every backend (ZooKeeper, etcd, Consul,
//! in-memory). See `coordctl --help` and this crate's README.md.
#![warn(missing_docs, unreachable_pub)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod args;
mod commands;
mod connection;
mod context;
mod output;

use std::time::Duration;

use clap::Parser;

use crate::args::{Cli, Cmd};
use crate::context::Ctx;
use crate::output::{note, report, Outcome, OTHER, USAGE};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if args::is_help(&e) => e.exit(),
        Err(e) => {
            eprintln!("error: {}", args::clap_line(&e));
            std::process::exit(USAGE);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(OTHER);
        }
    };
    let code = rt.block_on(real_main(cli));
    rt.shutdown_timeout(Duration::from_millis(500));
    std::process::exit(code);
}

/// Runs the command line, reports its failure if any, and returns the exit code.
async fn real_main(cli: Cli) -> i32 {
    let ctx = connection::settings(&cli);
    match connect_and_run(&ctx, cli).await {
        Ok(code) => code,
        Err(f) => {
            report(&ctx, &f);
            f.code
        }
    }
}

/// Connects to the URL's backend, runs the command on it, and closes the connection.
async fn connect_and_run(ctx: &Ctx, cli: Cli) -> Outcome {
    connection::check_timeout(ctx)?;
    if let Cmd::Backends = cli.command {
        // Needs no backend: it says which ones a URL can name.
        return commands::backends(ctx);
    }
    let url = connection::url(&cli)?;
    let client = connection::connect(ctx, url).await?;
    if client.capabilities().backend == "mem" && !matches!(cli.command, Cmd::Shell { .. }) {
        note(
            ctx,
            "note: mem:// lives only inside this process and starts empty (try several \
             commands in one process with `coordctl --url mem:// shell`)",
        );
    }
    let outcome = match cli.command {
        Cmd::Shell { echo } => commands::shell::shell(ctx, &client, echo).await,
        cmd => commands::run(ctx, &client, cmd).await,
    };
    connection::close(&client).await;
    outcome
}
