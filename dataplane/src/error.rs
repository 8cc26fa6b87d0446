//! The one error taxonomy: every error enum of vdrep says whether its failure is transient or
//! permanent through [`Classify`], and the three places that act on it — the retry loop
//! (`retry`), health (`health`) and the exit code (`cli`) — ask only this trait.
//!
//! This module is the bottom layer of the crate: it imports nothing from it, so every module
//! may implement the trait without an import cycle.
//!
//! Errors that cross into `anyhow` at the binary's edge keep their class inside a [`Tagged`]
//! carrier, so the command line finds the exit code by walking the cause chain for the one
//! carrier type, never by downcasting a list of specific error types (a list that once missed
//! the sender's and TLS errors, so a wrapped transient failure exited 1 instead of 75).

use std::error::Error as StdError;
use std::fmt;

pub use vdrep_proto::Recovery;

/// Implemented by every error enum (and by the wire's error class): whether retrying later
/// can help. Defined here rather than in `vdrep-proto` so that the command line may convert
/// any classified error and any foreign error (`std::io::Error`, …) through one blanket impl
/// each: that needs a trait local to this crate.
pub trait Classify {
    /// Transient (retry on the schedule) or permanent (Critical, operator needed).
    fn recovery(&self) -> Recovery;

    /// Shorthand for `self.recovery().is_transient()`.
    fn is_transient(&self) -> bool {
        self.recovery().is_transient()
    }
}

impl Classify for vdrep_proto::wire::ErrorClass {
    fn recovery(&self) -> Recovery {
        (*self).recovery()
    }
}

impl Classify for vdrep_proto::FormatError {
    /// Bytes that do not decode stay undecodable.
    fn recovery(&self) -> Recovery {
        Recovery::Permanent
    }
}

impl Classify for vdrep_proto::guid::GuidParseError {
    /// A malformed GUID stays malformed.
    fn recovery(&self) -> Recovery {
        Recovery::Permanent
    }
}

impl Classify for vdrep_store::sink::SinkError {
    /// The store's own classification ([`vdrep_store::sink::SinkError::recovery`]): the
    /// store crate sits below this one and cannot see the trait.
    fn recovery(&self) -> Recovery {
        vdrep_store::sink::SinkError::recovery(self)
    }
}

/// An error erased to a trait object that kept its [`Recovery`]: what a classified error
/// becomes when it enters `anyhow`. Display and `source` are the inner error's, so messages
/// read exactly as before.
pub struct Tagged {
    recovery: Recovery,
    inner: Box<dyn StdError + Send + Sync + 'static>,
}

impl Tagged {
    /// Wraps a classified error, keeping its class.
    pub fn new<E: Classify + StdError + Send + Sync + 'static>(e: E) -> Self {
        Tagged {
            recovery: e.recovery(),
            inner: Box::new(e),
        }
    }

    /// The class of the wrapped error.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }
}

impl fmt::Debug for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl fmt::Display for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl StdError for Tagged {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner.source()
    }
}

impl Classify for Tagged {
    fn recovery(&self) -> Recovery {
        self.recovery
    }
}

/// The class of the outermost [`Tagged`] error in a cause chain; an error that carries no
/// class (a foreign error, a plain message) is permanent: nothing says waiting helps.
pub fn recovery_of<'a>(chain: impl IntoIterator<Item = &'a (dyn StdError + 'static)>) -> Recovery {
    chain
        .into_iter()
        .find_map(|cause| cause.downcast_ref::<Tagged>().map(Tagged::recovery))
        .unwrap_or(Recovery::Permanent)
}
