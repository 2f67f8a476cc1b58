//! The `fusillade` binary: parses arguments, sets up logging and runs one subcommand. All logic
//! lives in the `fusillade` library and the subcommand modules.

mod cli;
mod commands;
mod engine;
mod lockfile;
mod progress;
mod run;
mod serve;
mod signals;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FUSILLADE_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the async runtime");
    let code = runtime.block_on(async {
        let result = match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Serve(args) => serve::serve(args).await,
            Command::Worker(args) => commands::worker(args).await,
            Command::Migrate(args) => commands::migrate(args).await,
            Command::MockUpstream(args) => commands::mock_upstream(args).await,
        };
        result.unwrap_or_else(|e| {
            eprintln!("error: {e:#}");
            1
        })
    });
    std::process::exit(code);
}
