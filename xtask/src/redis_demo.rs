//! `cargo xtask redis-demo`: the deferred-redis README's two-process example, whole. Installs
//! `redis-server` if it is missing (see `redis.rs`), starts one on a Unix socket in a
//! temporary directory (no TCP port, persistence off), runs two processes of
//! `crates/deferred-redis/examples/two_processes.rs` against it, drives them line by line
//! (both load one cold key at once; one invalidates it; the other's L1 loses it), prints
//! what they say, and stops the server.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::{self, cargo, command, Result};

/// The server and the two processes, killed (and the directory removed) however the demo
/// ends.
struct Demo {
    server: Option<Child>,
    dir: PathBuf,
    processes: Vec<Process>,
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
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
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

/// Whether the server at `socket` answers PING.
fn pong(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut reply = [0_u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
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

    let dir = std::env::temp_dir().join(format!("deferred-redis-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("could not create {}: {e}", dir.display()))?;
    let mut demo = Demo {
        server: None,
        dir: dir.clone(),
        processes: Vec::new(),
    };
    let socket = dir.join("redis.sock");
    let mut server = command("redis-server", ["--port", "0", "--unixsocket"]);
    server
        .arg(&socket)
        .args([
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    println!(
        "$ redis-server --port 0 --unixsocket {} (in {})",
        socket.display(),
        dir.display()
    );
    demo.server = Some(
        server
            .spawn()
            .map_err(|e| format!("could not start redis-server: {e}"))?,
    );
    let start = Instant::now();
    // Bounded: 5 s of 10 ms naps.
    while !pong(&socket) {
        if start.elapsed() > Duration::from_secs(5) {
            return Err("redis-server did not answer PING within 5 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let url = format!("unix://{}", socket.display());
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
