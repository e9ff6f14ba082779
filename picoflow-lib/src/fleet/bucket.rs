//! JetStream key-value buckets, used through the stream each one is: bucket `B` is stream
//! `KV_B` on subjects `$KV.B.KEY`, one message kept per key, a deletion being a message with
//! the header `KV-Operation: DEL` — the layout every NATS client shares. The client's own
//! key-value module is left out of the build: it brings a regular-expression engine for its
//! key checks (about 0.3 MiB; PicoFlow's keys are checked where they are made) and reads
//! account fields nats-server 2.9 does not send.

use async_nats::jetstream::{self, consumer, stream, Context};
use async_nats::HeaderMap;
use futures_lite::StreamExt;

/// The header that marks a deletion.
const OPERATION: &str = "KV-Operation";

/// One key's value.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    /// The stream sequence of this value: the key's revision.
    pub(crate) revision: u64,
    /// The key was deleted (the value is empty).
    pub(crate) deleted: bool,
    /// When the server stored this value (its own clock, not the writer's).
    pub(crate) stored: chrono::DateTime<chrono::Utc>,
}

/// A key-value bucket.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    js: Context,
    name: String,
}

type Error = async_nats::Error;

fn is_deletion(headers: Option<&HeaderMap>) -> bool {
    headers
        .and_then(|h| h.get(OPERATION))
        .is_some_and(|v| matches!(v.as_str(), "DEL" | "PURGE"))
}

impl Bucket {
    /// Bucket `name`, created (with `replicas` copies) when it does not exist.
    pub(crate) async fn open(js: &Context, name: &str, replicas: usize) -> Result<Bucket, Error> {
        js.get_or_create_stream(stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
        Ok(Bucket {
            js: js.clone(),
            name: name.to_string(),
        })
    }

    fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.name)
    }

    /// Sets `key`; its new revision.
    pub(crate) async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, Error> {
        let ack = self
            .js
            .publish(self.subject(key), value.into())
            .await?
            .await?;
        Ok(ack.sequence)
    }

    /// Deletes `key`.
    pub(crate) async fn delete(&self, key: &str) -> Result<(), Error> {
        let mut h = HeaderMap::new();
        h.insert(OPERATION, "DEL");
        self.js
            .publish_with_headers(self.subject(key), h, Vec::new().into())
            .await?
            .await?;
        Ok(())
    }

    /// A consumer of the latest value of every key, then of every change.
    async fn follow(&self) -> Result<(u64, consumer::pull::Ordered), Error> {
        let stream = self.js.get_stream(format!("KV_{}", self.name)).await?;
        let c = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("$KV.{}.>", self.name),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await?;
        let pending = c.cached_info().num_pending;
        Ok((pending, c.messages().await?))
    }

    /// Every key's current value, deleted keys left out.
    pub(crate) async fn entries(&self) -> Result<Vec<Entry>, Error> {
        let (mut pending, mut msgs) = self.follow().await?;
        let mut out = Vec::new();
        while pending > 0 {
            let Some(m) = msgs.next().await else { break };
            let m = m?;
            pending = m.info().map_or(0, |i| i.pending);
            let e = self.entry(&m);
            if !e.deleted {
                out.push(e);
            }
        }
        Ok(out)
    }

    fn entry(&self, m: &jetstream::Message) -> Entry {
        let prefix = format!("$KV.{}.", self.name);
        Entry {
            key: m
                .subject
                .strip_prefix(prefix.as_str())
                .unwrap_or(&m.subject)
                .to_string(),
            value: m.payload.to_vec(),
            revision: m.info().map_or(0, |i| i.stream_sequence),
            deleted: is_deletion(m.headers.as_ref()),
            stored: m
                .info()
                .ok()
                .and_then(|i| {
                    chrono::DateTime::from_timestamp(
                        i.published.unix_timestamp(),
                        i.published.nanosecond(),
                    )
                })
                .unwrap_or_default(),
        }
    }

    /// Watches the bucket: every key's current value (deleted ones included), then every
    /// change, each with whether the history was read to its end (`current`). The server
    /// pushes them to an inbox of this client's, so that an idle watch costs the client no
    /// message of its own (a pull consumer renews its request every 30 s): an idle node sends
    /// nothing but its heartbeat.
    pub(crate) async fn watch(&self) -> Result<Watch, Error> {
        let stream = self.js.get_stream(format!("KV_{}", self.name)).await?;
        let c = stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: format!("$KV.{}.>", self.name),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await?;
        let pending = c.cached_info().num_pending;
        let msgs = c.messages().await?;
        Ok(Watch {
            bucket: self.clone(),
            msgs,
            caught_up: pending == 0,
        })
    }
}

/// A watch of a bucket ([`Bucket::watch`]).
pub(crate) struct Watch {
    bucket: Bucket,
    msgs: consumer::push::Ordered,
    /// Every value present when the watch began was delivered.
    pub(crate) caught_up: bool,
}

impl Watch {
    /// The next value or deletion; `None` when the watch ended.
    pub(crate) async fn next(&mut self) -> Option<Result<Entry, Error>> {
        let m = match self.msgs.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(e.into())),
        };
        if m.info().map_or(true, |i| i.pending == 0) {
            self.caught_up = true;
        }
        Some(Ok(self.bucket.entry(&m)))
    }
}
