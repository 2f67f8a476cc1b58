//! `fusillade run INPUT.jsonl`: validate and store the input, run the daemon until every line
//! reached a final state, and write the output and error files. Progress lives in a SQLite
//! database beside the input, so running the same command again resumes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, bail};
use fusillade::input::InputLimits;
use fusillade::model::{Batch, BatchId};
use fusillade::output::{ResultFile, write_results};
use fusillade::storage::{BatchCreate, BatchList, Scope, Storage};
use fusillade::{Daemon, storage};
use tokio_util::sync::CancellationToken;

use crate::cli::RunArgs;
use crate::engine::{self, FileConfig};
use crate::lockfile;
use crate::progress::Progress;
use crate::signals;

/// Tenant that owns everything `run` creates.
const OWNER: &str = "local";
/// Batch metadata key holding the input path, to find the batch again on resume.
const INPUT_KEY: &str = "fusillade_run_input";

/// Where `run` reads and writes.
struct Paths {
    input: PathBuf,
    output: PathBuf,
    errors: PathBuf,
    database: String,
    lock: PathBuf,
}

fn paths(args: &RunArgs, file: &FileConfig) -> anyhow::Result<Paths> {
    let input = std::fs::canonicalize(&args.input)
        .with_context(|| format!("cannot read input file {}", args.input.display()))?;
    let stem = input.with_extension("");
    let beside = |suffix: &str| PathBuf::from(format!("{}.{suffix}", stem.display()));
    let database = args
        .database
        .clone()
        .or_else(|| file.database.clone())
        .unwrap_or_else(|| beside("fusillade.db").display().to_string());
    // On PostgreSQL the lock still keeps two `run`s of one input apart.
    let lock = lockfile::sqlite_lock_path(&database).unwrap_or_else(|| beside("fusillade.lock"));
    Ok(Paths {
        output: args
            .output
            .clone()
            .unwrap_or_else(|| beside("output.jsonl")),
        errors: args
            .errors
            .clone()
            .unwrap_or_else(|| beside("errors.jsonl")),
        input,
        database,
        lock,
    })
}

/// Runs the command; returns the process exit code.
pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let file = FileConfig::load(args.engine.config.as_deref())?;
    let paths = paths(&args, &file)?;
    let _lock = lockfile::hold(&paths.lock)?;
    let storage = storage::open(&paths.database)
        .await
        .with_context(|| format!("cannot open database {}", paths.database))?;
    let window = args
        .completion_window
        .clone()
        .or(file.completion_window.clone());
    let batch = find_or_create_batch(storage.as_ref(), &paths, &args, window).await?;
    let started = Instant::now();
    let done_before = batch.counts.finished();
    let stopped_by_signal = if batch.status.is_final() {
        false
    } else {
        let engine = engine::resolve(&args.engine, &file).await?;
        // Alone on its SQLite file (the lock says so), `run` may rescue every other daemon's
        // leases at once; on a shared PostgreSQL database other replicas may be alive.
        let exclusive = !storage::is_postgres(&paths.database);
        drive(storage.clone(), engine, &batch, args.quiet, exclusive).await?
    };
    let batch = storage.batch_get(&Scope::All, &batch.id).await?;
    let (outputs, errors) = export(storage.as_ref(), &batch.id, &paths).await?;
    crate::progress::summary(
        &batch,
        started.elapsed(),
        done_before,
        &paths.output,
        outputs,
        &paths.errors,
        errors,
    );
    if stopped_by_signal && !batch.status.is_final() {
        eprintln!("Stopped. Run the same command again to resume.");
    }
    Ok(0)
}

async fn find_or_create_batch(
    storage: &dyn Storage,
    paths: &Paths,
    args: &RunArgs,
    window: Option<String>,
) -> anyhow::Result<Batch> {
    let input_text = paths.input.display().to_string();
    if let Some(batch) = find_batch(storage, &input_text).await? {
        let stored = storage.file_get(&Scope::All, &batch.input_file_id).await?;
        let current = hash_file(&paths.input).await?;
        if stored.content_hash.as_deref() == Some(current.as_str()) && !args.restart {
            if !args.quiet {
                eprintln!(
                    "Resuming: {} of {} requests already finished.",
                    batch.counts.finished(),
                    batch.counts.total
                );
            }
            return Ok(batch);
        }
        if !args.restart {
            bail!(
                "{} changed since its run started (the progress in {} belongs to the old content). \
                 Pass --restart to discard that progress and start over, or --database to keep it apart.",
                paths.input.display(),
                paths.database
            );
        }
        storage
            .batch_cancel(&Scope::All, &batch.id, chrono::Utc::now())
            .await?;
    }
    create_batch(storage, paths, args.quiet, window, input_text).await
}

async fn find_batch(storage: &dyn Storage, input: &str) -> anyhow::Result<Option<Batch>> {
    let page = storage
        .batch_list(BatchList {
            scope: Scope::All,
            after: None,
            limit: 100,
            search: Some(input.to_string()),
        })
        .await?;
    Ok(page.items.into_iter().find(|b| {
        b.metadata
            .as_ref()
            .and_then(|m| m.get(INPUT_KEY))
            .and_then(|v| v.as_str())
            == Some(input)
            && b.status != fusillade::model::BatchStatus::Cancelled
    }))
}

async fn create_batch(
    storage: &dyn Storage,
    paths: &Paths,
    quiet: bool,
    window: Option<String>,
    input_text: String,
) -> anyhow::Result<Batch> {
    let now = chrono::Utc::now();
    let expires_at = match &window {
        Some(w) => Some(
            now + fusillade::model::parse_completion_window(w).with_context(|| {
                format!("invalid completion window {w:?}: use e.g. 24h, 90m, 2d")
            })?,
        ),
        None => None,
    };
    let reader = tokio::fs::File::open(&paths.input)
        .await
        .with_context(|| format!("cannot open {}", paths.input.display()))?;
    let name = paths
        .input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let file = fusillade::ingest::upload(
        storage,
        tokio::io::BufReader::new(reader),
        InputLimits::default(),
        OWNER,
        name.as_deref().unwrap_or("input.jsonl"),
        now,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{}: {e}", paths.input.display()))?;
    if !quiet {
        eprintln!(
            "Validated {} requests from {}.",
            file.line_count,
            paths.input.display()
        );
    }
    let mut metadata = serde_json::Map::new();
    metadata.insert(INPUT_KEY.into(), input_text.into());
    let batch = storage
        .batch_create(BatchCreate {
            owner: OWNER.into(),
            input_file_id: file.id,
            endpoint: None,
            completion_window: window,
            expires_at,
            metadata: Some(metadata),
            now,
        })
        .await?;
    Ok(batch)
}

async fn hash_file(path: &Path) -> anyhow::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let mut hasher = blake3::Hasher::new();
        let file = std::fs::File::open(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        hasher.update_reader(file)?;
        Ok(hasher.finalize().to_hex().to_string())
    })
    .await?
}

/// Runs the daemon until the batch is final or a signal arrives. Returns whether a signal
/// stopped it.
async fn drive(
    storage: Arc<dyn Storage>,
    engine: engine::Engine,
    batch: &Batch,
    quiet: bool,
    exclusive: bool,
) -> anyhow::Result<bool> {
    let mut config = engine.config;
    config.exclusive = exclusive;
    let daemon = Daemon::new(storage.clone(), config, engine.upstreams)?;
    let stats = daemon.stats();
    let token = CancellationToken::new();
    let mut daemon_task = tokio::spawn(daemon.run(token.clone()));
    let mut progress = Progress::new(batch, quiet);
    let signal = signals::shutdown_signal();
    tokio::pin!(signal);
    let mut by_signal = false;
    let outcome = loop {
        tokio::select! {
            _ = &mut signal => {
                by_signal = true;
                progress.note("Stopping: finishing in-flight requests (Ctrl-C again quits at once)...");
                break None;
            }
            result = &mut daemon_task => break Some(result),
            _ = tokio::time::sleep(progress.interval()) => {
                let current = storage.batch_get(&Scope::All, &batch.id).await?;
                progress.update(&current);
                if current.status.is_final() {
                    break None;
                }
            }
        }
    };
    progress.finish();
    token.cancel();
    let result = match outcome {
        Some(result) => result,
        None => daemon_task.await,
    };
    result.context("the daemon task panicked")??;
    let commits = stats.commits.load(Ordering::Relaxed);
    let finished = stats.finished.load(Ordering::Relaxed);
    if !quiet && finished > 0 {
        eprintln!(
            "Engine: {commits} database commits for {finished} outcomes ({:.4} commits per request).",
            commits as f64 / finished as f64
        );
    }
    if let Some(mock) = engine.mock {
        mock.shutdown().await;
    }
    Ok(by_signal)
}

/// Writes both result files atomically (temporary file, then rename). Returns line counts.
async fn export(
    storage: &dyn Storage,
    batch: &BatchId,
    paths: &Paths,
) -> anyhow::Result<(u64, u64)> {
    let outputs = export_one(storage, batch, ResultFile::Output, &paths.output).await?;
    let errors = export_one(storage, batch, ResultFile::Errors, &paths.errors).await?;
    Ok((outputs, errors))
}

async fn export_one(
    storage: &dyn Storage,
    batch: &BatchId,
    which: ResultFile,
    path: &Path,
) -> anyhow::Result<u64> {
    let tmp = path.with_extension("jsonl.tmp");
    let file = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let lines = write_results(storage, &Scope::All, batch, which, &mut out)
        .await
        .with_context(|| format!("cannot write {}", path.display()))?;
    out.into_inner().sync_all().await?;
    tokio::fs::rename(&tmp, path)
        .await
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(lines)
}
