//! Benchmarks of vdrep; see bench/README.md.
