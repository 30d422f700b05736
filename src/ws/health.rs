//! `GET /ws/health`: the node's WebSocket figures, without authentication.

use super::{Hub, registry};
use crate::http::with;
use serde::Serialize;
use std::sync::Arc;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

#[derive(Serialize)]
struct WsHealth {
    status: &'static str,
    node_id: String,
    #[serde(flatten)]
    stats: registry::Stats,
}

/// GET /ws/health
pub(super) fn health(
    hub: &Arc<Hub>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path!("ws" / "health")
        .and(warp::get())
        .and(with(hub.clone()))
        .map(|hub: Arc<Hub>| {
            warp::reply::json(&WsHealth {
                status: if hub.is_shutting_down() {
                    "shutting_down"
                } else {
                    "ok"
                },
                node_id: hub.node_id.clone(),
                stats: hub.registry.stats(),
            })
            .into_response()
        })
}
