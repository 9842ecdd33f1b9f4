use clap::Parser as _;
use connectors_controller::config::{Args, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    if let Err(e) = args.check() {
        tracing::error!("invalid arguments: {e}");
        anyhow::bail!(e);
    }
    if let Err(e) = connectors_controller::run::run(args).await {
        tracing::error!("{e}");
        return Err(e.into());
    }
    Ok(())
}
