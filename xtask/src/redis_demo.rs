//! `cargo xtask redis-demo`: the deferred-redis README's two-process example, whole. Installs
//! `redis-server` if it is missing (see `redis.rs`), starts one on a Unix socket in a
//! temporary directory (no TCP port, persistence off), runs two processes of
//! `crates/deferred-redis/examples/two_processes.rs` against it, drives them line by line
//! (both load one cold key at once; one invalidates it; the other's L1 loses it), prints
//! what they say, and stops the server.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use deferred_test_support::redis::RedisServer;

use crate::cmd::{self, cargo, Result};

/// The server and the two processes, killed (and the server's directory removed) however
/// the demo ends: the processes first, then (as a field, after `drop`) the server.
struct Demo {
    processes: Vec<Process>,
    _server: RedisServer,
}

struct Process {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for p in &mut self.processes {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

impl Process {
    /// Sends `command` and returns the process's one-line answer.
    fn ask(&mut self, command: &str) -> Result<String> {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("could not write to process {}: {e}", self.name))?;
        self.line()
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err(format!("process {} exited early", self.name)),
            Ok(_) => Ok(line.trim_end().to_owned()),
            Err(e) => Err(format!("could not read process {}: {e}", self.name)),
        }
    }
}

/// `loads_here=N` in an answer to `load`.
fn loads_in(answer: &str) -> Option<u64> {
    let rest = answer.split("loads_here=").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

pub fn run() -> Result {
    crate::redis::ensure_server()?;
    cmd::run(&mut cargo([
        "build",
        "-p",
        "deferred-redis",
        "--example",
        "two_processes",
    ]))?;

    // The shared launcher: Unix socket only, `--port 0`, persistence off, PING within 5 s.
    let mut server = RedisServer::in_temp_dir("deferred-redis-demo").map_err(|e| e.to_string())?;
    let (dir, socket) = (server.dir().to_owned(), server.socket().to_owned());
    println!(
        "$ redis-server --port 0 --unixsocket {} (in {})",
        socket.display(),
        dir.display()
    );
    server.spawn().map_err(|e| e.to_string())?;
    let url = server.url();
    let mut demo = Demo {
        processes: Vec::new(),
        _server: server,
    };
    let prefix = format!("demo-{}:", std::process::id());
    for name in ["a", "b"] {
        let mut cmd = cargo([
            "run",
            "-q",
            "-p",
            "deferred-redis",
            "--example",
            "two_processes",
        ]);
        cmd.env("REDIS_URL", &url)
            .env("DEMO_NAME", name)
            .env("DEMO_PREFIX", &prefix)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("could not start process {name}: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("no pipes to the example".into());
        };
        demo.processes.push(Process {
            name,
            child,
            stdin,
            stdout: BufReader::new(stdout),
        });
    }
    for p in &mut demo.processes {
        println!("{}", p.line()?);
    }

    println!("\n1. both processes read the cold key `greeting` at once (a 50 ms loader each):");
    for p in &mut demo.processes {
        writeln!(p.stdin, "load")
            .and_then(|()| p.stdin.flush())
            .map_err(|e| format!("could not write to process {}: {e}", p.name))?;
    }
    let mut loads = 0;
    for p in &mut demo.processes {
        let answer = p.line()?;
        loads += loads_in(&answer).unwrap_or(0);
        println!("   {answer}");
    }
    println!("   => loader runs across both processes: {loads}");

    println!("\n2. a invalidates `greeting`; b's L1 copy goes through the backplane:");
    let [a, b] = demo.processes.as_mut_slice() else {
        return Err("two processes expected".into());
    };
    println!("   {}", a.ask("invalidate")?);
    println!("   {}", b.ask("wait-gone")?);

    println!("\n3. counters:");
    for p in &mut demo.processes {
        println!("   {}", p.ask("stats")?);
    }
    for p in &mut demo.processes {
        let _ = writeln!(p.stdin, "quit").and_then(|()| p.stdin.flush());
    }
    for p in &mut demo.processes {
        let status = p
            .child
            .wait()
            .map_err(|e| format!("could not wait for process {}: {e}", p.name))?;
        if !status.success() {
            return Err(format!("process {} exited with {status}", p.name));
        }
    }
    demo.processes.clear();
    drop(demo);
    println!("\nredis-server stopped, {} removed", dir.display());
    if loads == 1 {
        Ok(())
    } else {
        Err(format!(
            "expected 1 load across both processes, saw {loads}"
        ))
    }
}
