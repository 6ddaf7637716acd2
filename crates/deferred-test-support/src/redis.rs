//! A `redis-server` of its own for a test, a bench or a demo: Unix socket only (`--port 0`),
//! in a fresh temporary directory, persistence off, so nothing it does outlives its owner or
//! leaves the machine; killed, and its directory removed, on drop. Std alone (no Redis client:
//! readiness is a raw RESP `PING`), so that xtask can use it without building one.

use core::{
    fmt,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};
use std::{
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

/// How long a fresh server gets to answer PING.
pub const START_LIMIT: Duration = Duration::from_secs(5);

/// Why a [`RedisServer`] did not start.
///
/// ```
/// use deferred_test_support::redis::{StartError, START_LIMIT};
///
/// let late = StartError::NoAnswer(START_LIMIT);
/// assert_eq!(late.to_string(), "redis-server did not answer PING within 5 s");
/// ```
#[derive(Debug)]
pub enum StartError {
    /// The temporary directory could not be made.
    Dir(PathBuf, io::Error),
    /// `redis-server` could not be run (most often: it is not on PATH).
    Spawn(io::Error),
    /// It ran, but did not answer PING within this long.
    NoAnswer(Duration),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Dir(dir, e) => write!(f, "could not create {}: {e}", dir.display()),
            StartError::Spawn(e) => write!(f, "could not start redis-server: {e}"),
            StartError::NoAnswer(limit) => write!(
                f,
                "redis-server did not answer PING within {} s",
                limit.as_secs_f64()
            ),
        }
    }
}

impl core::error::Error for StartError {}

/// A `redis-server` listening only on a Unix socket (`--port 0`) in its own temporary
/// directory, with persistence off; killed, and the directory removed, when dropped.
///
/// It needs `redis-server` on PATH (`cargo xtask redis-server` installs it):
///
/// ```
/// use deferred_test_support::redis::RedisServer;
///
/// let mut server = RedisServer::start("doc-server");
/// assert!(server.url().starts_with("unix://")); // for a Redis client
/// assert!(server.socket().exists());
/// server.pause(); // SIGSTOP: connections stay open, nothing answers
/// server.resume();
/// let pid = server.pid();
/// server.restart(); // an empty server on the same socket
/// assert_ne!(server.pid(), pid);
/// let dir = server.dir().to_owned();
/// drop(server); // killed, and its directory removed
/// assert!(!dir.exists());
/// ```
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
}

impl RedisServer {
    /// A fresh temporary directory for a server, `<temp>/<name>-<pid>-<n>`, and no server yet:
    /// [`spawn`](Self::spawn) starts it (for a caller that prints the command first).
    ///
    /// ```
    /// use deferred_test_support::redis::RedisServer;
    ///
    /// let server = RedisServer::in_temp_dir("doc-example").unwrap();
    /// assert!(server.dir().is_dir());
    /// assert!(server.socket().starts_with(server.dir()));
    /// ```
    pub fn in_temp_dir(name: &str) -> Result<Self, StartError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| StartError::Dir(dir.clone(), e))?;
        let socket = dir.join("redis.sock");
        Ok(RedisServer {
            child: None,
            dir,
            socket,
        })
    }

    /// Starts a server in a fresh temporary directory named after `name` and waits (at most
    /// [`START_LIMIT`]) until it answers PING. Panics, saying what to install when
    /// `redis-server` is not on PATH: what needs a server must fail, not skip, without it.
    pub fn start(name: &str) -> Self {
        let started = RedisServer::in_temp_dir(name).and_then(|mut server| {
            server.spawn()?;
            Ok(server)
        });
        match started {
            Ok(server) => server,
            Err(StartError::Spawn(e)) => panic!(
                "could not start `redis-server` ({e}). This needs a real Redis server on \
                 PATH: install it with `apt-get install -y redis-server` or \
                 `cargo xtask redis-server` (`cargo xtask test` does so first)"
            ),
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts the server on [`socket`](Self::socket) (none may be running) and waits (at
    /// most [`START_LIMIT`]) until it answers PING.
    pub fn spawn(&mut self) -> Result<(), StartError> {
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&self.socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(StartError::Spawn)?;
        self.child = Some(child);
        let start = Instant::now();
        // Bounded: START_LIMIT of 10 ms naps at most.
        while start.elapsed() < START_LIMIT {
            if ping(&self.socket) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(StartError::NoAnswer(START_LIMIT))
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The URL a Redis client opens (`redis::Client::open`).
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The server's process id. Panics if it is not running.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("the server is running")
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Pauses the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Kills the server and starts an empty one on the same socket. Panics if it does not
    /// start.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("{e}");
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // A paused server would not die of SIGKILL any slower, but resume it anyway
            // so that nothing is left stopped if kill fails.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a server answers PING on `socket` (raw RESP, no client library involved).
fn ping(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
