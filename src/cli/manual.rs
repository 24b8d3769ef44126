//! `lmx completions SHELL` and `lmx man [SUBCOMMAND]`: generated from the same clap
//! definitions that parse the command line, so they can never disagree with it.

use super::out::tell;
use super::{Cli, EXIT_FAIL};
use clap::{Args, CommandFactory};
use std::io::Write;

#[derive(Args, Debug)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for. Install, e.g.: bash: `lmx completions bash >
    /// ~/.local/share/bash-completion/completions/lmx`; zsh: `lmx completions zsh >
    /// ~/.zfunc/_lmx` (with `fpath+=~/.zfunc`); fish: `lmx completions fish >
    /// ~/.config/fish/completions/lmx.fish`
    shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub(crate) struct ManArgs {
    /// A subcommand's own page (`lmx man run` is lmx-run(1)) [default: lmx(1)]
    subcommand: Option<String>,
}

pub(crate) fn completions(a: CompletionsArgs) -> i32 {
    let mut buf = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "lmx", &mut buf);
    write_out(&buf)
}

pub(crate) fn man(a: ManArgs) -> i32 {
    let mut cmd = Cli::command();
    cmd.build();
    let page = match a.subcommand.as_deref() {
        None => cmd,
        Some(name) => match cmd.find_subcommand(name) {
            Some(sub) => {
                let title = format!("lmx-{}", sub.get_name());
                sub.clone().name(title)
            }
            None => {
                tell!("lmx man: no subcommand {name:?} (see `lmx --help`)");
                return 2;
            }
        },
    };
    let mut buf = Vec::new();
    if let Err(e) = clap_mangen::Man::new(page).render(&mut buf) {
        tell!("lmx man: {e}");
        return EXIT_FAIL;
    }
    write_out(&buf)
}

/// All of `buf` to stdout; a reader that left early is not an error.
fn write_out(buf: &[u8]) -> i32 {
    let mut o = std::io::stdout().lock();
    match o.write_all(buf).and_then(|()| o.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            tell!("lmx: writing to stdout: {e}");
            EXIT_FAIL
        }
    }
}
