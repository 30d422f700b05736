//! The container files, checked as far as they can be without a container
//! engine: the compose file parses and wires the services as documented,
//! every path the Dockerfile copies exists, it copies every directory the
//! binary embeds files from, its images are pinned, and the healthcheck it
//! runs works against a real server.

use crate::helpers::*;
use serde_yaml::Value;
use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn the_compose_file_runs_postgres_then_migrate_then_serve() {
    let text = std::fs::read_to_string(repo("docker-compose.yml")).unwrap();
    let compose: Value = serde_yaml::from_str(&text).expect("docker-compose.yml is YAML");
    let services = &compose["services"];

    assert!(services["postgres"]["healthcheck"]["test"].is_sequence());
    assert_eq!(services["migrate"]["command"][0], "migrate");
    assert_eq!(
        services["migrate"]["depends_on"]["postgres"]["condition"],
        "service_healthy"
    );
    let node = &services["chatapp"];
    assert_eq!(node["command"][0], "serve");
    assert_eq!(
        node["depends_on"]["migrate"]["condition"],
        "service_completed_successfully"
    );
    let key = node["environment"]["CHATAPP_TOKEN_KEY"].as_str().unwrap();
    assert!(
        key.starts_with("${CHATAPP_TOKEN_KEY"),
        "from the environment: {key}"
    );
    assert!(node["stop_grace_period"].as_str().is_some());
    for multinode in ["chatapp2", "nginx"] {
        assert_eq!(services[multinode]["profiles"][0], "multinode");
    }
    let nginx_conf = services["nginx"]["volumes"][0].as_str().unwrap();
    let source = nginx_conf.split(':').next().unwrap();
    assert!(repo(source).is_file(), "{source} is missing");
}

#[test]
fn the_dockerfile_copies_what_exists_from_pinned_images_and_runs_as_a_user() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let mut copies = 0;
    for line in text.lines().map(str::trim) {
        if let Some(image) = line.strip_prefix("FROM ") {
            let image = image.split_whitespace().next().unwrap();
            let tag = image.split(':').nth(1).unwrap_or("latest");
            assert!(
                tag.chars().any(|c| c.is_ascii_digit()) && tag != "latest",
                "{image} is not pinned to a version"
            );
        }
        if let Some(args) = line.strip_prefix("COPY ") {
            if args.starts_with("--from") {
                continue;
            }
            let parts: Vec<&str> = args.split_whitespace().collect();
            for source in &parts[..parts.len() - 1] {
                assert!(repo(source).exists(), "COPY {source}: no such path");
                copies += 1;
            }
        }
    }
    assert!(copies >= 5, "{copies} sources copied");
    assert!(text.contains("USER 10001"), "runs as root");
    assert!(text.contains("STOPSIGNAL SIGTERM"));
    assert!(text.contains(r#"CMD ["chatapp", "healthcheck"]"#));
    assert!(
        text.contains("--mount=type=cache"),
        "dependencies are not cached"
    );
}

/// The top-level directories whose files `src/` embeds by a path from the
/// crate's root (`include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", ..))`).
fn embedded_directories(dir: &Path, out: &mut std::collections::BTreeSet<String>) {
    let marker = r#"env!("CARGO_MANIFEST_DIR"), "/"#;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            embedded_directories(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for (at, _) in text.match_indices(marker) {
                let rest = &text[at + marker.len()..];
                out.extend(rest.split(['/', '"']).next().map(str::to_string));
            }
        }
    }
}

#[test]
fn the_dockerfile_copies_every_directory_the_binary_embeds() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let mut embedded = std::collections::BTreeSet::from(["src".to_string(), "sql".to_string()]);
    embedded_directories(&repo("src"), &mut embedded);
    assert!(embedded.contains("web"), "{embedded:?}");
    for dir in embedded {
        assert!(
            text.lines()
                .any(|l| l.trim() == format!("COPY {dir} ./{dir}")),
            "the build stage does not copy {dir}/"
        );
    }
}

#[tokio::test]
async fn the_healthcheck_command_passes_against_a_server_and_fails_without_one() {
    let app = spawn_app().await;
    let healthcheck = |port: u16| {
        Command::new(env!("CARGO_BIN_EXE_chatapp"))
            .arg("healthcheck")
            .env_remove("CONFIG_PATH")
            .env("PORT", port.to_string())
            .env("CHATAPP_HOST", "0.0.0.0")
            .output()
            .unwrap()
    };

    let up = tokio::task::spawn_blocking(move || healthcheck(app.addr.port()));
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = tokio::task::spawn_blocking(move || healthcheck(free));

    let up = up.await.unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let down = down.await.unwrap();
    assert_eq!(
        down.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
}
