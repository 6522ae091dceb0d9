//! Logging for every subcommand: `tracing` to stderr, as text or JSON lines.

/// The filter when none is configured. ONNX Runtime's own INFO messages (hundreds per
/// session build) are kept out of production logs.
const DEFAULT_FILTER: &str = "info,ort=warn";

/// Installs the subscriber; `filter` is `--log` / MASKSERVE_LOG, then RUST_LOG (an invalid one
/// falls back to the default and says so).
pub fn init(json: bool, filter: Option<&str>) {
    let requested = filter;
    let parsed = requested.map(tracing_subscriber::EnvFilter::try_new);
    let invalid = matches!(parsed, Some(Err(_)));
    let filter = match parsed {
        Some(Ok(f)) => f,
        _ => tracing_subscriber::EnvFilter::new(DEFAULT_FILTER),
    };
    // Colour only on a terminal: escape codes make CloudWatch and kubectl logs unreadable.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // try_init: a test harness may already have installed a subscriber; keep that one.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
    if invalid {
        tracing::warn!("invalid log filter {requested:?}; using {DEFAULT_FILTER:?}");
    }
}
