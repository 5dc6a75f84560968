//! The LoadManager: live figures that are not endpoint counters — the
//! 60-minute request timeline, average response time, tokens per second per
//! endpoint × model × API kind, and requests in flight per proxy.
//!
//! It changes only (a) after the stats writer committed a batch, (b) from a
//! proxy's in-flight reports, (c) at boot from the database (restore).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use uuid::Uuid;

use crate::db::daily_stats::DailyTotals;
use crate::db::model_stats::ModelState;
use crate::db::request_minutes::MinuteTotals;
use crate::events::Events;
use crate::types::{ModelKey, UnixMs};

/// Minutes in the timeline and in the average response time window.
pub const WINDOW_MINUTES: i64 = 60;

/// Smoothing factor of the TPS EMA.
pub const TPS_ALPHA: f64 = 0.2;

/// Whether a TPS figure was measured since boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TpsSource {
    /// Updated by a request since boot.
    Live,
    /// Restored at boot, no live sample since.
    Restored,
}

/// A completed attempt, as far as the model figures care.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// 2xx and relayed to the end.
    pub success: bool,
    /// Output tokens.
    pub output_tokens: u64,
    /// Duration, ms.
    pub duration_ms: f64,
}

impl Sample {
    /// Whether the sample feeds TPS: success with tokens and duration > 0.
    pub fn tps_eligible(&self) -> bool {
        self.success && self.output_tokens > 0 && self.duration_ms > 0.0
    }
}

/// Folds one sample into a model state (EMA with α = 0.2; the first sample
/// is taken as is).
pub fn observe(state: &mut ModelState, s: Sample) {
    state.request_count = state.request_count.saturating_add(1);
    state.total_output_tokens = state.total_output_tokens.saturating_add(s.output_tokens);
    if s.tps_eligible() {
        let tps = s.output_tokens as f64 / (s.duration_ms / 1000.0);
        state.tps_ema = Some(match state.tps_ema {
            None => tps,
            Some(prev) => TPS_ALPHA * tps + (1.0 - TPS_ALPHA) * prev,
        });
    }
}

/// Shared handle to the LoadManager.
#[derive(Clone, Debug)]
pub struct LoadManager {
    inner: Arc<Mutex<State>>,
    events: Events,
}

#[derive(Debug, Default)]
struct State {
    /// Totals per UTC minute (minutes since the epoch), recent ones only.
    minutes: BTreeMap<i64, MinuteTotals>,
    /// TPS state per key, ordered by key.
    models: BTreeMap<ModelKey, (ModelState, TpsSource)>,
    /// In-flight gauges per connected proxy.
    proxies: HashMap<String, ProxyGauges>,
    /// Connection ids handed out so far.
    next_conn: u64,
}

#[derive(Debug, Default)]
struct ProxyGauges {
    /// The connection whose reports count (the newest).
    conn: u64,
    /// Open stats streams of this proxy id.
    streams: u32,
    /// Endpoint → requests in flight.
    inflight: HashMap<Uuid, u64>,
    /// Endpoint → end of the cool-down the proxy reported (Unix ms).
    cooling_until: HashMap<Uuid, UnixMs>,
}

impl LoadManager {
    /// An empty LoadManager.
    pub fn new(events: Events) -> LoadManager {
        LoadManager {
            inner: Arc::new(Mutex::new(State::default())),
            events,
        }
    }

    // === restore ===

    /// Seeds the timeline (seed T015). Minutes outside the window ending at
    /// `now_minute` are ignored.
    pub fn seed_history(&self, rows: &[(i64, MinuteTotals)], now_minute: i64) {
        let mut st = self.inner.lock();
        for (minute, totals) in rows {
            if *minute > now_minute - WINDOW_MINUTES && *minute <= now_minute {
                st.minutes.entry(*minute).or_default().add(totals);
            }
        }
    }

    /// Seeds exact TPS state (source RESTORED).
    pub fn seed_models(&self, rows: Vec<(ModelKey, ModelState)>) {
        let mut st = self.inner.lock();
        for (key, state) in rows {
            st.models.insert(key, (state, TpsSource::Restored));
        }
    }

    /// Seeds TPS from today's daily totals for keys without an exact EMA
    /// (seed T020): `tokens / (duration / 1000)`, skipping zero tokens or
    /// zero duration. Returns how many keys got a TPS this way.
    pub fn seed_tps_from_daily(&self, rows: &[(ModelKey, DailyTotals)]) -> usize {
        let mut st = self.inner.lock();
        let mut seeded = 0;
        for (key, d) in rows {
            let entry = st.models.entry(key.clone()).or_insert_with(|| {
                let state = ModelState {
                    request_count: d.total_requests,
                    total_output_tokens: d.output_tokens,
                    tps_ema: None,
                };
                (state, TpsSource::Restored)
            });
            if entry.0.tps_ema.is_none() && d.output_tokens > 0 && d.duration_ms > 0.0 {
                entry.0.tps_ema = Some(d.output_tokens as f64 / (d.duration_ms / 1000.0));
                seeded += 1;
            }
        }
        seeded
    }

    // === the stats writer ===

    /// The current state of `key`, for the writer to fold a batch into.
    pub fn model_state(&self, key: &ModelKey) -> Option<ModelState> {
        self.inner.lock().models.get(key).map(|(s, _)| *s)
    }

    /// Installs what a committed batch changed: minute deltas and the new
    /// (absolute) model states, which become LIVE.
    pub fn apply_committed(
        &self,
        minutes: &HashMap<i64, MinuteTotals>,
        models: &HashMap<ModelKey, ModelState>,
        now_minute: i64,
    ) {
        let mut st = self.inner.lock();
        for (minute, d) in minutes {
            if *minute > now_minute - WINDOW_MINUTES && *minute <= now_minute + 1 {
                st.minutes.entry(*minute).or_default().add(d);
            }
        }
        let oldest = now_minute - WINDOW_MINUTES;
        st.minutes.retain(|m, _| *m > oldest);
        for (key, state) in models {
            st.models.insert(key.clone(), (*state, TpsSource::Live));
        }
        drop(st);
        self.events.dashboard_changed();
    }

    /// Forgets an endpoint's TPS entries (it was deleted).
    pub fn forget_endpoint(&self, id: Uuid) {
        self.inner.lock().models.retain(|k, _| k.endpoint_id != id);
    }

    // === proxies ===

    /// A proxy opened a stats stream; returns the connection id.
    pub fn proxy_connected(&self, proxy_id: &str) -> u64 {
        let mut st = self.inner.lock();
        st.next_conn += 1;
        let conn = st.next_conn;
        let p = st.proxies.entry(proxy_id.to_string()).or_default();
        p.conn = conn;
        p.streams += 1;
        p.inflight.clear();
        p.cooling_until.clear();
        drop(st);
        self.events.dashboard_changed();
        conn
    }

    /// A proxy's stats stream ended; its gauges expire with its last stream.
    pub fn proxy_disconnected(&self, proxy_id: &str, conn: u64) {
        let mut st = self.inner.lock();
        if let Some(p) = st.proxies.get_mut(proxy_id) {
            p.streams = p.streams.saturating_sub(1);
            if p.conn == conn {
                p.inflight.clear();
                p.cooling_until.clear();
            }
            if p.streams == 0 {
                st.proxies.remove(proxy_id);
            }
        }
        drop(st);
        self.events.dashboard_changed();
    }

    /// Replaces a proxy's in-flight report.
    pub fn set_inflight(&self, proxy_id: &str, conn: u64, inflight: HashMap<Uuid, u64>) {
        self.set_report(proxy_id, conn, inflight, HashMap::new());
    }

    /// Replaces a proxy's report: in-flight counts, and the end of each
    /// cool-down it has (Unix ms).
    pub fn set_report(
        &self,
        proxy_id: &str,
        conn: u64,
        inflight: HashMap<Uuid, u64>,
        cooling_until: HashMap<Uuid, UnixMs>,
    ) {
        let mut st = self.inner.lock();
        let Some(p) = st.proxies.get_mut(proxy_id) else {
            return;
        };
        if p.conn != conn || (p.inflight == inflight && p.cooling_until == cooling_until) {
            return;
        }
        p.inflight = inflight;
        p.cooling_until = cooling_until;
        drop(st);
        self.events.dashboard_changed();
    }

    // === reads ===

    /// Proxies with an open stats stream.
    pub fn connected_proxies(&self) -> usize {
        self.inner.lock().proxies.len()
    }

    /// Requests in flight per endpoint, summed over proxies.
    pub fn active_by_endpoint(&self) -> HashMap<Uuid, u64> {
        let st = self.inner.lock();
        let mut out = HashMap::new();
        for p in st.proxies.values() {
            for (id, n) in &p.inflight {
                *out.entry(*id).or_insert(0) += n;
            }
        }
        out
    }

    /// Proxies that keep each endpoint in a cool-down at `now`.
    pub fn cooling_by_endpoint(&self, now: UnixMs) -> HashMap<Uuid, u64> {
        let st = self.inner.lock();
        let mut out = HashMap::new();
        for p in st.proxies.values() {
            for (id, until) in &p.cooling_until {
                if *until > now {
                    *out.entry(*id).or_insert(0) += 1;
                }
            }
        }
        out
    }

    /// The 60 minutes ending at `now_minute`, oldest first.
    pub fn history(&self, now_minute: i64) -> Vec<(i64, MinuteTotals)> {
        let st = self.inner.lock();
        (now_minute - WINDOW_MINUTES + 1..=now_minute)
            .map(|m| (m, st.minutes.get(&m).copied().unwrap_or_default()))
            .collect()
    }

    /// Mean duration of the attempts completed in the 60 minutes ending at
    /// `now_minute`; `None` if there are none.
    pub fn average_response_time(&self, now_minute: i64) -> Option<f64> {
        let st = self.inner.lock();
        let (count, total) = st
            .minutes
            .range(now_minute - WINDOW_MINUTES + 1..=now_minute)
            .fold((0u64, 0f64), |(c, t), (_, m)| {
                (c.saturating_add(m.count()), t + m.total_duration_ms)
            });
        (count > 0).then(|| total / count as f64)
    }

    /// Calls `f` with every TPS entry, ordered by key, without copying
    /// them. The LoadManager is locked meanwhile: keep `f` short.
    pub fn visit_tps(&self, mut f: impl FnMut(&ModelKey, &ModelState, TpsSource)) {
        for (key, (state, source)) in &self.inner.lock().models {
            f(key, state, *source);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(model: &str) -> ModelKey {
        ModelKey {
            endpoint_id: Uuid::from_u128(1),
            model: model.into(),
            api_kind: 1,
        }
    }

    fn ok(tokens: u64, ms: f64) -> Sample {
        Sample {
            success: true,
            output_tokens: tokens,
            duration_ms: ms,
        }
    }

    #[test]
    fn ema_takes_the_first_sample_as_is_then_smooths() {
        let mut s = ModelState::default();
        observe(&mut s, ok(100, 2000.0));
        assert_eq!(s.tps_ema, Some(50.0));
        observe(&mut s, ok(100, 1000.0));
        assert_eq!(s.tps_ema, Some(0.2 * 100.0 + 0.8 * 50.0));
        observe(&mut s, ok(0, 1000.0));
        observe(&mut s, ok(10, 0.0));
        observe(
            &mut s,
            Sample {
                success: false,
                output_tokens: 10,
                duration_ms: 5.0,
            },
        );
        assert_eq!(s.tps_ema, Some(60.0));
        assert_eq!((s.request_count, s.total_output_tokens), (5, 220));
    }

    /// Seed T013: seeded minutes land in their slots; older ones do not.
    #[test]
    fn seeded_history_fills_the_right_slots() {
        let lm = LoadManager::new(Events::default());
        let now = 1_000_000;
        let t = |s, f| MinuteTotals {
            success: s,
            failure: f,
            total_duration_ms: 10.0 * (s + f) as f64,
        };
        lm.seed_history(
            &[
                (now - 60, t(9, 9)),
                (now - 59, t(1, 0)),
                (now - 3, t(3, 1)),
                (now, t(0, 2)),
            ],
            now,
        );
        let h = lm.history(now);
        assert_eq!(h.len(), 60);
        assert_eq!(h[0], (now - 59, t(1, 0)));
        assert_eq!(h[56], (now - 3, t(3, 1)));
        assert_eq!(h[59], (now, t(0, 2)));
        assert_eq!(h.iter().map(|(_, m)| m.count()).sum::<u64>(), 7);
        assert_eq!(lm.average_response_time(now), Some(10.0));
        // An hour later nothing is left in the window.
        assert_eq!(lm.average_response_time(now + 60), None);
        assert!(lm.history(now + 60).iter().all(|(_, m)| m.count() == 0));
    }

    /// Seed T018: 100 tokens / 2000 ms → 50; zero tokens or duration skipped.
    #[test]
    fn tps_seeds_from_daily_totals() {
        let lm = LoadManager::new(Events::default());
        let d = |o, ms| DailyTotals {
            total_requests: 1,
            output_tokens: o,
            duration_ms: ms,
            ..Default::default()
        };
        let n = lm.seed_tps_from_daily(&[
            (key("a"), d(100, 2000.0)),
            (key("b"), d(0, 2000.0)),
            (key("c"), d(100, 0.0)),
        ]);
        assert_eq!(n, 1);
        let mut tps = Vec::new();
        lm.visit_tps(|key, state, source| tps.push((key.model.clone(), state.tps_ema, source)));
        let tps: Vec<_> = tps.iter().map(|(m, t, s)| (m.as_str(), *t, *s)).collect();
        assert_eq!(
            tps,
            vec![
                ("a", Some(50.0), TpsSource::Restored),
                ("b", None, TpsSource::Restored),
                ("c", None, TpsSource::Restored)
            ]
        );
    }

    #[test]
    fn exact_state_wins_over_the_daily_fallback() {
        let lm = LoadManager::new(Events::default());
        let exact = ModelState {
            request_count: 4,
            total_output_tokens: 7,
            tps_ema: Some(12.5),
        };
        lm.seed_models(vec![(key("a"), exact)]);
        let d = DailyTotals {
            output_tokens: 100,
            duration_ms: 2000.0,
            ..Default::default()
        };
        assert_eq!(lm.seed_tps_from_daily(&[(key("a"), d)]), 0);
        assert_eq!(lm.model_state(&key("a")), Some(exact));
    }

    #[test]
    fn committed_batches_move_the_window_and_go_live() {
        let lm = LoadManager::new(Events::default());
        let now = 500;
        let mut state = ModelState::default();
        observe(&mut state, ok(10, 1000.0));
        let minutes = HashMap::from([(
            now,
            MinuteTotals {
                success: 1,
                failure: 0,
                total_duration_ms: 1000.0,
            },
        )]);
        lm.apply_committed(&minutes, &HashMap::from([(key("a"), state)]), now);
        assert_eq!(lm.history(now)[59].1.success, 1);
        assert_eq!(lm.average_response_time(now), Some(1000.0));
        let mut sources = Vec::new();
        lm.visit_tps(|_, _, source| sources.push(source));
        assert_eq!(sources, [TpsSource::Live]);
        // Minute boundary: the same totals sit one slot further back.
        assert_eq!(lm.history(now + 1)[58].1.success, 1);
    }

    #[test]
    fn cool_downs_count_proxies_until_they_end() {
        let lm = LoadManager::new(Events::default());
        let ep = Uuid::now_v7();
        let a = lm.proxy_connected("a");
        let b = lm.proxy_connected("b");
        lm.set_report("a", a, HashMap::new(), HashMap::from([(ep, 10_000)]));
        lm.set_report("b", b, HashMap::new(), HashMap::from([(ep, 20_000)]));
        assert_eq!(lm.cooling_by_endpoint(9_999).get(&ep), Some(&2));
        assert_eq!(lm.cooling_by_endpoint(10_000).get(&ep), Some(&1));
        assert_eq!(lm.cooling_by_endpoint(20_000).get(&ep), None);
        lm.proxy_disconnected("b", b);
        assert_eq!(lm.cooling_by_endpoint(0).get(&ep), Some(&1));
    }

    #[test]
    fn active_requests_sum_over_proxies_and_expire() {
        let lm = LoadManager::new(Events::default());
        let ep = Uuid::from_u128(9);
        let a = lm.proxy_connected("a");
        let b = lm.proxy_connected("b");
        lm.set_inflight("a", a, HashMap::from([(ep, 2)]));
        lm.set_inflight("b", b, HashMap::from([(ep, 3)]));
        assert_eq!(lm.active_by_endpoint()[&ep], 5);
        assert_eq!(lm.connected_proxies(), 2);
        // "a" reconnects before its old stream is noticed as closed.
        let a2 = lm.proxy_connected("a");
        lm.set_inflight("a", a, HashMap::from([(ep, 100)]));
        lm.proxy_disconnected("a", a);
        assert_eq!(lm.active_by_endpoint()[&ep], 3);
        lm.set_inflight("a", a2, HashMap::from([(ep, 1)]));
        assert_eq!(lm.active_by_endpoint()[&ep], 4);
        lm.proxy_disconnected("b", b);
        lm.proxy_disconnected("a", a2);
        assert!(lm.active_by_endpoint().is_empty());
        assert_eq!(lm.connected_proxies(), 0);
    }
}
