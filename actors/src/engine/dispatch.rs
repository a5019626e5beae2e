//! How the [`Engine`] handle reaches its actors: jobs on the query pool and requests to the
//! call supervisor, each bounded by the engine timeout, and the page bounds of every list.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use tokio::sync::oneshot;

use super::query::{self, QueryMsg};
use super::supervisor::SupervisorMsg;
use super::{Engine, EngineError};
use crate::ports::QueryStore;

/// Largest page of a list.
pub const MAX_PAGE: i64 = 100;
/// Page size when none is asked for.
pub const DEFAULT_PAGE: i64 = 50;

impl Engine {
    /// Runs `f` on the query pool, bounded by the engine timeout.
    pub(super) async fn query<T, F, Fut>(&self, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn QueryStore>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, EngineError>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, EngineError>>();
        let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
        let watch = tx.clone();
        let job: query::Job = Box::new(move |store| {
            Box::pin(async move {
                let result = f(store).await;
                let sender = tx.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(sender) = sender {
                    let _ = sender.send(result);
                }
            })
        });
        let abandoned = Box::new(move || {
            watch
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_none_or(|s| s.is_closed())
        });
        self.inner
            .queries
            .send_message(QueryMsg { job, abandoned })
            .map_err(|_| EngineError::Unavailable("the query pool is stopped".into()))?;
        let timeout = self.inner.shared.config.call_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(EngineError::Unavailable("the query was dropped".into())),
            Err(_) => Err(EngineError::Timeout(millis(timeout))),
        }
    }

    pub(super) async fn rpc_supervisor<T, B>(&self, build: B) -> Result<T, EngineError>
    where
        T: Send + 'static,
        B: FnOnce(ractor::RpcReplyPort<T>) -> SupervisorMsg,
    {
        let timeout = self.inner.shared.config.call_timeout;
        match self.inner.supervisor.call(build, Some(timeout)).await {
            Ok(CallResult::Success(v)) => Ok(v),
            Ok(CallResult::Timeout) => Err(EngineError::Timeout(millis(timeout))),
            Ok(CallResult::SenderError) => Err(EngineError::Unavailable(
                "the call's actor stopped before answering; retry".into(),
            )),
            Err(_) => Err(EngineError::Unavailable("the engine is stopping".into())),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn clamp_limit(limit: i64) -> i64 {
    if limit <= 0 {
        DEFAULT_PAGE
    } else {
        limit.min(MAX_PAGE)
    }
}
