//! Pub/Sub: one publisher per topic the worker writes to, and subscriber clients for pull mode.

use std::collections::HashMap;
use std::time::Duration;

use google_cloud_pubsub::client::{Publisher, Subscriber};
use google_cloud_pubsub::model::Message;

use super::{ClientError, is_transient};
use crate::events::Outgoing;

/// Publishing failed.
#[derive(Debug, thiserror::Error)]
#[error("publish to {topic}: {message}")]
pub struct PublishError {
    /// The topic.
    pub topic: String,
    /// Worth retrying.
    pub transient: bool,
    /// The cause.
    pub message: String,
}

/// Publishers of the topics a role writes to.
#[derive(Clone, Debug)]
pub struct Bus {
    project: String,
    publishers: HashMap<String, Publisher>,
}

impl Bus {
    /// Creates a publisher per topic (short names), against the emulator when given.
    pub async fn connect(
        project: &str,
        topics: &[&str],
        emulator: Option<&str>,
    ) -> Result<Bus, ClientError> {
        let creds = super::credentials(emulator.is_some())?;
        let mut publishers = HashMap::new();
        for topic in topics {
            let mut b = Publisher::builder(format!("projects/{project}/topics/{topic}"))
                .with_credentials(creds.clone())
                .set_delay_threshold(Duration::from_millis(5));
            if let Some(e) = emulator {
                b = b.with_endpoint(e);
            }
            let p = b.build().await.map_err(|e| ClientError::Build {
                client: "publisher",
                message: e.to_string(),
            })?;
            publishers.insert((*topic).to_string(), p);
        }
        Ok(Bus {
            project: project.to_string(),
            publishers,
        })
    }

    /// Publishes a message and waits for its id.
    pub async fn publish(&self, topic: &str, msg: Outgoing) -> Result<String, PublishError> {
        let Some(p) = self.publishers.get(topic) else {
            return Err(PublishError {
                topic: topic.to_string(),
                transient: false,
                message: format!("no publisher for topic {topic} in {}", self.project),
            });
        };
        let mut attributes = msg.attributes;
        crate::telemetry::inject(&mut attributes);
        let m = Message::new().set_data(msg.data).set_attributes(attributes);
        p.publish(m).await.map_err(|e| {
            let transient = match &e {
                google_cloud_pubsub::error::PublishError::Rpc(inner) => is_transient(inner),
                _ => true,
            };
            PublishError {
                topic: topic.to_string(),
                transient,
                message: e.to_string().lines().next().unwrap_or_default().to_string(),
            }
        })
    }
}

/// A subscriber client, against the emulator when given.
pub async fn subscriber(emulator: Option<&str>) -> Result<Subscriber, ClientError> {
    let creds = super::credentials(emulator.is_some())?;
    let mut b = Subscriber::builder().with_credentials(creds);
    if let Some(e) = emulator {
        b = b.with_endpoint(e);
    }
    b.build().await.map_err(|e| ClientError::Build {
        client: "subscriber",
        message: e.to_string(),
    })
}
