//! Asking an operator before a command destroys data (`unprotect`).
//!
//! On a terminal the command shows what it will remove and waits for `y`. Without a terminal
//! nobody can answer, so instead of waiting forever or guessing, the command refuses with a
//! usage error (exit 2) that names `--yes` — the Azure CLI's choice for `az ... delete` run
//! non-interactively — and a script states its intent on its command line.

use std::io::{BufRead, IsTerminal, Write};

use super::CliError;
use anyhow::anyhow;

/// The operator's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Go ahead (`--yes`, or `y`/`yes` typed at the prompt).
    Yes,
    /// Declined at the prompt (anything else, or end of input).
    No,
}

/// Confirms `what` (lines describing the removal, shown before the question) unless `yes`.
/// `action` names the command for the error a script without `--yes` gets.
pub fn confirm(yes: bool, action: &str, what: &[String]) -> Result<Answer, CliError> {
    if yes {
        return Ok(Answer::Yes);
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CliError::usage(anyhow!(
            "{action}: stdin is not a terminal, so vdrep cannot ask for confirmation: \
             add --yes to remove without asking"
        )));
    }
    let mut err = std::io::stderr().lock();
    // The prompt goes to stderr: stdout stays the command's report.
    let _ = writeln!(err, "{action}:");
    for l in what {
        let _ = writeln!(err, "  {l}");
    }
    let _ = write!(err, "Remove them? [y/N] ");
    let _ = err.flush();
    drop(err);
    let mut line = String::new();
    if stdin.lock().read_line(&mut line).is_err() {
        return Ok(Answer::No);
    }
    Ok(parse_answer(&line))
}

/// `y` or `yes` in any case, surrounding blanks ignored; everything else (an empty line
/// included: the default is the safe one) is no.
fn parse_answer(line: &str) -> Answer {
    match line.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Answer::Yes,
        _ => Answer::No,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_y_or_yes_confirms_and_the_default_is_no() {
        for s in ["y\n", "Y\n", " yes \n", "YES"] {
            assert_eq!(parse_answer(s), Answer::Yes, "{s:?}");
        }
        for s in ["\n", "", "n\n", "no\n", "yess\n", "y y\n", "ja\n"] {
            assert_eq!(parse_answer(s), Answer::No, "{s:?}");
        }
    }
}
