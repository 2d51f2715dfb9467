//! Pull front end: the official streaming subscriber on each worker subscription. A message is
//! acked after its handler finished its durable work, nacked on a transient failure; the client
//! extends leases while a handler runs (up to twice the step timeout).

use std::sync::Arc;
use std::time::Duration;

use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Outcome, Worker};
use crate::config::{BATCHES_SUBSCRIPTION, EXTRACTS_SUBSCRIPTION};
use crate::events::Incoming;
use crate::gcp::ClientError;

/// Converts a pulled message.
pub fn incoming(m: &Message, delivery_attempt: Option<i32>) -> Incoming {
    Incoming {
        id: m.message_id.clone(),
        data: m.data.to_vec(),
        attributes: m
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        delivery_attempt,
    }
}

/// Pulls both worker subscriptions until `stop` turns true, then waits for in-flight handlers.
pub async fn run(worker: Arc<Worker>, stop: watch::Receiver<bool>) -> Result<(), ClientError> {
    let client = crate::gcp::pubsub::subscriber(worker.config.emulators.pubsub.as_deref()).await?;
    let mut tasks = JoinSet::new();
    for sub in [EXTRACTS_SUBSCRIPTION, BATCHES_SUBSCRIPTION] {
        let path = worker.config.subscription_path(sub);
        let stream = client
            .subscribe(path)
            .set_max_outstanding_messages(worker.config.worker.max_concurrent_messages as i64)
            .set_max_lease(worker.config.claim_lease())
            .set_max_lease_extension(Duration::from_secs(
                worker.config.worker.lease_extension_secs,
            ))
            .build();
        tasks.spawn(consume(worker.clone(), sub, stream, stop.clone()));
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn consume(
    worker: Arc<Worker>,
    subscription: &'static str,
    mut stream: google_cloud_pubsub::subscriber::MessageStream,
    mut stop: watch::Receiver<bool>,
) {
    let token = stream.shutdown_token();
    let mut handlers = JoinSet::new();
    tracing::info!(subscription, "pulling");
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
            next = stream.next() => match next {
                Some(Ok((m, h))) => {
                    let worker = worker.clone();
                    handlers.spawn(async move { on_message(&worker, subscription, m, h).await });
                }
                Some(Err(e)) => {
                    tracing::warn!(subscription, error = %e, "pull stream error");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => break,
            },
        }
    }
    tracing::info!(
        subscription,
        in_flight = handlers.len(),
        "stopping: finishing in-flight messages"
    );
    while handlers.join_next().await.is_some() {}
    token.shutdown().await;
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn on_message(worker: &Worker, subscription: &str, m: Message, h: Handler) {
    let msg = incoming(&m, h.delivery_attempt());
    match worker.handle(subscription, &msg).await {
        Outcome::Ack => h.ack(),
        Outcome::Nack => h.nack(),
    }
}
