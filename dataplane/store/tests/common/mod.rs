//! Helpers shared by the store tests: the disk model and the backends the conformance
//! suite runs against. Each test binary uses a part of them.
#![allow(dead_code)]

/// One `#[test]` per case and backend: `local::case`, `azure::case`, `fault::case` (the
/// test file imports `Local`, `Azure` and `Fault` from [`backends`]).
#[allow(unused_macros)]
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(#[test] fn $case() { super::$case(&super::Local::new()); })*
        }
        mod azure {
            $(#[test] fn $case() { super::$case(&super::Azure::start()); })*
        }
        mod fault {
            $(#[test] fn $case() { super::$case(&super::Fault::new()); })*
        }
    };
}

pub mod backends;
pub mod model;

/// Azurite for the tests of the Azure sink: the same helper the end-to-end tests use (one
/// file, compiled into both crates), which fails with the install hint when Azurite is
/// missing.
#[path = "../../../../tests/src/azurite.rs"]
pub mod azurite;
