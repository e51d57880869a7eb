//! The `mqfn` binary: parse args, load config, set up logs, run a command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mqfn::cli::{self, Cli, Command};
use mqfn::config::Config;

/// jemalloc instead of the system allocator: mqfn allocates and frees a
/// few small objects per message across threads, where glibc's malloc took
/// a quarter of the instructions per message (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` is a service and logs its life; the other commands print their
    // answer and stay quiet unless something is wrong.
    let level = match cli.command {
        Command::Run { .. } => "info",
        // Dead letters and crashes are what the cases test: the report
        // says what happened.
        Command::Test(_) => "error",
        _ => "warn",
    };
    mqfn::telemetry::init_logs(&cli.log_format, level);
    if let Command::Test(args) = &cli.command {
        return route_tests(cli.config.as_deref(), args);
    }
    if !cli.command.needs_config() {
        return generate(&cli.command);
    }
    // The config comes first: it sets how many threads the runtime has.
    let loaded = Config::locate(cli.config.as_deref()).and_then(|path| {
        let cfg = Config::load(&path)?;
        Ok((path, cfg))
    });
    let result = loaded.map_err(anyhow::Error::from).and_then(|(path, cfg)| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.worker_threads())
            .enable_all()
            .build()
            .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?
            .block_on(run(cli, path, cfg))
    });
    exit_code(result)
}

/// Success, or the error on stderr, one problem per line (config errors
/// list every problem found), and a failure status.
fn exit_code<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("error: {line}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, path: PathBuf, mut cfg: Config) -> anyhow::Result<()> {
    match cli.command {
        Command::Validate => {
            println!(
                "{}: ok ({} broker(s), {} handler(s), {} route(s))",
                path.display(),
                cfg.brokers.len(),
                cfg.handlers.len(),
                cfg.routes.len()
            );
        }
        Command::Run { admin, watch } => {
            if let Some(a) = admin {
                cfg.admin.listen = a;
            }
            mqfn::app::run_reloading(cfg, &path, watch, shutdown_signal()).await?;
        }
        Command::Publish(args) => cli::publish::run(&cfg, &args).await?,
        Command::Invoke(args) => cli::invoke::run(&cfg, &args).await?,
        Command::Call(args) => cli::call::run(&cfg, &args).await?,
        Command::Dlq(args) => cli::dlq::run(&cfg, &args).await?,
        Command::Status(args) => cli::status::run(&cfg, &args).await?,
        Command::Asyncapi => {
            let doc = cli::asyncapi::document(&cfg);
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Command::Completions { .. } | Command::Man { .. } | Command::Schema | Command::Test(_) => {
            unreachable!("run before the config is loaded")
        }
    }
    Ok(())
}

/// `mqfn test`: the config is the one the test file names.
fn route_tests(config: Option<&std::path::Path>, args: &cli::route_test::TestArgs) -> ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| cli::CliError::Failed(format!("cannot start the async runtime: {e}")))
        .and_then(|rt| rt.block_on(cli::route_test::run(config, args)));
    exit_code(result)
}

/// `completions` and `man`, which print what clap knows and read no config.
fn generate(command: &Command) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let result = match command {
        Command::Completions { shell } => {
            cli::generate::completions(*shell, &mut out);
            Ok(())
        }
        Command::Man { dir } => cli::generate::man(dir.as_deref(), &mut out),
        Command::Schema => {
            let doc = mqfn::config::schema::document();
            serde_json::to_writer_pretty(&mut out, &doc)
                .map_err(|e| cli::CliError::Failed(format!("cannot write the schema: {e}")))
                .and_then(|()| {
                    use std::io::Write;
                    writeln!(out).map_err(|e| cli::CliError::io("cannot write the schema", e))
                })
        }
        _ => unreachable!("reads the config"),
    };
    exit_code(result)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
