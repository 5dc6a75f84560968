//! The task that streams stats to the control plane over
//! `StatsService/StreamStats`.
//!
//! On each connection it sends `Hello{proxy_id}`, then every batch not yet
//! acknowledged (oldest first, counted in `llmlb_proxy_stats_resent_total`
//! when they were already sent on an earlier connection), then new batches
//! of at most [`MAX_BATCH`] records, sent [`LINGER`] after the first record
//! of a batch arrived or at once when a full batch is waiting. At most
//! [`WINDOW`] batches are unacknowledged at a time; each is kept until the
//! control plane acknowledges it (after committing it), whatever happens to
//! the connection. In-flight counts per endpoint are reported every second
//! and soon after a change, at most every [`INFLIGHT_MIN_GAP`].

use std::collections::VecDeque;
use std::time::Duration;

use llmlb_proto::v1::stats_service_client::StatsServiceClient;
use llmlb_proto::v1::{
    stats_upload::Kind, InflightReport, StatsAck, StatsBatch, StatsHello, StatsUpload,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::StatsSink;
use crate::backoff::Backoff;
use crate::control::ControlPlane;
use crate::loads::Loads;

/// Most records in one batch.
pub const MAX_BATCH: usize = 512;

/// Most batches sent and not yet acknowledged.
pub const WINDOW: usize = 32;

/// How long the first record of a batch waits for others.
pub const LINGER: Duration = Duration::from_millis(50);

/// In-flight counts are reported at least this often.
pub const INFLIGHT_EVERY: Duration = Duration::from_secs(1);

/// Least time between two in-flight reports.
pub const INFLIGHT_MIN_GAP: Duration = Duration::from_millis(250);

/// Outgoing messages queued for the stream; more than `WINDOW` + 1 so that
/// the hello and the resent batches fit without waiting.
const QUEUE: usize = 4 * WINDOW;

/// State that outlives connections.
#[derive(Debug)]
struct Outbox {
    /// Batches sent and not acknowledged, oldest first.
    unacked: VecDeque<StatsBatch>,
    /// Id of the next batch (never reused in this process).
    next_batch_id: u64,
}

/// Streams stats until `cancel` fires, reconnecting with backoff.
pub async fn run(
    control: ControlPlane,
    proxy_id: String,
    sink: StatsSink,
    loads: Loads,
    cancel: CancellationToken,
) {
    let mut outbox = Outbox {
        unacked: VecDeque::new(),
        next_batch_id: 1,
    };
    let mut backoff = Backoff::default();
    loop {
        let session = Session {
            control: &control,
            proxy_id: &proxy_id,
            sink: &sink,
            loads: &loads,
            cancel: &cancel,
        };
        match session.run(&mut outbox, &mut backoff).await {
            Ok(()) => return,
            Err(status) if backoff.should_warn() => warn!(
                code = ?status.code(),
                error = %crate::control::status_text(&status),
                unacked_batches = outbox.unacked.len(),
                pending = sink.pending(),
                "stats stream lost; reconnecting"
            ),
            Err(status) => debug!(
                code = ?status.code(),
                error = %crate::control::status_text(&status),
                held = sink.held(),
                "stats stream failed again"
            ),
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection of the uploader.
struct Session<'a> {
    control: &'a ControlPlane,
    proxy_id: &'a str,
    sink: &'a StatsSink,
    loads: &'a Loads,
    cancel: &'a CancellationToken,
}

impl Session<'_> {
    /// Runs one stream: `Ok` when cancelled, `Err` when the stream failed.
    async fn run(&self, outbox: &mut Outbox, backoff: &mut Backoff) -> Result<(), tonic::Status> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let hello = Kind::Hello(StatsHello {
            proxy_id: self.proxy_id.to_owned(),
        });
        queue(&tx, hello)?;
        let resent: usize = outbox.unacked.iter().map(|b| b.records.len()).sum();
        for batch in &outbox.unacked {
            queue(&tx, Kind::Batch(batch.clone()))?;
        }
        let mut client = StatsServiceClient::new(self.control.channel());
        let request = self.control.request(ReceiverStream::new(rx));
        let mut acks = tokio::select! {
            () = self.cancel.cancelled() => return Ok(()),
            response = client.stream_stats(request) => response?.into_inner(),
        };
        backoff.reset();
        if resent > 0 {
            self.sink.metrics().stats_resent(resent);
            info!(
                records = resent,
                batches = outbox.unacked.len(),
                "stats stream connected; resending unacknowledged records"
            );
        } else {
            info!("stats stream connected");
        }

        let mut linger_until = (self.sink.pending() > 0).then(Instant::now);
        let mut inflight_tick = tokio::time::interval(INFLIGHT_EVERY);
        inflight_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut inflight_due: Option<Instant> = None;
        let mut last_inflight = Instant::now();
        loop {
            let now = Instant::now();
            tokio::select! {
                () = self.cancel.cancelled() => return Ok(()),
                ack = acks.message() => {
                    let ack = ack?.ok_or_else(|| tonic::Status::unavailable("stats stream closed by the control plane"))?;
                    self.on_ack(outbox, ack);
                    if linger_until.is_none() && self.sink.pending() > 0 {
                        linger_until = Some(now);
                    }
                }
                () = self.sink.arrived(), if linger_until.is_none() => {
                    let wait = if self.sink.pending() >= MAX_BATCH { Duration::ZERO } else { LINGER };
                    linger_until = Some(now + wait);
                }
                () = tokio::time::sleep_until(linger_until.unwrap_or(now)), if linger_until.is_some() => {
                    linger_until = None;
                    self.send_batches(&tx, outbox).await?;
                }
                () = self.loads.changed(), if inflight_due.is_none() => {
                    inflight_due = Some((last_inflight + INFLIGHT_MIN_GAP).max(now));
                }
                () = tokio::time::sleep_until(inflight_due.unwrap_or(now)), if inflight_due.is_some() => {
                    inflight_due = None;
                    last_inflight = now;
                    self.send_inflight(&tx)?;
                }
                _ = inflight_tick.tick() => {
                    last_inflight = now;
                    self.send_inflight(&tx)?;
                }
            }
        }
    }

    /// Sends pending records in batches while the window allows.
    async fn send_batches(
        &self,
        tx: &mpsc::Sender<StatsUpload>,
        outbox: &mut Outbox,
    ) -> Result<(), tonic::Status> {
        while outbox.unacked.len() < WINDOW {
            let records = self.sink.take(MAX_BATCH);
            if records.is_empty() {
                break;
            }
            let batch = StatsBatch {
                batch_id: outbox.next_batch_id,
                records,
            };
            outbox.next_batch_id += 1;
            debug!(
                batch_id = batch.batch_id,
                records = batch.records.len(),
                "sending stats batch"
            );
            outbox.unacked.push_back(batch.clone());
            let message = StatsUpload {
                kind: Some(Kind::Batch(batch)),
            };
            tx.send(message).await.map_err(|_| closed())?;
        }
        Ok(())
    }

    fn send_inflight(&self, tx: &mpsc::Sender<StatsUpload>) -> Result<(), tonic::Status> {
        let cooldown_ms = self
            .loads
            .cooldowns(std::time::Instant::now())
            .into_iter()
            .filter(|(_, left)| !left.is_zero())
            .map(|(id, left)| {
                (
                    id,
                    u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1),
                )
            })
            .collect();
        let report = Kind::Inflight(InflightReport {
            by_endpoint: self.loads.snapshot(),
            cooldown_ms,
        });
        match tx.try_send(StatsUpload { kind: Some(report) }) {
            // A full queue means the stream is slow: skip this report, the
            // next one replaces it anyway.
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(closed()),
        }
    }

    fn on_ack(&self, outbox: &mut Outbox, ack: StatsAck) {
        let Some(at) = outbox
            .unacked
            .iter()
            .position(|b| b.batch_id == ack.batch_id)
        else {
            debug!(batch_id = ack.batch_id, "ack of an unknown batch ignored");
            return;
        };
        if let Some(batch) = outbox.unacked.remove(at) {
            debug!(
                batch_id = ack.batch_id,
                applied = ack.applied,
                duplicates = ack.duplicates,
                "stats batch acknowledged"
            );
            self.sink.acked(batch.records.len());
        }
    }
}

fn queue(tx: &mpsc::Sender<StatsUpload>, kind: Kind) -> Result<(), tonic::Status> {
    tx.try_send(StatsUpload { kind: Some(kind) })
        .map_err(|_| tonic::Status::internal("stats queue full before the stream started"))
}

fn closed() -> tonic::Status {
    tonic::Status::unavailable("stats stream closed")
}
