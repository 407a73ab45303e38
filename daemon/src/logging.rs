//! Logging: always to stderr, and to daily-rotated files when a log directory is set.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{Builder, Rotation};
use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};
use wsmux_config::LogSettings;

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The filter directive is invalid.
    #[error("invalid log level `{level}`: {reason}")]
    Filter {
        /// The directive.
        level: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The log directory or file could not be opened.
    #[error("cannot write logs to {dir}: {reason}")]
    File {
        /// The directory.
        dir: String,
        /// Why.
        reason: String,
    },
    /// A global subscriber was already installed.
    #[error("logging was already initialised")]
    AlreadyInitialised,
}

/// Targets whose lines below `info` carry secrets or raw peer text: the WebSocket library
/// logs the handshake request (with `?token=` and every header), each frame and message, and
/// close reasons verbatim at `debug` and `trace`. No filter directive can open them up.
const CAPPED_TARGETS: &[&str] = &["tungstenite", "tokio_tungstenite"];

/// Whether a line of `target` at `level` may be logged at all.
fn allowed(target: &str, level: &tracing::Level) -> bool {
    let capped = CAPPED_TARGETS.iter().any(|t| {
        target
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    });
    !capped || *level <= tracing::Level::INFO
}

/// Colours only for a person at a terminal: never into journald, a pipe or a file, and never
/// when `NO_COLOR` is set (<https://no-color.org>).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `settings.level`.
///
/// Keep the returned guard alive until the process exits: dropping it flushes the file
/// writer.
pub fn init(settings: &LogSettings) -> Result<Option<WorkerGuard>, LogError> {
    let level = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| settings.level.clone());
    let filter = || {
        EnvFilter::builder()
            .parse(&level)
            .map_err(|e| LogError::Filter {
                level: level.clone(),
                reason: e.to_string(),
            })
    };
    let stderr = if settings.json {
        fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter()?)
            .boxed()
    } else {
        fmt::layer()
            .with_ansi(colour_on_stderr())
            .with_writer(std::io::stderr)
            .with_filter(filter()?)
            .boxed()
    };
    let (file, guard) = match &settings.dir {
        Some(dir) => {
            let mut builder = Builder::new()
                .rotation(Rotation::DAILY)
                .filename_prefix("wsmuxd")
                .filename_suffix("log");
            if settings.max_files > 0 {
                // Older files are deleted at each rotation.
                builder = builder.max_log_files(settings.max_files);
            }
            let appender = builder.build(dir).map_err(|e| LogError::File {
                dir: dir.display().to_string(),
                reason: e.to_string(),
            })?;
            // Lossy under extreme load rather than blocking the daemon on a slow disk.
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let layer = if settings.json {
                fmt::layer()
                    .json()
                    .with_ansi(false)
                    .with_writer(writer)
                    .with_filter(filter()?)
                    .boxed()
            } else {
                fmt::layer()
                    .with_ansi(false)
                    .with_writer(writer)
                    .with_filter(filter()?)
                    .boxed()
            };
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    // The most verbose level any directive opens. It also becomes the `log` crate's maximum
    // (through the `LogTracer` that `try_init` installs), so that the WebSocket library's
    // per-frame `trace!` calls end at one comparison instead of walking every filter.
    let most_verbose = filter()?.max_level_hint().unwrap_or(LevelFilter::TRACE);
    tracing_subscriber::registry()
        .with(
            filter_fn(|meta| allowed(meta.target(), meta.level()))
                .with_max_level_hint(most_verbose),
        )
        .with(stderr)
        .with(file)
        .try_init()
        .map_err(|_| LogError::AlreadyInitialised)?;
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn the_websocket_library_is_capped_at_info_whatever_the_filter() {
        for target in [
            "tungstenite",
            "tungstenite::handshake::client",
            "tokio_tungstenite",
        ] {
            assert!(!allowed(target, &Level::TRACE), "{target}");
            assert!(!allowed(target, &Level::DEBUG), "{target}");
            assert!(allowed(target, &Level::INFO), "{target}");
            assert!(allowed(target, &Level::WARN), "{target}");
        }
        assert!(allowed("wsmuxd::upstream", &Level::TRACE));
        assert!(allowed("tungstenite_like_but_other", &Level::TRACE));
    }

    /// The only test of this binary that installs the global subscriber.
    #[test]
    fn the_log_crates_maximum_follows_the_filter() {
        let settings = LogSettings {
            level: "warn,wsmuxd::upstream=info".into(),
            dir: None,
            json: false,
            max_files: 0,
        };
        if std::env::var_os("RUST_LOG").is_some() {
            return; // it would override the level under test
        }
        let _guard = init(&settings).expect("logging starts");
        // `log::trace!` in the WebSocket library is now one comparison that fails.
        assert_eq!(log::max_level(), log::LevelFilter::Info);
    }
}
