//! fern logging: one line per request (method, path without query, status,
//! latency). Query strings are never logged: `/ws?token=...` carries a token.

pub fn init(level: &str) -> Result<(), fern::InitError> {
    let level = level.parse().unwrap_or(log::LevelFilter::Info);
    fern::Dispatch::new()
        .format(|out, message, record| {
            out.finish(format_args!(
                "{} {:5} {}: {}",
                crate::support::now_rfc3339(),
                record.level(),
                record.target(),
                message
            ))
        })
        .level(level)
        // hyper and tokio-postgres are chatty at debug level.
        .level_for("hyper", log::LevelFilter::Info)
        .level_for("tokio_postgres", log::LevelFilter::Info)
        .chain(std::io::stderr())
        .apply()?;
    Ok(())
}

pub fn log_request(info: warp::log::Info<'_>) {
    log::info!(
        target: "chatapp::request",
        "{} {} {} {:.1}ms",
        info.method(),
        info.path(),
        info.status().as_u16(),
        info.elapsed().as_secs_f64() * 1000.0
    );
}
