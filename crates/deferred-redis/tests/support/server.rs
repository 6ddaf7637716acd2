//! A `redis-server` started for one test and stopped (killed) when dropped:
//! deferred-test-support's, with the redis-rs client these tests reach it through.

use std::{
    ops::{Deref, DerefMut},
    time::Duration,
};

/// A `redis-server` listening only on a Unix socket (`--port 0`) in its own temporary
/// directory, with persistence off, so nothing it does outlives the test or leaves the
/// machine. Derefs to [`deferred_test_support::redis::RedisServer`] for the socket, the
/// process and the fault helpers (`pause`, `resume`, `stop`, `restart`).
pub struct RedisServer(deferred_test_support::redis::RedisServer);

impl RedisServer {
    /// Starts a server and waits (at most 5 s) until it answers PING. Panics with a
    /// message saying what to install when `redis-server` is not on PATH: these tests
    /// must fail, not skip, without it.
    pub fn start() -> Self {
        RedisServer(deferred_test_support::redis::RedisServer::start(
            "deferred-redis",
        ))
    }

    /// A client for this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a valid unix socket URL")
    }

    /// A blocking connection for test bookkeeping (reading counters the workers write).
    pub fn connection(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to the test server")
    }
}

impl Deref for RedisServer {
    type Target = deferred_test_support::redis::RedisServer;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for RedisServer {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}
