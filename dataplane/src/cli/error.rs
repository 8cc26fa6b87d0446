//! Errors at the binary's edge and their exit codes.
//!
//! The exit code follows the one taxonomy ([`crate::error::Classify`]): a typed error that
//! enters `anyhow` here goes in through [`IntoAnyhow`], which keeps its class in a
//! [`Tagged`] carrier; [`CliError`] reads the class back from the cause chain
//! ([`crate::error::recovery_of`]). No specific error type is downcast, so a new error enum
//! needs only its `Classify` impl to exit 75 when it is transient.
//!
//! No class can be lost on the way: every function of the command line returns
//! [`CliResult`], so a `?` converts through `From<E: IntoAnyhow> for CliError` (a typed error
//! with no `IntoAnyhow` does not compile), and [`Context`] adds context after tagging.
//! `anyhow`'s own `?` conversion and `anyhow::Context` would drop the class; the command line
//! names neither (`dataplane/tests/layers.rs` fails on a function returning
//! `anyhow::Result`, on `anyhow::Context` and on `anyhow::Error::new`/`from` outside this
//! file).

use std::error::Error as StdError;
use std::fmt::Display;

use crate::error::{recovery_of, Classify, Recovery, Tagged};

/// What every function of the command line returns. Its `?` goes through
/// `From<E: IntoAnyhow> for CliError`, which keeps a typed error's class; `anyhow`'s own
/// `?` would drop it, so no function here returns `anyhow::Result` (checked by
/// `dataplane/tests/layers.rs`, `the_command_line_never_converts_into_anyhow_directly`).
pub type CliResult<T> = Result<T, CliError>;

/// An error at the binary's edge, with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// The one-line message.
    pub error: anyhow::Error,
    /// Whether retrying later could help (exit 75 instead of 1).
    pub recovery: Recovery,
    /// A usage error (exit 2).
    pub usage: bool,
}

impl CliError {
    /// A usage error (exit 2): the command line or the configuration is wrong.
    pub fn usage(error: impl Into<CliError>) -> Self {
        CliError {
            recovery: Recovery::Permanent,
            usage: true,
            ..error.into()
        }
    }

    /// The exit code: 2 for usage, 75 for a transient error, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.usage {
            super::EXIT_USAGE
        } else if self.recovery.is_transient() {
            super::EXIT_TEMPFAIL
        } else {
            super::EXIT_FATAL
        }
    }
}

impl Display for CliError {
    /// The error as `anyhow` writes it (`{:#}`: with its causes).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if f.alternate() {
            write!(f, "{:#}", self.error)
        } else {
            write!(f, "{}", self.error)
        }
    }
}

/// How an error enters the command line's `anyhow` chain. Classified errors are wrapped in
/// [`Tagged`] so their class survives; `anyhow` errors pass as they are; foreign errors
/// (which carry no class) are permanent.
pub trait IntoAnyhow {
    /// The error as an `anyhow` error that still knows its class.
    fn into_anyhow(self) -> anyhow::Error;
}

impl<E: Classify + StdError + Send + Sync + 'static> IntoAnyhow for E {
    fn into_anyhow(self) -> anyhow::Error {
        anyhow::Error::new(Tagged::new(self))
    }
}

impl IntoAnyhow for anyhow::Error {
    fn into_anyhow(self) -> anyhow::Error {
        self
    }
}

/// Foreign errors the command line meets: no class, hence permanent.
macro_rules! unclassified {
    ($($t:ty),* $(,)?) => {
        $(impl IntoAnyhow for $t {
            fn into_anyhow(self) -> anyhow::Error {
                anyhow::Error::new(self)
            }
        })*
    };
}

unclassified!(
    std::io::Error,
    serde_json::Error,
    std::fmt::Error,
    std::num::ParseIntError,
    std::net::AddrParseError,
    std::num::ParseFloatError,
    toml::de::Error,
    axum::http::Error,
    ureq::Error,
);

impl<E: IntoAnyhow> From<E> for CliError {
    fn from(e: E) -> Self {
        let error = e.into_anyhow();
        let recovery = recovery_of(error.chain());
        CliError {
            error,
            recovery,
            usage: false,
        }
    }
}

/// `anyhow::Context` for the command line: the same two methods, giving a [`CliError`]
/// whose class is the error's own (a classified error is tagged through [`IntoAnyhow`]
/// before the context goes in front of it).
pub trait Context<T> {
    /// Adds `context` in front of the error.
    fn context<C: Display + Send + Sync + 'static>(self, context: C) -> CliResult<T>;
    /// Adds the context `f` returns in front of the error.
    fn with_context<C: Display + Send + Sync + 'static, F: FnOnce() -> C>(
        self,
        f: F,
    ) -> CliResult<T>;
}

impl<T, E: IntoAnyhow> Context<T> for Result<T, E> {
    fn context<C: Display + Send + Sync + 'static>(self, context: C) -> CliResult<T> {
        self.map_err(|e| CliError::from(e.into_anyhow().context(context)))
    }
    fn with_context<C: Display + Send + Sync + 'static, F: FnOnce() -> C>(
        self,
        f: F,
    ) -> CliResult<T> {
        self.map_err(|e| CliError::from(e.into_anyhow().context(f())))
    }
}

/// Context on a command-line error keeps its class and whether it is a usage error.
impl<T> Context<T> for CliResult<T> {
    fn context<C: Display + Send + Sync + 'static>(self, context: C) -> CliResult<T> {
        self.map_err(|e| CliError {
            error: e.error.context(context),
            ..e
        })
    }
    fn with_context<C: Display + Send + Sync + 'static, F: FnOnce() -> C>(
        self,
        f: F,
    ) -> CliResult<T> {
        self.map_err(|e| CliError {
            error: e.error.context(f()),
            ..e
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context<C: Display + Send + Sync + 'static>(self, context: C) -> CliResult<T> {
        Ok(anyhow::Context::context(self, context)?)
    }
    fn with_context<C: Display + Send + Sync + 'static, F: FnOnce() -> C>(
        self,
        f: F,
    ) -> CliResult<T> {
        Ok(anyhow::Context::with_context(self, f)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sender::SendError;

    fn transient_send_error() -> SendError {
        SendError::Connection {
            peer: "rx:4433".into(),
            source: quinn::ConnectionError::TimedOut,
        }
    }

    #[test]
    fn a_transient_send_error_wrapped_in_context_exits_75() {
        let wrapped: CliResult<()> =
            Err(transient_send_error()).context("replicating vm1 to rx:4433");
        let e = wrapped.unwrap_err();
        assert_eq!(e.exit_code(), super::super::EXIT_TEMPFAIL);
        // The message reads as before: the context, then the error itself.
        assert_eq!(
            super::super::one_line(&e.error),
            "replicating vm1 to rx:4433: receiver rx:4433: timed out"
        );
    }

    #[test]
    fn a_transient_send_error_converted_directly_exits_75() {
        assert_eq!(CliError::from(transient_send_error()).exit_code(), 75);
    }

    #[test]
    fn permanent_and_foreign_errors_exit_1_and_usage_exits_2() {
        let tls = crate::tls::TlsError::PeerCertificate {
            problem: "expired".into(),
        };
        let wrapped: CliResult<()> = Err(tls).context("loading --tls");
        assert_eq!(wrapped.unwrap_err().exit_code(), 1);
        let io = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(
            CliError::from(io).exit_code(),
            1,
            "a foreign error has no class"
        );
        assert_eq!(CliError::from(anyhow::anyhow!("plain")).exit_code(), 1);
        assert_eq!(CliError::usage(anyhow::anyhow!("bad flag")).exit_code(), 2);
    }

    #[test]
    fn a_typed_error_passed_up_by_a_helper_keeps_its_class() {
        fn helper() -> CliResult<()> {
            let locked: Result<(), _> = Err(crate::sink::SinkError::Locked {
                path: "/store/vm1/d.vhd".into(),
            });
            locked?;
            Ok(())
        }
        assert_eq!(helper().unwrap_err().exit_code(), 75);
    }

    #[test]
    fn a_transient_sink_error_under_two_contexts_exits_75() {
        let sink = crate::sink::SinkError::Locked {
            path: "/store/vm1/d.vhd".into(),
        };
        let e = Err::<(), _>(sink)
            .context("opening the replica")
            .context("receiving vm1")
            .unwrap_err();
        assert_eq!(e.exit_code(), 75);
        let line = super::super::one_line(&e.error);
        assert!(
            line.starts_with("receiving vm1: opening the replica: /store/vm1/d.vhd: "),
            "{line}"
        );
    }

    #[test]
    fn context_on_a_usage_error_keeps_it_a_usage_error() {
        let e = Err::<(), _>(CliError::usage(anyhow::anyhow!("--tls DIR is required")))
            .context("receive")
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn a_foreign_error_under_context_is_permanent_and_a_classified_one_transient() {
        let io: CliResult<()> =
            Err(std::io::Error::from(std::io::ErrorKind::TimedOut)).context("reading x");
        assert_eq!(io.unwrap_err().exit_code(), 1);
        let none: CliResult<()> = None.context("no value");
        assert_eq!(none.unwrap_err().exit_code(), 1);
    }
}
