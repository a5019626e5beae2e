//! The query worker pool: reads and catalog writes, bounded.
//!
//! One actor receives jobs and runs each in its own task under a semaphore, so at most
//! `max_query_concurrency` statements are in flight; when the pool is saturated the actor waits
//! for a permit and jobs queue in its mailbox, and callers time out instead of piling work on
//! the database. A job whose caller already gave up is dropped without touching the store.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;

use crate::ports::QueryStore;

/// A boxed unit of work against the query store. It reports its result itself (through a
/// oneshot captured in the closure).
pub(crate) type Job =
    Box<dyn FnOnce(Arc<dyn QueryStore>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A job plus a way to tell whether its caller is still waiting.
pub(crate) struct QueryMsg {
    pub job: Job,
    pub abandoned: Box<dyn Fn() -> bool + Send>,
}

/// The pool actor.
pub(crate) struct QueryPool;

/// Pool state.
pub(crate) struct QueryPoolState {
    store: Arc<dyn QueryStore>,
    permits: Arc<Semaphore>,
}

impl Actor for QueryPool {
    type Msg = QueryMsg;
    type State = QueryPoolState;
    type Arguments = (Arc<dyn QueryStore>, usize);

    async fn pre_start(
        &self,
        _myself: ActorRef<QueryMsg>,
        (store, concurrency): (Arc<dyn QueryStore>, usize),
    ) -> Result<QueryPoolState, ActorProcessingErr> {
        Ok(QueryPoolState {
            store,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<QueryMsg>,
        msg: QueryMsg,
        state: &mut QueryPoolState,
    ) -> Result<(), ActorProcessingErr> {
        if (msg.abandoned)() {
            return Ok(());
        }
        let permit = state.permits.clone().acquire_owned().await?;
        if (msg.abandoned)() {
            return Ok(());
        }
        let fut = (msg.job)(state.store.clone());
        tokio::spawn(async move {
            fut.await;
            drop(permit);
        });
        Ok(())
    }
}
