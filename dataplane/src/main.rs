//! The `vdrep` binary: all roles and operator commands as subcommands.

fn main() {
    std::process::exit(vdrep::cli::main());
}
