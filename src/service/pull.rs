//! Pull front end: the official streaming subscriber on each subscription of a role. A message is
//! acked after its handler finished its durable work, nacked on a transient failure; the client
//! extends leases while a handler runs (up to twice the step timeout).

use std::sync::Arc;
use std::time::Duration;

use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Outcome, Role, dispatch};
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

/// Pulls every subscription of the role until `stop` turns true, then waits for in-flight
/// handlers.
pub async fn run<R: Role>(role: Arc<R>, stop: watch::Receiver<bool>) -> Result<(), ClientError> {
    let config = &role.context().config;
    let client = crate::gcp::pubsub::subscriber(config.emulators.pubsub.as_deref()).await?;
    let mut tasks = JoinSet::new();
    for (sub, _) in config.role_subscriptions(role.context().role) {
        let stream = client
            .subscribe(config.subscription_path(sub))
            .set_max_outstanding_messages(config.worker.max_concurrent_messages as i64)
            .set_max_lease(config.claim_lease())
            .set_max_lease_extension(Duration::from_secs(config.worker.lease_extension_secs))
            .build();
        tasks.spawn(consume(role.clone(), sub.to_string(), stream, stop.clone()));
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn consume<R: Role>(
    role: Arc<R>,
    subscription: String,
    mut stream: google_cloud_pubsub::subscriber::MessageStream,
    mut stop: watch::Receiver<bool>,
) {
    let token = stream.shutdown_token();
    let mut handlers = JoinSet::new();
    tracing::info!(subscription, role = role.context().role, "pulling");
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
            next = stream.next() => match next {
                Some(Ok((m, h))) => {
                    let (role, sub) = (role.clone(), subscription.clone());
                    handlers.spawn(async move { on_message(&*role, &sub, m, h).await });
                }
                Some(Err(e)) => {
                    tracing::warn!(%subscription, error = %e, "pull stream error");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => break,
            },
        }
    }
    tracing::info!(
        %subscription,
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

async fn on_message<R: Role>(role: &R, subscription: &str, m: Message, h: Handler) {
    let msg = incoming(&m, h.delivery_attempt());
    match dispatch(role, subscription, &msg).await {
        Outcome::Ack => h.ack(),
        Outcome::Nack => h.nack(),
    }
}
