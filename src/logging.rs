//! Logging for every subcommand: `tracing` to stderr, as text or JSON lines.

/// The filter when neither MASKSERVE_LOG nor RUST_LOG is set. ONNX Runtime's own INFO
/// messages (hundreds per session build) are kept out of production logs.
const DEFAULT_FILTER: &str = "info,ort=warn";

/// Installs the subscriber; the filter comes from MASKSERVE_LOG, then RUST_LOG.
pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MASKSERVE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
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
}
