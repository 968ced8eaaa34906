//! The watcher: list, then watch from the list's version, resuming after
//! disconnects and relisting when the version has expired.
//!
//! An explicit state machine (initial list → watching → relist on
//! expiry). Every error is retried: the stream never ends while the
//! receiver lives, and backoff (0.8 s → 30 s after an error the server
//! sent, 0.4 s → 1.6 s when it cannot be reached or closed the stream)
//! resets once a watch works.

use futures::StreamExt as _;
use skiff::Resource;
use skiff::pb::api::v1::{EventType, ListRequest, WatchRequest};
use tokio::sync::mpsc;

use crate::api::Api;
use crate::backoff::Backoff;

/// Objects listed per page.
const PAGE: i64 = 500;

/// What a watcher reports.
#[derive(Debug, Clone)]
pub enum Event<K> {
    /// A full list: the complete set of objects now (after a start or a
    /// relist). Replaces whatever the receiver knew.
    Restarted(Vec<K>),
    /// An object was created or changed.
    Applied(K),
    /// An object was deleted (its last state).
    Deleted(K),
}

/// Which objects to watch.
#[derive(Debug, Clone, Default)]
pub struct Params {
    /// Namespace, or "" for all.
    pub namespace: String,
    /// Label selector.
    pub label_selector: String,
    /// Field selector.
    pub field_selector: String,
}

enum State {
    /// List everything, then watch from the list's version.
    Empty,
    /// Watch from this version.
    Watching(String),
}

/// Starts a watcher; events arrive on the returned channel until it is
/// dropped.
pub fn watch<K: Resource>(api: Api<K>, params: Params) -> mpsc::Receiver<Event<K>> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(run(api, params, tx));
    rx
}

async fn list_all<K: Resource>(
    api: &Api<K>,
    params: &Params,
) -> Result<(Vec<K>, String), tonic::Status> {
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .list(ListRequest {
                namespace: params.namespace.clone(),
                label_selector: params.label_selector.clone(),
                field_selector: params.field_selector.clone(),
                limit: PAGE,
                r#continue: token,
            })
            .await?;
        let (meta, page_items) = K::list_parts(page);
        items.extend(page_items);
        if meta.r#continue.is_empty() {
            return Ok((items, meta.resource_version));
        }
        token = meta.r#continue;
    }
}

/// Whether `status` says no connection to the server could be made (it
/// is down or restarting) rather than that it answered and refused: only
/// then is it tried again within seconds.
fn unreachable(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && status.message().to_ascii_lowercase().contains("connect")
}

async fn run<K: Resource>(api: Api<K>, params: Params, tx: mpsc::Sender<Event<K>>) {
    let mut state = State::Empty;
    // A server that answers with an error is backed off from up to half
    // a minute; one that cannot be reached, or that closed the stream, is
    // tried again within two seconds, so the watch resumes as soon as it
    // is back.
    let mut backoff = Backoff::watcher();
    let mut reconnect = Backoff::reconnect();
    loop {
        if tx.is_closed() {
            return;
        }
        state = match state {
            State::Empty => match list_all(&api, &params).await {
                Ok((items, rv)) => {
                    if tx.send(Event::Restarted(items)).await.is_err() {
                        return;
                    }
                    State::Watching(rv)
                }
                Err(status) => {
                    tracing::debug!(kind = K::KIND, %status, "list failed; retrying");
                    let delay = if unreachable(&status) {
                        reconnect.next_delay()
                    } else {
                        backoff.next_delay()
                    };
                    tokio::time::sleep(delay).await;
                    State::Empty
                }
            },
            State::Watching(rv) => {
                let req = WatchRequest {
                    namespace: params.namespace.clone(),
                    label_selector: params.label_selector.clone(),
                    field_selector: params.field_selector.clone(),
                    resource_version: rv.clone(),
                    allow_bookmarks: true,
                };
                let mut stream = match api.watch(req).await {
                    Ok(stream) => stream,
                    Err(status) if status.code() == tonic::Code::OutOfRange => {
                        tracing::debug!(kind = K::KIND, "watch version expired; relisting");
                        state = State::Empty;
                        continue;
                    }
                    Err(status) => {
                        tracing::debug!(kind = K::KIND, %status, "watch failed; retrying");
                        let delay = if unreachable(&status) {
                            reconnect.next_delay()
                        } else {
                            backoff.next_delay()
                        };
                        tokio::time::sleep(delay).await;
                        state = State::Watching(rv);
                        continue;
                    }
                };
                let mut rv = rv;
                let mut expired = false;
                // Why the stream ended: None when the server closed it.
                let mut ended_with = None;
                loop {
                    let item = tokio::select! {
                        item = stream.next() => item,
                        () = tx.closed() => return,
                    };
                    let event = match item {
                        Some(Ok(event)) => event,
                        Some(Err(status)) => {
                            expired = status.code() == tonic::Code::OutOfRange;
                            tracing::debug!(kind = K::KIND, %status, "watch ended");
                            ended_with = Some(status);
                            break;
                        }
                        None => break,
                    };
                    backoff.reset();
                    reconnect.reset();
                    let (kind, object) = K::event_parts(event);
                    let Some(object) = object else { continue };
                    if !object.resource_version().is_empty() {
                        object.resource_version().clone_into(&mut rv);
                    }
                    let out = match kind {
                        EventType::Added | EventType::Modified => Event::Applied(object),
                        EventType::Deleted => Event::Deleted(object),
                        EventType::Bookmark | EventType::Unspecified => continue,
                    };
                    if tx.send(out).await.is_err() {
                        return;
                    }
                }
                if expired {
                    State::Empty
                } else {
                    // Closed by the server (going away) or cut off: back at
                    // once; ended with an error the server sent: backed off.
                    let delay = match &ended_with {
                        Some(status) if !unreachable(status) => backoff.next_delay(),
                        _ => reconnect.next_delay(),
                    };
                    tokio::time::sleep(delay).await;
                    State::Watching(rv)
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_server_that_cannot_be_reached_counts_as_unreachable() {
        // A port nothing listens on any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let channel = crate::connect_lazy(&format!("http://127.0.0.1:{port}")).unwrap();
        let api = Api::<skiff::pb::core::v1::ConfigMap>::new(channel);
        let refused = api.list(Default::default()).await.unwrap_err();
        assert!(unreachable(&refused), "{refused:?}");
        // Answers the server sent are not.
        for answered in [
            tonic::Status::unavailable("the API server could not reach its store"),
            tonic::Status::permission_denied("no"),
            tonic::Status::internal("watch failed"),
        ] {
            assert!(!unreachable(&answered), "{answered:?}");
        }
    }
}
