//! Errors at the binary's edge and their exit codes.
//!
//! The exit code follows the one taxonomy ([`crate::error::Classify`]): a typed error that
//! enters `anyhow` here goes in through [`IntoAnyhow`], which keeps its class in a
//! [`Tagged`] carrier; [`CliError`] reads the class back from the cause chain
//! ([`crate::error::recovery_of`]). No specific error type is downcast, so a new error enum
//! needs only its `Classify` impl to exit 75 when it is transient.

use std::error::Error as StdError;
use std::fmt::Display;

use crate::error::{recovery_of, Classify, Recovery, Tagged};

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
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        CliError {
            error: error.into(),
            recovery: Recovery::Permanent,
            usage: true,
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

/// The class of an error already in `anyhow` (for job records).
pub fn recovery(error: &anyhow::Error) -> Recovery {
    recovery_of(error.chain())
}

/// `?` into `anyhow` inside the command line's helpers (functions returning
/// `anyhow::Result`): `anyhow`'s own conversion would drop a typed error's class, so such a
/// `?` goes through [`IntoAnyhow`] with `.classed()?`.
pub trait Classed<T> {
    /// The result with its error in `anyhow`, class kept.
    fn classed(self) -> anyhow::Result<T>;
}

impl<T, E: IntoAnyhow> Classed<T> for Result<T, E> {
    fn classed(self) -> anyhow::Result<T> {
        self.map_err(IntoAnyhow::into_anyhow)
    }
}

/// `anyhow::Context` for the command line: the same two methods, but a classified error
/// keeps its class under the added context (through [`IntoAnyhow`]).
pub trait Context<T> {
    /// Adds `context` in front of the error.
    fn context<C: Display + Send + Sync + 'static>(self, context: C) -> anyhow::Result<T>;
    /// Adds the context `f` returns in front of the error.
    fn with_context<C: Display + Send + Sync + 'static, F: FnOnce() -> C>(
        self,
        f: F,
    ) -> anyhow::Result<T>;
}

impl<T, E: IntoAnyhow> Context<T> for Result<T, E> {
    fn context<C: Display + Send + Sync + 'static>(self, context: C) -> anyhow::Result<T> {
        self.map_err(|e| e.into_anyhow().context(context))
    }
    fn with_context<C: Display + Send + Sync + 'static, F: FnOnce() -> C>(
        self,
        f: F,
    ) -> anyhow::Result<T> {
        self.map_err(|e| e.into_anyhow().context(f()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context<C: Display + Send + Sync + 'static>(self, context: C) -> anyhow::Result<T> {
        anyhow::Context::context(self, context)
    }
    fn with_context<C: Display + Send + Sync + 'static, F: FnOnce() -> C>(
        self,
        f: F,
    ) -> anyhow::Result<T> {
        anyhow::Context::with_context(self, f)
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
        let wrapped: anyhow::Result<()> =
            Err(transient_send_error()).context("replicating vm1 to rx:4433");
        let e = CliError::from(wrapped.unwrap_err());
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
        let wrapped: anyhow::Result<()> = Err(tls).context("loading --tls");
        assert_eq!(CliError::from(wrapped.unwrap_err()).exit_code(), 1);
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
        fn helper() -> anyhow::Result<()> {
            let locked: Result<(), _> = Err(crate::sink::SinkError::Locked {
                path: "/store/vm1/d.vhd".into(),
            });
            locked.classed()?;
            Ok(())
        }
        assert_eq!(CliError::from(helper().unwrap_err()).exit_code(), 75);
    }

    #[test]
    fn a_transient_sink_error_under_two_contexts_exits_75() {
        let sink = crate::sink::SinkError::Locked {
            path: "/store/vm1/d.vhd".into(),
        };
        let e = Err::<(), _>(sink)
            .context("opening the replica")
            .map_err(|e| e.context("receiving vm1"))
            .unwrap_err();
        assert_eq!(CliError::from(e).exit_code(), 75);
    }
}
