//! Commands go to the node that holds their event's shard. A node that
//! holds the shard runs the command on its actor; any other forwards it to
//! the holder over HTTP (keep-alive, authenticated with the cluster's
//! internal key) and answers with the holder's answer, which the route
//! renders exactly as if it had been decided here. What the caller is
//! (their verified user id), their idempotency key and the request id
//! travel inside the command.
//!
//! A shard that is moving (released, not yet taken; or its holder just
//! died) is waited for: the command is tried again every few milliseconds
//! until the write deadline, and never decided by a node that does not
//! hold the shard.

use anyhow::Context;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use turnout_actors::domain::{Command, EventId, UserId};
use turnout_actors::placement::NodeId;
use turnout_actors::shards::HeldShards;
use turnout_actors::{CommandError, EventRegistry, IdempotencyKey, Reply};
use uuid::Uuid;

use super::placement::{Directory, Holder};
use crate::auth::TokenKeys;
use crate::event_cache::EventCache;

/// How long a command waits before it looks for its shard's holder again.
const PAUSE: Duration = Duration::from_millis(25);

/// A command on its way to the node holding its event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forwarded {
    pub event: EventId,
    pub command: Command,
    pub idempotency: Option<IdempotencyKey>,
    pub request_id: Option<String>,
}

/// The holder's answer, as it travels back.
type Answered = Result<Reply, CommandError>;

/// Runs commands where their event's shard is held.
pub struct Commands {
    me: Uuid,
    registry: EventRegistry,
    /// Told of a forwarded command's result, so that this node's next read
    /// shows it (read your writes, whichever node decided).
    events: EventCache,
    held: Arc<HeldShards>,
    directory: Arc<Directory>,
    peers: Peers,
}

impl Commands {
    pub fn new(
        me: NodeId,
        registry: EventRegistry,
        held: Arc<HeldShards>,
        directory: Arc<Directory>,
        peers: Peers,
        events: EventCache,
    ) -> Self {
        Self {
            me: me.as_uuid(),
            registry,
            events,
            held,
            directory,
            peers,
        }
    }

    /// The shards this node holds.
    pub fn held(&self) -> &HeldShards {
        &self.held
    }

    /// Whether this node holds the event's shard now.
    pub fn holds(&self, event: EventId) -> bool {
        self.held.epoch(self.held.shard_of(event)).is_some()
    }

    /// The command's durable answer, from this node or the holder, or
    /// [`CommandError::Unavailable`] once `within` has passed (a keyed
    /// command may have been decided all the same: its key finds that
    /// answer).
    pub async fn execute(&self, forwarded: Forwarded, within: Duration) -> Answered {
        within_deadline(forwarded.event, within, self.until_answered(&forwarded)).await
    }

    /// Runs a command on this node's actor, as [`Commands::execute`] does
    /// when the shard is held here; [`CommandError::NotHere`] if it is not.
    pub async fn run_here(&self, forwarded: &Forwarded, within: Duration) -> Answered {
        within_deadline(forwarded.event, within, self.decide_here(forwarded)).await
    }

    async fn until_answered(&self, forwarded: &Forwarded) -> Answered {
        let shard = self.held.shard_of(forwarded.event);
        loop {
            if self.held.epoch(shard).is_some() {
                match self.decide_here(forwarded).await {
                    Err(CommandError::NotHere) => {}
                    answer => return answer,
                }
            } else if let Some(holder) = self.directory.holder(shard).filter(|h| h.node != self.me)
            {
                match self.peers.forward(&holder, forwarded).await {
                    Ok(Err(CommandError::NotHere)) | Err(Undelivered::NotSent) => {}
                    // Sent, but the answer was lost: only a keyed command
                    // may go again (its key finds the first answer).
                    Err(Undelivered::Lost) if forwarded.idempotency.is_some() => {}
                    Err(Undelivered::Lost) => return Err(CommandError::Unavailable),
                    Ok(answer) => {
                        if let Ok(Reply::Done(outcome)) = &answer {
                            self.events.changed(&outcome.summary);
                        }
                        return answer;
                    }
                }
            }
            tokio::time::sleep(PAUSE).await;
        }
    }

    /// Runs a command on this node's actor, timed by this node's clock.
    async fn decide_here(&self, forwarded: &Forwarded) -> Answered {
        self.registry
            .execute(
                forwarded.event,
                forwarded.command.clone().timed_at(crate::store::now()),
                forwarded.idempotency.clone(),
                forwarded.request_id.clone(),
            )
            .await
    }
}

/// `answer`, unless `within` passes first.
async fn within_deadline(
    event: EventId,
    within: Duration,
    answer: impl Future<Output = Answered>,
) -> Answered {
    tokio::time::timeout(within, answer)
        .await
        .unwrap_or_else(|_| {
            tracing::warn!(%event, ?within, "a command missed its deadline");
            Err(CommandError::Unavailable)
        })
}

/// Why a forwarded command has no answer.
#[derive(Debug)]
pub enum Undelivered {
    /// It never reached the holder (no connection), or was refused before
    /// it ran (429): nothing was decided.
    NotSent,
    /// It may have reached the holder; its answer did not come back.
    Lost,
}

/// The HTTP client to the other nodes, and the key its calls are signed
/// with.
pub struct Peers {
    client: reqwest::Client,
    keys: Arc<InternalKeys>,
    me: NodeId,
    scheme: &'static str,
    /// Nodes sharing no key refuse every forwarded command, each retried
    /// every few milliseconds until its deadline: said at error level once
    /// in a while, not once per attempt.
    refusals_said: Every,
}

/// Whether something said at most once a period is due.
#[derive(Debug)]
struct Every {
    period: Duration,
    last: std::sync::Mutex<Option<Instant>>,
}

impl Every {
    fn new(period: Duration) -> Self {
        Self {
            period,
            last: std::sync::Mutex::new(None),
        }
    }

    /// True the first time, then once `period` has gone by since the last
    /// time it was.
    fn due(&self, now: Instant) -> bool {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = last.is_none_or(|at| now.duration_since(at) >= self.period);
        if due {
            *last = Some(now);
        }
        due
    }
}

impl Peers {
    pub fn new(
        keys: Arc<InternalKeys>,
        me: NodeId,
        tls_root: Option<&std::path::Path>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut client = reqwest::Client::builder()
            .timeout(timeout)
            // A holder gone without a word (its host off, a partition)
            // costs a connection attempt, not the command's deadline: the
            // attempt is `NotSent`, and retried against the directory as
            // another node takes the shard.
            .connect_timeout(if tls_root.is_some() {
                CONNECT_WITHIN_TLS
            } else {
                CONNECT_WITHIN
            })
            .tcp_nodelay(true)
            // Below the holder's keep-alive (actix's 5 s): a connection it
            // is closing is not sent a command whose answer would be lost.
            .pool_idle_timeout(Duration::from_secs(4));
        if let Some(cert) = tls_root {
            let pem = std::fs::read(cert)
                .with_context(|| format!("cannot read the TLS certificate {}", cert.display()))?;
            client = client.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(Self {
            client: client.build()?,
            keys,
            me,
            scheme: if tls_root.is_some() { "https" } else { "http" },
            refusals_said: Every::new(Duration::from_secs(10)),
        })
    }

    async fn forward(
        &self,
        holder: &Holder,
        forwarded: &Forwarded,
    ) -> Result<Answered, Undelivered> {
        let started = Instant::now();
        let mut request = self
            .client
            .post(format!(
                "{}://{}{INTERNAL_PATH}",
                self.scheme, holder.address
            ))
            .bearer_auth(self.keys.issue(self.me))
            .json(forwarded);
        if let Some(id) = &forwarded.request_id {
            request = request.header("x-request-id", id);
        }
        // The holder's handling joins the request's trace.
        if let Some(traceparent) = crate::telemetry::traceparent(&tracing::Span::current()) {
            request = request.header("traceparent", traceparent);
        }
        let outcome = match request.send().await {
            Ok(response) if response.status().is_success() => response
                .json::<Answered>()
                .await
                .map_err(|error| {
                    tracing::warn!(%error, node = %holder.node, "a forwarded command's answer was unreadable");
                    Undelivered::Lost
                }),
            // Too many requests: refused before it ran (a proxy's limit),
            // so it may go again. Anything else may have come after it ran
            // (a proxy's 502), or will not change (keys not shared).
            Ok(response) if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                tracing::warn!(node = %holder.node, "a node refused a forwarded command before running it");
                Err(Undelivered::NotSent)
            }
            Ok(response) => {
                if self.refusals_said.due(Instant::now()) {
                    tracing::error!(status = %response.status(), node = %holder.node,
                        "a node refused a forwarded command: do the nodes share cluster.internal_secrets (or the JWT keys)? \
                         (said once in 10 s; turnout_forwarded_commands_total{{outcome=\"lost\"}} counts them all)");
                } else {
                    tracing::debug!(status = %response.status(), node = %holder.node, "a node refused a forwarded command");
                }
                Err(Undelivered::Lost)
            }
            Err(error) if error.is_connect() => {
                tracing::debug!(%error, node = %holder.node, "cannot reach a shard's holder");
                Err(Undelivered::NotSent)
            }
            Err(error) => {
                tracing::warn!(%error, node = %holder.node, "a forwarded command got no answer");
                Err(Undelivered::Lost)
            }
        };
        let label = match &outcome {
            Ok(Err(CommandError::NotHere)) => "not_here",
            Ok(_) => "answered",
            Err(Undelivered::NotSent) => "not_sent",
            Err(Undelivered::Lost) => "lost",
        };
        metrics::counter!("turnout_forwarded_commands_total", "outcome" => label).increment(1);
        metrics::histogram!("turnout_forward_seconds").record(started.elapsed().as_secs_f64());
        outcome
    }
}

/// Where forwarded commands arrive.
pub const INTERNAL_PATH: &str = "/internal/commands";

/// How long a node waits for a connection to a shard's holder, and with
/// TLS, whose handshake the wait covers (a busy holder's CPU).
const CONNECT_WITHIN: Duration = Duration::from_millis(500);
const CONNECT_WITHIN_TLS: Duration = Duration::from_secs(2);

/// The key nodes sign their calls to each other with: short-lived tokens
/// naming the calling node, under an issuer no user token has.
pub struct InternalKeys(TokenKeys);

const INTERNAL_ISSUER: &str = "turnout-internal";
const NODE_ROLE: &str = "node";

impl InternalKeys {
    pub fn new(keys: &[secrecy::SecretString]) -> Self {
        Self(TokenKeys::new(keys, INTERNAL_ISSUER.to_owned(), 60))
    }

    pub fn issue(&self, me: NodeId) -> String {
        self.0
            .issue(UserId::from(me.as_uuid()), Some(NODE_ROLE.to_owned()))
    }

    /// Whether `token` was signed by a node of this cluster.
    pub fn admits(&self, token: &str) -> bool {
        matches!(self.0.verify(token), Ok(claims) if claims.role.as_deref() == Some(NODE_ROLE))
    }
}

impl std::fmt::Debug for InternalKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("InternalKeys").field(&self.0).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thing_said_once_a_period_is_due_first_and_then_once_the_period_went_by() {
        let every = Every::new(Duration::from_secs(10));
        let start = Instant::now();
        assert!(every.due(start), "the first time");
        assert!(!every.due(start + Duration::from_secs(3)));
        assert!(!every.due(start + Duration::from_millis(9_999)));
        assert!(every.due(start + Duration::from_secs(10)), "a period later");
        assert!(
            !every.due(start + Duration::from_secs(19)),
            "counted from the last time said"
        );
        assert!(every.due(start + Duration::from_secs(20)));
    }
}
