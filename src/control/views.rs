//! The one place internal state becomes protocol views: the daemon's
//! status types (`state`) stay free to change, the wire types in
//! [`super::protocol`] do not.

use super::protocol::{
    BrokerErrorKind, EngineName, EngineView, EventView, EventsReport, HefOutputView, HefView, LinkView,
};
use crate::inference::engine::EngineKind;
use crate::inference::engine::hailo::{HefLayout, HefOutput};
use crate::state::{BrokerFailure, EngineState, LinkState, RecentEvent};

pub fn engine_name(k: EngineKind) -> EngineName {
    match k {
        EngineKind::Hailo => EngineName::Hailo,
        EngineKind::OnnxCpu => EngineName::OnnxCpu,
    }
}

pub fn engine_view(e: EngineState) -> EngineView {
    let EngineState { active, hailo_present, fallbacks, last_error, model, hailo_seconds, cpu_seconds, hef } = e;
    EngineView {
        active: active.map(engine_name),
        hailo_present,
        fallbacks,
        last_error,
        model,
        hailo_seconds,
        cpu_seconds,
        hef: hef.map(hef_view),
    }
}

fn hef_view(h: HefLayout) -> HefView {
    let HefLayout { input_format, input_order, outputs } = h;
    HefView {
        input_format,
        input_order,
        outputs: outputs
            .into_iter()
            .map(|HefOutput { name, order, nms_shape }| HefOutputView { name, order, nms_shape })
            .collect(),
    }
}

pub fn link_view(l: LinkState) -> LinkView {
    let LinkState {
        vpn_up,
        vpn_interface,
        handshake_age_s,
        handshake_source,
        vpn_down_since_ms,
        vpn_last_error,
        broker_connected,
        broker,
        last_error,
        last_error_kind,
        since_ms,
        reconnects,
        inbound_discarded,
    } = l;
    LinkView {
        vpn_up,
        vpn_interface,
        handshake_age_s,
        handshake_source,
        vpn_down_since_ms,
        vpn_last_error,
        broker_connected,
        broker,
        last_error,
        last_error_kind: last_error_kind.map(|k| match k {
            BrokerFailure::Tls => BrokerErrorKind::Tls,
            BrokerFailure::Auth => BrokerErrorKind::Auth,
            BrokerFailure::Refused => BrokerErrorKind::Refused,
            BrokerFailure::Network => BrokerErrorKind::Network,
            BrokerFailure::Protocol => BrokerErrorKind::Protocol,
        }),
        since_ms,
        reconnects,
        inbound_discarded,
    }
}

/// `events`: `pending_from_seq` is the oldest seq of the `events` stream
/// still in the outbox; an entry below it is delivered.
/// `snapshots_pending_from`: the oldest seq still in the `snapshots` stream
/// (its next seq when empty): a snapshot whose last chunk is below it has
/// left the outbox.
pub fn events_report(entries: Vec<RecentEvent>, pending_from_seq: u64, snapshots_pending_from: u64) -> EventsReport {
    let events = entries
        .into_iter()
        .map(|e| (e.snapshot_id.is_some().then(|| e.snapshot_last_seq.is_some_and(|l| l < snapshots_pending_from)), e))
        .map(
            |(
                snapshot_delivered,
                RecentEvent { seq, kind, camera, rule, label, track_id, time_ms, direction, snapshot_id, .. },
            )| EventView {
                seq,
                kind: kind.to_string(),
                camera,
                rule,
                label,
                track_id,
                time_ms,
                direction,
                delivered: seq < pending_from_seq,
                snapshot_id,
                snapshot_delivered,
            },
        )
        .collect();
    EventsReport { pending_from_seq, events }
}
