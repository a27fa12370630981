//! The Kubernetes manifests under `deploy/k8s/` cannot be applied here (no cluster), so this checks what can be
//! checked: every document parses; every service has a Deployment running `billing <service>` with the configuration
//! the ConfigMap gives, which loads into real `Settings`; its port is the one that configuration makes it listen on;
//! its probes are the paths the code serves; every ConfigMap and Secret referred to exists; and the autoscalers scale
//! Deployments that exist, on the consumer group, topic or metric the code uses, never above the partition count.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use billing_runtime::health::{HEALTH_PATH, READY_PATH};
use billing_runtime::kafka::Topics;
use billing_runtime::Settings;
use serde::Deserialize;
use serde_yaml::Value;

fn k8s_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy/k8s")
}

/// Every document of every manifest, by (kind, name).
fn documents() -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifest in deploy/k8s");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if v.is_null() {
                continue;
            }
            let kind = v["kind"].as_str().expect("kind").to_owned();
            let name = v["metadata"]["name"].as_str().expect("name").to_owned();
            assert!(
                out.insert((kind.clone(), name.clone()), v).is_none(),
                "{kind} {name} defined twice"
            );
        }
    }
    out
}

/// The settings a container gets: the ConfigMap's file (where `BILLING_CONFIG` points) under its environment.
fn settings_of(docs: &BTreeMap<(String, String), Value>, container: &Value) -> Settings {
    let env: Vec<(String, String)> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let path = &env
        .iter()
        .find(|(k, _)| k == "BILLING_CONFIG")
        .expect("BILLING_CONFIG")
        .1;
    let (dir, file) = path.rsplit_once('/').unwrap();
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("{dir} is mounted"));
    let config = &docs[&("ConfigMap".to_owned(), "billing-config".to_owned())];
    let text = config["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("the ConfigMap has {file}"));
    assert_eq!(mount["name"], "config");
    // The tests of this file run in parallel in one process: each load gets its own file.
    static LOADS: AtomicUsize = AtomicUsize::new(0);
    let load = LOADS.fetch_add(1, Ordering::Relaxed);
    let tmp = std::env::temp_dir().join(format!("k8s-{}-{load}-{file}", std::process::id()));
    std::fs::write(&tmp, text).unwrap();
    let secrets = &docs[&("Secret".to_owned(), "billing-secrets".to_owned())];
    let secret_env = secrets["stringData"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_owned(),
                v.as_str().unwrap().to_owned(),
            )
        });
    let settings = Settings::load_with_env(Some(&tmp), env.clone().into_iter().chain(secret_env))
        .unwrap_or_else(|e| panic!("the manifests' configuration does not load: {e}"));
    std::fs::remove_file(&tmp).ok();
    settings
}

#[test]
fn every_service_runs_with_its_port_probes_and_configuration() {
    let docs = documents();
    let services = [
        "query-api",
        "rating",
        "ingest",
        "invoicer",
        "payments",
        "webhooks",
    ];
    for name in services {
        let dep = &docs[&("Deployment".to_owned(), format!("billing-{name}"))];
        let pod = &dep["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["args"][0], name, "billing-{name} runs `billing {name}`");
        // Every ConfigMap and Secret it names exists.
        for v in pod["volumes"].as_sequence().unwrap() {
            let cm = v["configMap"]["name"].as_str().unwrap();
            assert!(
                docs.contains_key(&("ConfigMap".to_owned(), cm.to_owned())),
                "{cm}"
            );
        }
        for r in c["envFrom"].as_sequence().unwrap() {
            let s = r["secretRef"]["name"].as_str().unwrap();
            assert!(
                docs.contains_key(&("Secret".to_owned(), s.to_owned())),
                "{s}"
            );
        }
        let settings = settings_of(&docs, c);
        let listen = match name {
            "query-api" => settings.query_api.listen,
            "rating" => settings.rating.listen,
            "ingest" => settings.ingest.listen,
            "invoicer" => settings.invoicer.listen,
            "payments" => settings.payments.listen,
            "webhooks" => settings.webhooks.listen,
            _ => unreachable!(),
        };
        assert!(
            listen.ip().is_unspecified(),
            "{name} listens on every interface in a pod, not {listen}"
        );
        let port = &c["ports"][0];
        assert_eq!(port["name"], "http");
        assert_eq!(
            port["containerPort"].as_u64(),
            Some(u64::from(listen.port())),
            "{name}'s containerPort is the port its configuration listens on"
        );
        for (probe, path) in [
            ("readinessProbe", READY_PATH),
            ("livenessProbe", HEALTH_PATH),
        ] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{name} {probe}");
            assert_eq!(get["port"], "http", "{name} {probe}");
        }
        let svc = &docs[&("Service".to_owned(), format!("billing-{name}"))];
        assert_eq!(
            svc["spec"]["selector"]["app.kubernetes.io/name"], name,
            "the Service selects billing-{name}'s pods"
        );
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
        assert_eq!(
            dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
            dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        );
    }
    let job = &docs[&("Job".to_owned(), "billing-migrate".to_owned())];
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"][0],
        "migrate"
    );
    let ticker = &docs[&("Deployment".to_owned(), "billing-ticker".to_owned())];
    assert_eq!(
        ticker["spec"]["template"]["spec"]["containers"][0]["args"][0],
        "ticker"
    );
}

#[test]
fn rating_and_the_invoicer_scale_on_what_the_code_measures() {
    let docs = documents();
    let rating = &docs[&("Deployment".to_owned(), "billing-rating".to_owned())];
    let settings = settings_of(&docs, &rating["spec"]["template"]["spec"]["containers"][0]);
    let topics = Topics::new(&settings.kafka);
    let invoicer_metrics = billing_invoicer::metrics::Metrics::new().unwrap();
    let exported: Vec<String> = invoicer_metrics
        .registry
        .gather()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    for (target, check) in [
        ("billing-rating", "kafka"),
        ("billing-invoicer", "prometheus"),
    ] {
        let so = &docs[&("ScaledObject".to_owned(), target.to_owned())];
        assert_eq!(so["apiVersion"], "keda.sh/v1alpha1");
        assert_eq!(so["spec"]["scaleTargetRef"]["name"], target);
        assert!(docs.contains_key(&("Deployment".to_owned(), target.to_owned())));
        let max = so["spec"]["maxReplicaCount"].as_i64().unwrap();
        assert!(
            (1..=i64::from(settings.kafka.partitions)).contains(&max),
            "{target}: at most one replica per partition"
        );
        let trigger = &so["spec"]["triggers"][0];
        assert_eq!(trigger["type"], check, "{target}");
        let meta = &trigger["metadata"];
        match check {
            "kafka" => {
                assert_eq!(meta["consumerGroup"], settings.rating.group_id.as_str());
                assert_eq!(meta["topic"], topics.usage.as_str());
                assert_eq!(meta["bootstrapServers"], settings.kafka.brokers.as_str());
            }
            _ => {
                let query = meta["query"].as_str().unwrap();
                let metric = format!("{}_{}", billing_invoicer::metrics::PREFIX, "lifecycle_lag");
                assert!(query.contains(&metric), "{query}");
                assert!(
                    exported.contains(&metric),
                    "the invoicer exports {metric}: {exported:?}"
                );
            }
        }
    }
}
