//! `mqfn completions` and `mqfn man`: shell completions and man pages,
//! generated from the clap definitions so that they never drift from the
//! command line.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use super::{Cli, CliError};

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "mqfn", out);
}

/// Writes `mqfn(1)` to `out`, or, with `dir`, one page per command there
/// (`mqfn.1`, `mqfn-run.1`, `mqfn-dlq-list.1`, ...).
pub fn man(dir: Option<&Path>, out: &mut dyn Write) -> Result<(), CliError> {
    let cmd = Cli::command();
    match dir {
        None => clap_mangen::Man::new(cmd)
            .render(out)
            .map_err(|e| CliError::io("cannot write the man page", e)),
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                CliError::io(format!("cannot create the directory {}", dir.display()), e)
            })?;
            clap_mangen::generate_to(cmd, dir).map_err(|e| {
                CliError::io(
                    format!("cannot write the man pages into {}", dir.display()),
                    e,
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(shell: Shell) -> String {
        let mut out = Vec::new();
        completions(shell, &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn completions_name_every_command_and_option() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = text(shell);
            for word in [
                "run", "validate", "publish", "invoke", "call", "dlq", "redrive", "config",
            ] {
                assert!(script.contains(word), "{shell}: no {word:?}");
            }
        }
    }

    #[test]
    fn man_pages_cover_every_command() {
        let mut page = Vec::new();
        man(None, &mut page).expect("rendered");
        let page = String::from_utf8(page).expect("utf-8");
        assert!(page.contains(".TH mqfn 1"), "{page}");
        assert!(page.contains("validate"));

        let dir = tempfile::tempdir().expect("tempdir");
        man(Some(&dir.path().join("man1")), &mut Vec::new()).expect("written");
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("man1"))
            .expect("listed")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for want in ["mqfn.1", "mqfn-run.1", "mqfn-dlq.1", "mqfn-completions.1"] {
            assert!(names.iter().any(|n| n == want), "no {want} in {names:?}");
        }
    }
}
