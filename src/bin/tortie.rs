//! `tortie`: the operator and the command-line tool.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = tortie::cli::Cli::parse();
    match cli.run().await {
        Ok(code) => code,
        Err(e) if e.is::<tortie::cli::ReaderGone>() => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tortie: {}", tortie::cli::error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
