//! The `chatapp` command: parse the CLI, load config, build the app, run.

use argh::FromArgs;
use chatapp::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// chatapp: a self-hosted real-time chat backend (REST + WebSocket over PostgreSQL).
#[derive(FromArgs)]
struct Cli {
    /// print the version and exit
    #[argh(switch)]
    version: bool,
    #[argh(subcommand)]
    command: Option<Command>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Serve(ServeArgs),
    Migrate(MigrateArgs),
    Healthcheck(HealthcheckArgs),
}

/// Exit 0 if the server configured here answers GET /livez, else 1 (for a
/// container's HEALTHCHECK: no curl needed).
#[derive(FromArgs)]
#[argh(subcommand, name = "healthcheck")]
struct HealthcheckArgs {
    /// path to the YAML config file (default: $CONFIG_PATH, then ./config.yaml)
    #[argh(option)]
    config: Option<PathBuf>,
}

/// Apply pending migrations, then serve HTTP and WebSocket until SIGINT/SIGTERM.
#[derive(FromArgs)]
#[argh(subcommand, name = "serve")]
struct ServeArgs {
    /// path to the YAML config file (default: $CONFIG_PATH, then ./config.yaml)
    #[argh(option)]
    config: Option<PathBuf>,
}

/// Apply pending migrations and exit.
#[derive(FromArgs)]
#[argh(subcommand, name = "migrate")]
struct MigrateArgs {
    /// path to the YAML config file (default: $CONFIG_PATH, then ./config.yaml)
    #[argh(option)]
    config: Option<PathBuf>,
    /// list applied and pending migrations instead of applying them
    #[argh(switch)]
    status: bool,
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if cli.version {
        println!("chatapp {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        eprintln!("chatapp: missing command; run `chatapp --help` for usage");
        return ExitCode::from(2);
    };
    let config_path = match &command {
        Command::Serve(a) => a.config.clone(),
        Command::Migrate(a) => a.config.clone(),
        Command::Healthcheck(a) => a.config.clone(),
    };
    let config = match Config::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chatapp: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = chatapp::logging::init(&config.log.level, config.log.format == "json") {
        eprintln!("chatapp: cannot start logging: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chatapp: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Healthcheck(_) = command {
        return match runtime.block_on(chatapp::ops::probe_livez(&config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chatapp: unhealthy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let result = runtime.block_on(async move {
        match command {
            Command::Serve(_) => serve(config).await,
            Command::Healthcheck(_) => unreachable!("answered above"),
            Command::Migrate(a) if a.status => migrate_status(&config).await,
            Command::Migrate(_) => chatapp::run_migrations(&config).await.map(|applied| {
                println!("applied {} migration(s)", applied.len());
            }),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e = chatapp::error::chain(&e);
            log::error!("{e}");
            eprintln!("chatapp: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Like `argh::from_env`, but a bad flag also prints the (sub)command's usage.
fn parse_cli() -> Result<Cli, ExitCode> {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let early = match Cli::from_args(&["chatapp"], &args) {
        Ok(cli) => return Ok(cli),
        Err(early) => early,
    };
    if early.status.is_ok() {
        print!("{}", early.output);
        return Err(ExitCode::SUCCESS);
    }
    eprint!("{}", early.output);
    let mut help: Vec<&str> = args
        .iter()
        .copied()
        .take(1)
        .filter(|a| matches!(*a, "serve" | "migrate" | "healthcheck"))
        .collect();
    help.push("--help");
    if let Err(usage) = Cli::from_args(&["chatapp"], &help) {
        eprint!("\n{}", usage.output);
    }
    Err(ExitCode::from(2))
}

async fn serve(config: Config) -> Result<(), chatapp::StartError> {
    let app = chatapp::build(config).await?;
    log::info!("{}", app.describe());
    app.run_until(shutdown_signal()).await;
    Ok(())
}

async fn migrate_status(config: &Config) -> Result<(), chatapp::StartError> {
    let timeout = std::time::Duration::from_secs(config.database.connect_timeout_secs);
    let mut client = chatapp::db::connect(&config.database.url, timeout)
        .await
        .map_err(|e| chatapp::StartError::Database(e.into()))?;
    let list = chatapp::migrate::status(&mut client)
        .await
        .map_err(chatapp::StartError::Migrate)?;
    for m in list {
        match m.applied_at {
            Some(at) => println!("applied  {}  {at}", m.name),
            None => println!("pending  {}", m.name),
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    log::info!("shutdown signal received; finishing in-flight requests");
}
