//! `turnout`: run the server (`serve`, the default), apply migrations, or
//! the operator's few other tasks (a role, the name logs give an account,
//! the settings).

use clap::{Parser, Subcommand};
use turnout::app::Application;
use turnout::config::{Overrides, Settings, redact_url};

#[derive(Parser)]
#[command(name = "turnout", version, about = "Real-time event server")]
struct Cli {
    /// A settings file layered over the compiled-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<String>,
    /// Address to listen on [env: TURNOUT_BIND].
    #[arg(long, global = true)]
    bind: Option<String>,
    /// sqlite:… or postgres:… [env: TURNOUT_DATABASE_URL].
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// redis://… for cross-node fan-out [env: TURNOUT_REDIS_URL].
    #[arg(long, global = true)]
    redis_url: Option<String>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the API (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Give an account a role (`attendee`, `organizer` or `admin`): how the
    /// first admin is made. Takes effect at their next login.
    SetRole {
        email: String,
        #[arg(value_enum)]
        role: turnout::auth::Role,
    },
    /// Print the name audit logs give an account (a digest of its email,
    /// keyed by the signing JWT key: run it with the server's settings).
    AccountDigest { email: String },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigCmd,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the effective settings (secrets redacted) and exit non-zero if
    /// a file or a TURNOUT_… variable gives a key no setting has.
    Check,
}

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at start. A background thread returns
/// freed pages to the kernel on time: without it an arena purges only when
/// something allocates from it again, so memory freed as a load ends (event
/// actors passivated, hubs gone) stays resident while the server idles.
/// Objects up to 1 KiB live in slabs of one page (jemalloc's default is
/// the smallest run of pages their size divides, up to seven), so the few
/// long-lived objects a load leaves behind keep fewer partly empty pages.
/// Not up to 4 KiB: the page's tail no object fits grows to 1.5 KiB there,
/// and an idle WebSocket connection's buffers live in those classes
/// (docs/BENCHMARKS.md, "Slabs of one page").
#[unsafe(export_name = "malloc_conf")]
static MALLOC_CONF: &[u8] = b"background_thread:true,slab_sizes:1-1024:1\0";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(&Overrides {
        config_file: cli.config,
        bind: cli.bind,
        database_url: cli.database_url.map(Into::into),
        redis_url: cli.redis_url.map(Into::into),
    })?;
    let command = cli.command.unwrap_or(Cmd::Serve);
    turnout::memory::read_heap_with(turnout::memory::jemalloc_heap);
    // `account-digest` prints one line for scripts: nothing else on stdout,
    // where the logs go.
    let _telemetry = (!matches!(command, Cmd::AccountDigest { .. }))
        .then(|| {
            turnout::telemetry::init(&settings.log_format, &settings.log_level, &settings.traces)
        })
        .transpose()?;
    if !matches!(command, Cmd::Config { .. }) {
        for mistake in &settings.unknown {
            tracing::warn!(%mistake, "ignoring an unknown setting");
        }
    }
    let system = actix_web::rt::System::new();
    match command {
        Cmd::Serve => system.block_on(async {
            let app = Application::build(settings).await?;
            app.run_until_stopped().await
        }),
        Cmd::SetRole { email, role } => system.block_on(async {
            // Logs name an account by a digest of its email, as everywhere:
            // known before anything changes.
            let digests = turnout::app::account_digests(&settings)?;
            let store =
                turnout::app::open_store(&settings)
                    .await?;
            // The same normalisation as at sign-up, or a look-alike spelling
            // would miss the account.
            let account = turnout::auth::Email::parse(&email)
                .map_err(|_| anyhow::anyhow!("{email:?} is not a valid email address"))?;
            if !store.set_role(account.as_str(), role).await? {
                anyhow::bail!("no account has the email {email:?}");
            }
            let role = role.as_str();
            let account = digests.logged(&account);
            tracing::info!(target: "turnout::audit", %account, role, "role changed from the command line");
            println!("{email} is now {role}; it takes effect at their next login");
            Ok(())
        }),
        Cmd::AccountDigest { email } => {
            let account = turnout::auth::Email::parse(&email)
                .map_err(|_| anyhow::anyhow!("{email:?} is not a valid email address"))?;
            println!("{}", turnout::app::account_digests(&settings)?.logged(&account));
            Ok(())
        }
        Cmd::Config {
            action: ConfigCmd::Check,
        } => check_config(&settings),
        Cmd::Migrate => system.block_on(async {
            turnout::app::open_store(&settings)
                .await?;
            tracing::info!(database = %redact_url(&settings.database_url), "migrations applied");
            Ok(())
        }),
    }
}

/// `turnout config check`: the effective settings, secrets redacted, and
/// every unknown key — an error (exit status 1) when it was surely meant as
/// a setting, a warning for a variable that may be someone else's.
fn check_config(settings: &Settings) -> anyhow::Result<()> {
    println!("{settings:#?}");
    // The settings' Debug hides every secret whole: say where they point.
    println!("database: {}", redact_url(&settings.database_url));
    if let Some(redis) = &settings.redis_url {
        println!("redis: {}", redact_url(redis));
    }
    for unknown in &settings.unknown {
        let kind = if unknown.is_surely_a_mistake() {
            "error"
        } else {
            "warning"
        };
        eprintln!("{kind}: {unknown}");
    }
    if settings.unknown.iter().any(|u| u.is_surely_a_mistake()) {
        std::process::exit(1);
    }
    eprintln!("the configuration is valid");
    Ok(())
}

#[cfg(test)]
mod tests {
    use tikv_jemalloc_ctl::raw;

    /// jemalloc runs with the options above: its background threads on,
    /// every size class up to 1 KiB in slabs of one page, the larger ones
    /// in jemalloc's own.
    #[test]
    fn jemalloc_runs_with_the_servers_options() {
        let background: bool = unsafe { raw::read(b"opt.background_thread\0") }.unwrap();
        assert!(background);
        let page: usize = unsafe { raw::read(b"arenas.page\0") }.unwrap();
        let bins: u32 = unsafe { raw::read(b"arenas.nbins\0") }.unwrap();
        let mut sizes = Vec::new();
        for bin in 0..bins {
            let read = |what: &str| -> usize {
                let name = format!("arenas.bin.{bin}.{what}\0");
                unsafe { raw::read(name.as_bytes()) }.unwrap()
            };
            let (size, slab) = (read("size"), read("slab_size"));
            if size <= 1024 {
                assert_eq!(slab, page, "bin {bin} of {size} bytes");
                sizes.push(size);
            } else if size == 2560 {
                assert_eq!(slab, 5 * page, "jemalloc's own slab for {size} bytes");
            }
        }
        // 80 bytes, say, would take five pages by default.
        assert!(sizes.contains(&80), "size classes up to 1 KiB: {sizes:?}");
    }
}
