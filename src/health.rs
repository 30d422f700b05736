//! `GET /health`: liveness plus a database round trip.

use crate::http::{State, with_state};
use serde::Serialize;
use std::time::Duration;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

#[derive(Serialize)]
struct Health {
    status: &'static str,
    service: &'static str,
    version: &'static str,
    timestamp: String,
    database: &'static str,
}

/// GET /health
pub fn route(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("health")
        .and(warp::get())
        .and(with_state(state))
        .then(|state: State| async move {
            let db_ok = database_ok(&state).await;
            let body = Health {
                status: if db_ok { "ok" } else { "degraded" },
                service: "chatapp",
                version: env!("CARGO_PKG_VERSION"),
                timestamp: crate::now_rfc3339(),
                database: if db_ok { "ok" } else { "unavailable" },
            };
            let status = if db_ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            warp::reply::with_status(warp::reply::json(&body), status).into_response()
        })
}

async fn database_ok(state: &State) -> bool {
    let check = async {
        let client = state.pool.get().await.ok()?;
        client.simple_query("select 1").await.ok()
    };
    matches!(
        tokio::time::timeout(
            Duration::from_secs(state.config.database.connect_timeout_secs),
            check
        )
        .await,
        Ok(Some(_))
    )
}
