//! Test support: an in-memory implementation of the store port with the same
//! version fencing as the real log, so the actor shell and the journal can be
//! tested without a database. The SQL adapters are tested against the real
//! databases in the server crate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{EventDetails, EventId, StoredEvent, Title, UserId, VenueId};
use crate::idempotency::Given;
use crate::store::{Append, CommitReport, EventStore, Rehydration, StoreError};

#[derive(Default)]
pub struct MemoryStore {
    /// The event log.
    pub log: Mutex<HashMap<EventId, Vec<StoredEvent>>>,
    pub commits: AtomicUsize,
    /// Commits begun, counted before their delay.
    pub commits_begun: AtomicUsize,
    /// Each commit sleeps this long, so appends pile up behind it.
    pub commit_delay: Duration,
    /// Answers by (user, key), as committed.
    pub answers: Mutex<HashMap<(UserId, String), Given>>,
    /// Appends committed with a snapshot.
    pub snapshots: AtomicUsize,
    /// Each stored-key lookup sleeps this long.
    pub lookup_delay: Duration,
    /// Stored-key lookups begun, counted before their delay.
    pub lookups_begun: AtomicUsize,
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn load(&self, stream: EventId) -> Result<Rehydration, StoreError> {
        let log = self.log.lock().unwrap();
        Ok(Rehydration {
            snapshot: None,
            facts: log.get(&stream).cloned().unwrap_or_default(),
        })
    }

    async fn logged_facts(
        &self,
        stream: EventId,
        after: u64,
        through: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let log = self.log.lock().unwrap();
        let facts = log.get(&stream).map_or(&[][..], Vec::as_slice);
        let (from, to) = (after as usize, (through as usize).min(facts.len()));
        Ok(facts.get(from..to).unwrap_or_default().to_vec())
    }

    async fn commit(&self, batch: &[Append]) -> Result<CommitReport, StoreError> {
        self.commits_begun.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.commit_delay).await;
        self.commits.fetch_add(1, Ordering::SeqCst);
        let mut log = self.log.lock().unwrap();
        let mut report = CommitReport::default();
        for (i, append) in batch.iter().enumerate() {
            // As in the SQL stores: a key answered before is replayed, and
            // nothing of its append is written.
            if let Some(record) = &append.idempotency {
                let answers = self.answers.lock().unwrap();
                if let Some(given) = answers.get(&(record.user, record.key.clone())) {
                    report.replayed.push((i, given.clone()));
                    continue;
                }
            }
            let stream = log.entry(append.stream).or_default();
            // As in the SQL stores: an append, even one without facts, stands
            // only on the stream's latest version.
            if stream.len() as u64 != append.base_version {
                report.conflicted.push(i);
                continue;
            }
            stream.extend(append.facts.iter().map(StoredEvent::encode));
            if append.snapshot.is_some() {
                self.snapshots.fetch_add(1, Ordering::SeqCst);
            }
            if let Some(record) = &append.idempotency {
                self.answers.lock().unwrap().insert(
                    (record.user, record.key.clone()),
                    Given {
                        fingerprint: record.fingerprint.clone(),
                        answer: record.answer,
                    },
                );
            }
        }
        Ok(report)
    }

    async fn stored_answer(&self, user: UserId, key: &str) -> Result<Option<Given>, StoreError> {
        self.lookups_begun.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.lookup_delay).await;
        let answers = self.answers.lock().unwrap();
        Ok(answers.get(&(user, key.to_owned())).cloned())
    }
}

/// The details of an event starting tomorrow: what most tests need.
pub fn event_details() -> EventDetails {
    EventDetails {
        title: Title::parse("Test").unwrap(),
        description: None,
        venue_id: VenueId::new(),
        starts_at: chrono::Utc::now() + chrono::Duration::days(1),
        ends_at: None,
        tags: vec![],
    }
}
