//! Open smarthost connections kept for the next message: a relay greets, negotiates TLS and
//! checks credentials once per connection instead of once per message. A connection waits
//! at most the idle limit; the most recently used is taken first, so a quiet period lets the
//! surplus age out.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::client::Connection;

struct Idle {
    conn: Connection,
    since: Instant,
}

pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    /// One permit per connection that may be open at once (in use or idle).
    open: Semaphore,
    idle_limit: Duration,
}

impl Pool {
    /// A pool of at most `max_connections`, each kept idle up to `idle_limit`. Idle
    /// connections past the limit are closed (QUIT) by a task that lives as long as the pool.
    pub fn new(max_connections: usize, idle_limit: Duration) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            idle: Mutex::new(Vec::new()),
            open: Semaphore::new(max_connections),
            idle_limit,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(reap(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Waits for a connection slot: one transaction at a time per connection.
    pub async fn slot(&self) -> SemaphorePermit<'_> {
        self.open
            .acquire()
            .await
            .expect("the pool's semaphore is never closed")
    }

    /// The most recently used idle connection that is still within the idle limit.
    pub fn take(&self) -> Option<Connection> {
        let expired = self.expired();
        let conn = self.idle.lock().expect("pool lock").pop().map(|i| i.conn);
        close(expired);
        conn
    }

    /// Keeps `conn` for the next message.
    pub fn put(&self, conn: Connection) {
        self.idle.lock().expect("pool lock").push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Connections idle now.
    pub fn idle(&self) -> usize {
        self.idle.lock().expect("pool lock").len()
    }

    /// Removes the connections idle longer than the limit (the oldest are first).
    fn expired(&self) -> Vec<Connection> {
        let mut idle = self.idle.lock().expect("pool lock");
        let now = Instant::now();
        let keep_from = idle
            .iter()
            .position(|i| now.duration_since(i.since) < self.idle_limit)
            .unwrap_or(idle.len());
        idle.drain(..keep_from).map(|i| i.conn).collect()
    }
}

fn close(conns: Vec<Connection>) {
    for conn in conns {
        tokio::spawn(conn.quit());
    }
}

/// Closes connections that stayed idle past the limit, until the pool is dropped.
async fn reap(pool: Weak<Pool>) {
    let period = match pool.upgrade() {
        Some(pool) => (pool.idle_limit / 2).max(Duration::from_millis(100)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        close(pool.expired());
    }
}
