//! docker-compose.yml cannot run here (no Docker engine), so this checks what can be checked: it parses, it names
//! every service and port the code expects, and its billing configuration loads into real `Settings`.

use std::path::PathBuf;

use billing_runtime::Settings;
use serde_yaml::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn compose() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap())
        .unwrap()
}

#[test]
fn compose_names_every_service_and_port() {
    let doc = compose();
    let services = doc["services"].as_mapping().expect("services");
    let expected = [
        ("kafka", "9092"),
        ("scylla", "9042"),
        ("clickhouse", "8123"),
        ("query-api", "8080"),
        ("rating", "8081"),
        ("ingest", "8082"),
        ("invoicer", "8083"),
        ("payments", "8084"),
    ];
    for (name, port) in expected {
        let svc = &services[name];
        let ports: Vec<&str> = svc["ports"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} publishes ports"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            ports.contains(&format!("{port}:{port}").as_str()),
            "{name} publishes {port}: {ports:?}"
        );
    }
    assert!(
        services.contains_key("migrate"),
        "the one-shot migrate service"
    );
}

#[test]
fn compose_runs_real_subcommands_with_a_valid_configuration() {
    let doc = compose();
    let services = doc["services"].as_mapping().unwrap();
    let subcommands = [
        "migrate",
        "rating",
        "query-api",
        "ingest",
        "invoicer",
        "payments",
    ];
    for name in subcommands {
        let svc = &services[name];
        let command = match &svc["command"] {
            Value::String(s) => s.clone(),
            Value::Sequence(s) => s[0].as_str().unwrap().to_owned(),
            other => panic!("{name}: command {other:?}"),
        };
        assert_eq!(command, name, "{name} runs `billing {name}`");
        assert!(
            svc["build"]["dockerfile"].as_str() == Some("deploy/Dockerfile"),
            "{name} is built by deploy/Dockerfile"
        );

        let env = svc["environment"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{name} environment is a map"));
        let vars: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
                };
                (k.as_str().unwrap().to_owned(), v)
            })
            .collect();
        let config_file = vars
            .iter()
            .find(|(k, _)| k == "BILLING_CONFIG")
            .map(|(_, v)| {
                repo()
                    .join("deploy")
                    .join(PathBuf::from(v).file_name().unwrap())
            });
        let settings = Settings::load_with_env(config_file.as_deref(), vars)
            .unwrap_or_else(|e| panic!("{name}: compose configuration does not load: {e}"));
        assert_eq!(settings.kafka.brokers, "kafka:9092");
        assert_eq!(settings.cassandra.nodes, vec!["scylla:9042".to_owned()]);
        assert_eq!(settings.clickhouse.url, "http://clickhouse:8123");
        assert_eq!(settings.query_api.listen.port(), 8080);
        assert_eq!(settings.rating.listen.port(), 8081);
    }
}
