//! `vdrep completions SHELL` and `vdrep man DIR`: shell completions and man pages generated
//! from the command line's own definitions, so they cannot drift from the options the binary
//! accepts. `ops/package.sh` runs both to fill the Debian package.

use super::CliResult;
use std::path::{Path, PathBuf};

use super::Context;

use super::CliError;

#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  vdrep completions bash > /etc/bash_completion.d/vdrep")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Folder to write `vdrep.1` and one `vdrep-COMMAND.1` per command into (created if
    /// missing).
    dir: PathBuf,
}

/// Prints the completion script for `a.shell` to stdout.
pub fn completions(a: CompletionsArgs, mut cmd: clap::Command) -> Result<(), CliError> {
    let name = cmd.get_name().to_string();
    clap_complete::generate(a.shell, &mut cmd, name, &mut std::io::stdout());
    Ok(())
}

/// Writes the man pages (section 1) of the command and each subcommand into `a.dir`.
pub fn man(a: ManArgs, cmd: clap::Command) -> Result<(), CliError> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("{}: create", a.dir.display()))?;
    let written = write_pages(cmd, &a.dir)?;
    for f in written {
        println!("wrote {}", f.display());
    }
    Ok(())
}

/// One page per command, named as `man` finds them (`vdrep-send.1` for `vdrep send`);
/// hidden commands get none.
fn write_pages(cmd: clap::Command, dir: &Path) -> CliResult<Vec<PathBuf>> {
    let mut cmd = cmd;
    cmd.build();
    let mut out = Vec::new();
    let mut stack = vec![cmd];
    while let Some(c) = stack.pop() {
        let path = dir.join(format!(
            "{}.1",
            c.get_display_name().unwrap_or(c.get_name())
        ));
        let mut buf = Vec::new();
        clap_mangen::Man::new(c.clone())
            .render(&mut buf)
            .with_context(|| format!("{}: render", path.display()))?;
        std::fs::write(&path, buf).with_context(|| format!("{}: write", path.display()))?;
        out.push(path);
        stack.extend(
            c.get_subcommands()
                .filter(|s| !s.is_hide_set() && s.get_name() != "help")
                .cloned(),
        );
    }
    out.sort();
    Ok(out)
}
