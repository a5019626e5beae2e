//! The one place passwords are hashed and verified: a fixed set of long-lived worker threads,
//! each with its own argon2 memory (19 MiB at the default cost) allocated once and reused, and
//! a short wait queue in front of them.
//!
//! argon2id is memory-hard by design: every check needs its full block array. Run on the
//! runtime's blocking pool (up to 512 threads), a burst of sign-ins allocates that array once
//! per concurrent check, and glibc keeps the freed memory in per-thread arenas long after the
//! burst (400 concurrent sign-ins once took a server to 14.7 GB). Here the memory is
//! `workers x m_cost` at most, held by the same threads for the life of the process, and a
//! check that cannot start within the queue's bound is refused at once ([`Overloaded`]) rather
//! than waiting behind the burst.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::RngCore as _;

/// How many checks run at once, how many may wait, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Worker threads (checks running at once); at least 1.
    pub workers: usize,
    /// Checks that may wait for a worker; beyond that a check is refused at once.
    pub queue: usize,
    /// A waiting check not started within this is refused (without being run).
    pub max_wait: Duration,
}

impl Default for PoolConfig {
    /// One worker per core, twice as many waiting, one second at most.
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(2, usize::from);
        PoolConfig {
            workers,
            queue: 2 * workers,
            max_wait: Duration::from_secs(1),
        }
    }
}

/// The pool is full (every worker busy and the queue at its bound) or the check waited longer
/// than the bound: retry after [`Overloaded::RETRY_AFTER_SECS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded;

impl Overloaded {
    /// What `Retry-After` says: a burst of checks drains within about a second.
    pub const RETRY_AFTER_SECS: u64 = 1;
}

impl std::fmt::Display for Overloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("too many password checks at once; retry shortly")
    }
}

impl std::error::Error for Overloaded {}

/// A worker's argon2 memory, kept between jobs.
pub struct Scratch {
    blocks: Vec<Block>,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch { blocks: Vec::new() }
    }

    /// At least `n` blocks; grown (never shrunk) so a worker allocates once at a given cost.
    fn blocks(&mut self, n: usize) -> &mut [Block] {
        if self.blocks.len() < n {
            self.blocks = vec![Block::new(); n];
        }
        &mut self.blocks[..n]
    }
}

/// A job waiting for a worker, with the caller's answer channel.
trait Task: Send {
    /// The caller is gone (client disconnected): the job is skipped.
    fn abandoned(&self) -> bool;
    /// Runs the job and answers.
    fn run(self: Box<Self>, scratch: &mut Scratch);
    /// Answers [`Overloaded`] without running the job (it waited too long).
    fn expire(self: Box<Self>);
}

struct Job<F, T> {
    f: F,
    answer: tokio::sync::oneshot::Sender<Result<T, Overloaded>>,
    /// The job's place in the pool, given back when the worker is done with it (run,
    /// expired or skipped).
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl<F, T> Task for Job<F, T>
where
    F: FnOnce(&mut Scratch) -> T + Send,
    T: Send,
{
    fn abandoned(&self) -> bool {
        self.answer.is_closed()
    }
    fn run(self: Box<Self>, scratch: &mut Scratch) {
        let _ = self.answer.send(Ok((self.f)(scratch)));
    }
    fn expire(self: Box<Self>) {
        let _ = self.answer.send(Err(Overloaded));
    }
}

struct Queued {
    task: Box<dyn Task>,
    enqueued: Instant,
}

/// Bounded password hashing: see the module documentation.
#[derive(Clone)]
pub struct PasswordPool {
    tx: Sender<Queued>,
    /// `workers + queue` places: a job holds one from [`PasswordPool::reserve`] until a
    /// worker is done with it, so at most that many are running or waiting.
    places: Arc<tokio::sync::Semaphore>,
    config: PoolConfig,
}

/// A place in the pool, taken before the work a check needs first (e.g. reading the stored
/// hash), so a full pool refuses before that work is done.
pub struct Reservation {
    tx: Sender<Queued>,
    place: tokio::sync::OwnedSemaphorePermit,
}

impl PasswordPool {
    /// Starts `config.workers` threads (their memory is allocated by their first job).
    pub fn new(config: PoolConfig) -> PasswordPool {
        let config = PoolConfig {
            workers: config.workers.max(1),
            ..config
        };
        let (tx, rx) = channel::<Queued>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..config.workers {
            let rx = rx.clone();
            let max_wait = config.max_wait;
            std::thread::Builder::new()
                .name(format!("iace-argon2-{i}"))
                .spawn(move || work(&rx, max_wait))
                .expect("spawning a password worker thread");
        }
        let places = Arc::new(tokio::sync::Semaphore::new(config.workers + config.queue));
        PasswordPool { tx, places, config }
    }

    /// Its configuration.
    pub fn config(&self) -> PoolConfig {
        self.config
    }

    /// Takes a place for one job, or refuses at once when every worker is busy and the queue
    /// is full.
    pub fn reserve(&self) -> Result<Reservation, Overloaded> {
        let place = self
            .places
            .clone()
            .try_acquire_owned()
            .map_err(|_| Overloaded)?;
        Ok(Reservation {
            tx: self.tx.clone(),
            place,
        })
    }

    /// Runs `f` on a worker with its memory, or refuses at once when every worker is busy
    /// and the queue is full (or when it waited longer than the bound). The job is queued by
    /// the future's first poll; dropping the future before it runs skips it.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Scratch) -> T + Send + 'static,
    ) -> Result<T, Overloaded> {
        self.reserve()?.run(f).await
    }

    /// Hashes a password into an argon2id PHC string at the default cost.
    pub async fn hash(&self, password: String) -> Result<anyhow::Result<String>, Overloaded> {
        self.run(move |scratch| hash_with(scratch, &password)).await
    }

    /// Checks a password against a PHC string; `None` checks it against a random hash at the
    /// default cost (always false), so an unknown account costs what a wrong password does.
    pub async fn verify(&self, phc: Option<String>, password: String) -> Result<bool, Overloaded> {
        self.reserve()?.verify(phc, password).await
    }
}

impl Reservation {
    /// Runs `f` on a worker in this place (see [`PasswordPool::run`]).
    pub async fn run<T: Send + 'static>(
        self,
        f: impl FnOnce(&mut Scratch) -> T + Send + 'static,
    ) -> Result<T, Overloaded> {
        let (answer, rx) = tokio::sync::oneshot::channel();
        let queued = Queued {
            task: Box::new(Job {
                f,
                answer,
                _place: self.place,
            }),
            enqueued: Instant::now(),
        };
        // The places bound the channel: it never holds more than `workers + queue` jobs.
        if self.tx.send(queued).is_err() {
            return Err(Overloaded);
        }
        // A worker that panicked drops the answer: report overloaded rather than hang.
        rx.await.unwrap_or(Err(Overloaded))
    }

    /// [`PasswordPool::verify`] in this place.
    pub async fn verify(self, phc: Option<String>, password: String) -> Result<bool, Overloaded> {
        self.run(move |scratch| match phc {
            Some(phc) => verify_with(scratch, &phc, &password),
            None => {
                dummy_with(scratch, &password);
                false
            }
        })
        .await
    }
}

fn work(rx: &Mutex<Receiver<Queued>>, max_wait: Duration) {
    let mut scratch = Scratch::new();
    loop {
        // The lock is held only while waiting for the next job, never while running one.
        let next = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(q) = next else {
            // The pool was dropped.
            return;
        };
        if q.task.abandoned() {
            continue;
        }
        if q.enqueued.elapsed() > max_wait {
            q.task.expire();
            continue;
        }
        q.task.run(&mut scratch);
    }
}

/// The cost of new hashes: argon2id as OWASP recommends (19 MiB, 2 passes, 1 lane).
pub fn default_params() -> Params {
    Params::new(19 * 1024, 2, 1, None).expect("static argon2 parameters are valid")
}

/// [`super::hash_password`] in `scratch`'s memory.
pub fn hash_with(scratch: &mut Scratch, password: &str) -> anyhow::Result<String> {
    let params = default_params();
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    argon
        .hash_password_into_with_memory(
            password.as_bytes(),
            &salt,
            &mut out,
            scratch.blocks(params.block_count()),
        )
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| anyhow::anyhow!("params: {e}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("output: {e}"))?),
    };
    Ok(phc.to_string())
}

/// [`super::verify_password`] in `scratch`'s memory (the parameters come from the string).
pub fn verify_with(scratch: &mut Scratch, phc: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let Ok(version) = parsed.version.map_or(Ok(Version::V0x13), Version::try_from) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = &mut out[..expected.len()];
    let blocks = scratch.blocks(params.block_count());
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, out, blocks)
        .is_ok()
        && super::constant_time_eq(out, expected.as_bytes())
}

/// The work of a verification at the default cost, against nothing: its result is unused.
fn dummy_with(scratch: &mut Scratch, password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let phc = DUMMY.get_or_init(|| {
        // Like any stored hash: a random password at the default cost (computed once, in this
        // worker's memory).
        let mut random = [0u8; 24];
        rand::rng().fill_bytes(&mut random);
        hash_with(scratch, &hex::encode(random)).unwrap_or_default()
    });
    let _ = verify_with(scratch, phc, password);
}

/// The process's pool (configured by [`configure`], else the default).
pub fn global() -> &'static PasswordPool {
    GLOBAL.get_or_init(|| PasswordPool::new(PoolConfig::default()))
}

static GLOBAL: OnceLock<PasswordPool> = OnceLock::new();

/// Sets the process's pool; the first configuration wins (a server started twice in one
/// process, as benchmarks do, shares the first one's pool). Returns the pool in force.
pub fn configure(config: PoolConfig) -> &'static PasswordPool {
    let pool = GLOBAL.get_or_init(|| PasswordPool::new(config));
    if pool.config() != config {
        tracing::warn!(
            in_force = ?pool.config(),
            requested = ?config,
            "the password pool was already configured; keeping the first configuration"
        );
    }
    pool
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use futures::FutureExt as _;

    use super::*;

    fn pool(workers: usize, queue: usize, max_wait: Duration) -> PasswordPool {
        PasswordPool::new(PoolConfig {
            workers,
            queue,
            max_wait,
        })
    }

    /// A job that holds its worker until released; says when it started.
    fn blocker(
        pool: &PasswordPool,
    ) -> (
        std::sync::mpsc::Sender<()>,
        tokio::sync::oneshot::Receiver<()>,
        tokio::task::JoinHandle<Result<u32, Overloaded>>,
    ) {
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let pool = pool.clone();
        let handle = tokio::spawn(async move {
            pool.run(move |_| {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
                1
            })
            .await
        });
        (release_tx, started_rx, handle)
    }

    #[tokio::test]
    async fn a_full_pool_refuses_at_once_and_recovers_when_a_worker_frees() {
        let pool = pool(1, 1, Duration::from_secs(600));
        let (release, started, running) = blocker(&pool);
        started.await.unwrap();
        // The worker is busy: a second job waits in the queue (queued by its first poll).
        let ran_second = Arc::new(AtomicBool::new(false));
        let flag = ran_second.clone();
        let mut waiting = Box::pin(pool.run(move |_| flag.store(true, Ordering::SeqCst)));
        assert!(
            (&mut waiting).now_or_never().is_none(),
            "queued, not refused"
        );
        // A third is refused at once, while the blocker still holds the worker.
        assert_eq!(pool.run(|_| ()).now_or_never(), Some(Err(Overloaded)));
        assert_eq!(
            pool.verify(None, "x".repeat(12)).now_or_never(),
            Some(Err(Overloaded))
        );
        // A reservation is refused the same way, before any other work is done.
        assert!(pool.reserve().is_err());
        assert!(!running.is_finished());
        assert!(!ran_second.load(Ordering::SeqCst));
        release.send(()).unwrap();
        assert_eq!(running.await.unwrap(), Ok(1));
        assert_eq!(waiting.await, Ok(()));
        assert!(ran_second.load(Ordering::SeqCst));
        // Free again: checks run.
        let phc = pool.hash("pool password".into()).await.unwrap().unwrap();
        assert_eq!(
            pool.verify(Some(phc), "pool password".into()).await,
            Ok(true)
        );
        assert_eq!(pool.verify(None, "pool password".into()).await, Ok(false));
    }

    #[tokio::test]
    async fn a_check_that_waited_past_the_bound_is_refused_without_running() {
        let pool = pool(1, 4, Duration::from_millis(1));
        // On a busy machine the blocker itself can wait past so short a bound before the worker
        // takes it, and is then refused unrun: start blockers until one runs.
        let first_try = Instant::now();
        let (release, running) = loop {
            let (release, started, running) = blocker(&pool);
            if started.await.is_ok() {
                break (release, running);
            }
            assert_eq!(running.await.unwrap(), Err(Overloaded));
            assert!(
                first_try.elapsed() < Duration::from_secs(30),
                "no blocker ran"
            );
        };
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let queued_at = Instant::now();
        let mut waiting = Box::pin(pool.run(move |_| flag.store(true, Ordering::SeqCst)));
        assert!(
            (&mut waiting).now_or_never().is_none(),
            "queued, not refused"
        );
        // Hold the worker until the queued job is certainly past its bound.
        while queued_at.elapsed() < Duration::from_millis(20) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        release.send(()).unwrap();
        assert_eq!(running.await.unwrap(), Ok(1));
        assert_eq!(waiting.await, Err(Overloaded));
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[test]
    fn pooled_hashes_are_standard_phc_strings_and_verify_both_ways() {
        let mut scratch = Scratch::new();
        let phc = hash_with(&mut scratch, "correct horse battery staple").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        // The crate's own verifier accepts ours, and ours accepts the crate's.
        assert!(super::super::verify_password(
            &phc,
            "correct horse battery staple"
        ));
        assert!(!super::super::verify_password(&phc, "wrong"));
        let theirs = super::super::hash_password("another password here").unwrap();
        assert!(verify_with(&mut scratch, &theirs, "another password here"));
        assert!(!verify_with(&mut scratch, &theirs, "another password her"));
        assert!(verify_with(
            &mut scratch,
            &phc,
            "correct horse battery staple"
        ));
        assert!(!verify_with(&mut scratch, "not a phc string", "x"));
        // Other costs (a hash from before a cost change) verify too.
        let cheap = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).unwrap(),
        );
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let cheap = argon2::PasswordHasher::hash_password(&cheap, b"cheap password", &salt)
            .unwrap()
            .to_string();
        assert!(verify_with(&mut scratch, &cheap, "cheap password"));
        assert!(!verify_with(&mut scratch, &cheap, "cheap passwore"));
    }
}
