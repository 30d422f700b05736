//! `GET /health`: liveness plus a database round trip.

use crate::db::Pool;
use crate::http::with;
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
pub fn route(
    pool: &Pool,
    timeout: Duration,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path!("health")
        .and(warp::get())
        .and(with(pool.clone()))
        .and(with(timeout))
        .then(health)
}

async fn health(pool: Pool, timeout: Duration) -> Response {
    let db_ok = database_ok(&pool, timeout).await;
    let body = Health {
        status: if db_ok { "ok" } else { "degraded" },
        service: "chatapp",
        version: env!("CARGO_PKG_VERSION"),
        timestamp: crate::support::now_rfc3339(),
        database: if db_ok { "ok" } else { "unavailable" },
    };
    let status = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

async fn database_ok(pool: &Pool, timeout: Duration) -> bool {
    let check = async {
        let client = pool.get().await.ok()?;
        client.simple_query("select 1").await.ok()
    };
    matches!(tokio::time::timeout(timeout, check).await, Ok(Some(_)))
}
