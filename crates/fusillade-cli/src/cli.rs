//! Command-line arguments. Every flag also reads a `FUSILLADE_…` environment variable and a key
//! of the optional TOML file given with `--config`; a flag beats the environment, which beats
//! the file, which beats the default.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run very large batches of LLM requests against OpenAI-compatible servers.
#[derive(Debug, Parser)]
#[command(name = "fusillade", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send every request of a JSONL batch file and write the results beside it. Resumable:
    /// run the same command again after a crash or Ctrl-C to continue.
    Run(RunArgs),
    /// Serve the OpenAI-compatible Files and Batches API, with the daemon in the same process.
    Serve(ServeArgs),
    /// Run the daemon alone: send the requests of batches stored in the database.
    Worker(WorkerArgs),
    /// Create or upgrade the database schema.
    Migrate(MigrateArgs),
    /// Serve an OpenAI-compatible fake upstream, for demos, tests and load tests.
    MockUpstream(MockArgs),
}

/// Options shared by the commands that send requests.
#[derive(Debug, Args, Clone)]
pub struct EngineArgs {
    /// Base URL of the OpenAI-compatible upstream, with or without `/v1`; `mock` starts an
    /// in-process fake upstream (for a demo).
    #[arg(long, env = "FUSILLADE_UPSTREAM")]
    pub upstream: Option<String>,
    /// API key sent as `Authorization: Bearer …`. Also read from OPENAI_API_KEY.
    #[arg(long, env = "FUSILLADE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests in flight at once, per model [default: 64].
    #[arg(long, env = "FUSILLADE_CONCURRENCY")]
    pub concurrency: Option<u32>,
    /// Attempts per request, the first included [default: 8].
    #[arg(long, env = "FUSILLADE_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// Seconds to wait for response headers [default: 600].
    #[arg(long, env = "FUSILLADE_REQUEST_TIMEOUT")]
    pub request_timeout: Option<u64>,
    /// Seconds without a heartbeat after which a daemon counts as dead and its requests are
    /// taken over by others [default: 10].
    #[arg(long, env = "FUSILLADE_STALE_AFTER")]
    pub stale_after: Option<u64>,
    /// TOML file with defaults for these options and per-model settings.
    #[arg(long, env = "FUSILLADE_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `fusillade run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The batch input file (OpenAI Batch API JSONL).
    pub input: PathBuf,
    /// Where successful results go [default: INPUT.output.jsonl].
    #[arg(long, env = "FUSILLADE_OUTPUT")]
    pub output: Option<PathBuf>,
    /// Where failed requests go [default: INPUT.errors.jsonl].
    #[arg(long, env = "FUSILLADE_ERRORS")]
    pub errors: Option<PathBuf>,
    /// Database keeping the run's progress [default: INPUT.fusillade.db beside the input].
    #[arg(long, env = "FUSILLADE_DATABASE")]
    pub database: Option<String>,
    /// Give up on requests not finished within this window, e.g. `24h`, `90m` [default: none].
    #[arg(long, env = "FUSILLADE_COMPLETION_WINDOW")]
    pub completion_window: Option<String>,
    /// Discard the progress of an earlier run of a changed input file and start over.
    #[arg(long)]
    pub restart: bool,
    /// Only print the summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Engine options.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `fusillade serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Without API keys only a loopback address is accepted, unless
    /// `--allow-open` is given.
    #[arg(long, env = "FUSILLADE_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: std::net::SocketAddr,
    /// Database URL: `sqlite://PATH`, a path, or `postgres://…` [default: fusillade.db].
    #[arg(long, env = "FUSILLADE_DATABASE")]
    pub database: Option<String>,
    /// API keys as `tenant:key,tenant:key` (prefer the environment variable, which `ps` does
    /// not show). Added to the `[[api_keys]]` of the config file.
    #[arg(long, env = "FUSILLADE_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// Serve without API keys on a non-loopback address: anyone who can connect acts as the
    /// tenant `default`.
    #[arg(long, env = "FUSILLADE_ALLOW_OPEN")]
    pub allow_open: bool,
    /// Engine options.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `fusillade worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Database URL: `sqlite://PATH`, a path, or `postgres://…`.
    #[arg(long, env = "FUSILLADE_DATABASE", default_value = "fusillade.db")]
    pub database: String,
    /// Do not apply database migrations at start (run `fusillade migrate` instead).
    #[arg(long, env = "FUSILLADE_SKIP_MIGRATIONS")]
    pub skip_migrations: bool,
    /// Engine options.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `fusillade migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Database URL: `sqlite://PATH`, a path, or `postgres://…`.
    #[arg(long, env = "FUSILLADE_DATABASE", default_value = "fusillade.db")]
    pub database: String,
}

/// `fusillade mock-upstream`.
#[derive(Debug, Args)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, env = "FUSILLADE_MOCK_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Added latency per request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Fraction of requests answered 500.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Fraction of requests answered 429 with Retry-After.
    #[arg(long, default_value_t = 0.0)]
    pub rate_limit_rate: f64,
    /// Retry-After seconds on 429s.
    #[arg(long, default_value_t = 1)]
    pub retry_after_secs: u64,
}
