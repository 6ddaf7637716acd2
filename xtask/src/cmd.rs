//! Running commands: printed first, run from the repository root, in a cleaned environment.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

/// Tasks fail with a message meant for the person reading the terminal.
pub type Result<T = ()> = std::result::Result<T, String>;

/// The repository root (xtask's manifest sits one level below it).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
}

/// A `cargo` command; see [`command`].
pub fn cargo<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> Command {
    command("cargo", args)
}

/// A command that runs from the repository root without the build settings this process
/// inherited.
///
/// `cargo run` hands its child `CARGO_PKG_*`, `CARGO_MANIFEST_DIR` and friends, and the caller
/// may have `RUSTFLAGS` or a `RUSTC_WRAPPER` exported for some other project. Passed on, they
/// would make nested builds differ from CI's and throw away the build cache whenever they change,
/// so they are removed; each task sets the flags it means deliberately. What is kept says where
/// things live or how to reach the network and the terminal, and does not change what is built.
pub fn command<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(program: &str, args: I) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(root());
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if is_build_setting(key) {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn is_build_setting(key: &str) -> bool {
    const KEEP: &[&str] = &["CARGO_HOME", "CARGO_TARGET_DIR"];
    const KEEP_PREFIXES: &[&str] = &[
        "CARGO_TERM_",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
    ];
    let inherited = key.starts_with("CARGO")
        || key.starts_with("RUSTC")
        || matches!(key, "RUSTFLAGS" | "RUSTDOCFLAGS" | "MIRIFLAGS");
    inherited && !KEEP.contains(&key) && !KEEP_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Prints `cmd` as a shell line, runs it, and fails if it does not exit successfully.
pub fn run(cmd: &mut Command) -> Result {
    let shown = display(cmd);
    println!("$ {shown}");
    let status = cmd
        .status()
        .map_err(|e| format!("could not start `{shown}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{shown}` failed ({status})"))
    }
}

/// Like [`run`], but returns what the command wrote to stdout.
pub fn read(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    println!("$ {shown}");
    let output = cmd
        .output()
        .map_err(|e| format!("could not start `{shown}`: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("`{shown}` failed ({}):\n{stderr}", output.status));
    }
    String::from_utf8(output.stdout).map_err(|_| format!("`{shown}` printed non-UTF-8 output"))
}

/// The command as one copy-pasteable shell line: the variables we set, then the program and
/// arguments. Removed variables are left out; listing them would drown the line.
fn display(cmd: &Command) -> String {
    let vars = cmd
        .get_envs()
        .filter_map(|(key, value)| Some(format!("{}={}", key.to_string_lossy(), quote(value?))));
    let words = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote);
    vars.chain(words).collect::<Vec<_>>().join(" ")
}

/// Single-quotes a word when the shell would otherwise split or expand it.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_set_variables_and_quotes() {
        let mut cmd = cargo(["test", "--", "a b"]);
        cmd.env("RUSTFLAGS", "--cfg loom -C debug-assertions");
        assert_eq!(
            display(&cmd),
            "RUSTFLAGS='--cfg loom -C debug-assertions' cargo test -- 'a b'"
        );
    }

    #[test]
    fn cleans_build_settings_only() {
        assert!(is_build_setting("CARGO_PKG_NAME"));
        assert!(is_build_setting("CARGO_ENCODED_RUSTFLAGS"));
        assert!(is_build_setting("RUSTC_WRAPPER"));
        assert!(is_build_setting("MIRIFLAGS"));
        assert!(!is_build_setting("CARGO_HOME"));
        assert!(!is_build_setting("CARGO_TARGET_DIR"));
        assert!(!is_build_setting("CARGO_TERM_COLOR"));
        assert!(!is_build_setting("RUSTUP_HOME"));
        assert!(!is_build_setting("LOOM_MAX_PREEMPTIONS"));
    }
}
