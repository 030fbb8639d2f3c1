//! The `meshlens` binary: parse, set up logging, run, map the outcome to an exit code
//! (0 success, 1 runtime failure, 2 usage or configuration error; a closed stdout is success).

use clap::Parser;

fn main() {
    let cli = meshlens::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHLENS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.default_log_filter())),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let builder = match cli.worker_threads() {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match { builder }.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshlens: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let mut out = std::io::stdout();
    let result = runtime.block_on(meshlens::run(cli, &mut out));
    if let Err(e) = result {
        let broken_pipe = matches!(&e, meshlens::CliError::Runtime(err) if err.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)));
        if broken_pipe {
            std::process::exit(0);
        }
        eprintln!("meshlens: {e}");
        std::process::exit(e.exit_code());
    }
}
