//! The `redis-server` that deferred-redis's tests start (one per test, on a Unix socket in a
//! temporary directory): installed from Debian's packages when it is missing, before `test`
//! runs. Those tests fail, on purpose, without it, so this fails loudly when it cannot.

use crate::cmd::{self, command, Result};

const INSTALL_HINT: &str = "\
deferred-redis's tests need `redis-server` on PATH (a real server, started per test), and
installing it failed. Install it by hand, then rerun:

    apt-get install -y redis-server      # Debian / Ubuntu (as root, or with sudo)
";

/// Whether `redis-server` runs here.
fn present() -> bool {
    cmd::read(&mut command("redis-server", ["--version"])).is_ok()
}

/// Makes sure `redis-server` is installed: nothing to do when it is; otherwise
/// `apt-get install -y redis-server` (after `apt-get update` if the first try fails), through
/// `sudo -n` when not root.
pub fn ensure_server() -> Result {
    if present() {
        return Ok(());
    }
    println!("redis-server is not on PATH: installing it with apt-get");
    let root = cmd::read(&mut command("id", ["-u"])).is_ok_and(|uid| uid.trim() == "0");
    let apt = |args: &[&str]| {
        let mut cmd = if root {
            command("apt-get", args)
        } else {
            let mut cmd = command("sudo", ["-n", "apt-get"]);
            cmd.args(args);
            cmd
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd::run(&mut cmd)
    };
    let install = ["install", "-y", "redis-server"];
    if apt(&install).is_err() {
        apt(&["update"]).map_err(|e| format!("{e}\n\n{INSTALL_HINT}"))?;
        apt(&install).map_err(|e| format!("{e}\n\n{INSTALL_HINT}"))?;
    }
    if present() {
        Ok(())
    } else {
        Err(format!(
            "apt-get installed redis-server, but `redis-server --version` still fails\n\n{INSTALL_HINT}"
        ))
    }
}
