//! `billing bench-api`: the query API's reads with a valid API key, at increasing concurrency, with its baseline
//! measured in the same run.
//!
//! In an environment of its own (keyspace, ClickHouse database, topics), it runs the invoicer and query-api in this
//! process, creates through the API (with an admin key of a tenant whose rate limits no run reaches) a customer, an
//! add-on and a one-off invoice of it, then measures, for each concurrency level, `--seconds` of back-to-back
//! requests from that many clients: `GET /v1/invoices/{id}` as configured by default (key check, the answer from the
//! instance's invoice cache), the same from a second query-api with the cache off (the invoice and its payment read
//! from Cassandra, the ETag computed: what a cache miss costs) and `GET /v1/customers/{id}/usage` (key check, the
//! customer's subscriptions and aggregates), then the first instance's cache hits and misses. The baseline is an axum
//! handler in this process answering the same invoice body as a constant, through the same HTTP client: what HTTP
//! itself costs on this machine. The load generator shares the machine's cores with the servers, so every figure is
//! a lower bound of what the API serves to clients on other machines. Everything it created is dropped at the end.

// Rates and latencies are measurements, not money: floating point is the right tool here.
#![allow(clippy::float_arithmetic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use billing_runtime::{Settings, Shutdown};
use serde_json::{json, Value};

use crate::children::{drop_environment, free_addr, met};
use crate::measure::grouped;

/// Benchmark options.
#[derive(clap::Args)]
pub struct Args {
    /// Clients in flight at each level.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    concurrency: Vec<usize>,
    /// Seconds measured at each level, per endpoint.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

/// The floor for `GET /v1/invoices/{id}`.
const FLOOR_RPS: f64 = 5_000.0;
const FLOOR_P99: Duration = Duration::from_millis(10);

/// What one level of one endpoint measured.
struct Level {
    concurrency: usize,
    requests: usize,
    errors: usize,
    seconds: f64,
    p50: Duration,
    p99: Duration,
}

impl Level {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// Run the benchmark; its data is dropped and its services stopped whatever happens.
pub async fn run(base: Settings, args: Args, stop: Shutdown) -> anyhow::Result<()> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut settings = base;
    settings.kafka.topic_prefix = format!("bench.{id}.");
    settings.cassandra.keyspace = format!("bench_{id}");
    settings.clickhouse.database = format!("bench_{id}");
    settings.invoicer.group_id = format!("bench-{id}-invoicer");
    settings.invoicer.listen = free_addr()?;
    settings.query_api.listen = free_addr()?;
    let services = stop.child_token();
    let result = measure(&settings, &args, services.clone()).await;
    services.cancel();
    let prefix = settings.kafka.topic_prefix.clone();
    drop_environment(&settings, &[prefix], &[&settings.invoicer.group_id]).await;
    println!("cleaned up: keyspace, database, topics and group of bench-api {id}");
    result
}

async fn measure(settings: &Settings, args: &Args, services: Shutdown) -> anyhow::Result<()> {
    billing_store::migrate::run(settings)
        .await
        .context("migrate")?;
    let invoicer = tokio::spawn(billing_invoicer::run(settings.clone(), services.clone()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let api = tokio::spawn(billing_query_api::run(
        settings.clone(),
        services.clone(),
        move |a| {
            let _ = tx.send(a);
        },
    ));
    let base = format!("http://{}", rx.await.context("query-api did not start")?);
    // A second instance without the invoice cache: what every read costs in the store.
    let mut uncached = settings.clone();
    uncached.query_api.listen = free_addr()?;
    uncached.query_api.invoice_cache_ttl = Duration::ZERO;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let second = tokio::spawn(billing_query_api::run(
        uncached,
        services.clone(),
        move |a| {
            let _ = tx.send(a);
        },
    ));
    let store_base = format!("http://{}", rx.await.context("query-api did not start")?);
    let key = crate::keys::admin_key(settings, "bench", crate::keys::unlimited()).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1024)
        .build()?;

    // The data read: a customer and a one-off invoice of it.
    let post = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    for (path, body) in [
        (
            "/v1/customers",
            json!({"customer_id": "cus-bench", "name": "Bench Co", "currency": "EUR"}),
        ),
        (
            "/v1/add_ons",
            json!({"code": "setup", "name": "Setup", "amount": "100.00", "amount_currency": "EUR"}),
        ),
    ] {
        let r = post(path, body).await?;
        anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
    }
    let r = post(
        "/v1/invoices",
        json!({"customer_id": "cus-bench", "fees": [{"add_on_code": "setup", "units": 3}]}),
    )
    .await?;
    anyhow::ensure!(r.status() == 201, "one-off invoice: {}", r.status());
    let invoice: Value = r.json().await?;
    let invoice_id = invoice["invoice_id"]
        .as_str()
        .context("the invoice has an id")?
        .to_owned();
    let invoice_url = format!("{base}/v1/invoices/{invoice_id}");
    let body = http
        .get(&invoice_url)
        .bearer_auth(&key)
        .send()
        .await?
        .bytes()
        .await?;

    // The baseline: the same body, constant, from a bare axum handler.
    let constant = axum::Router::new().route(
        "/constant",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(free_addr()?).await?;
    let constant_url = format!("http://{}/constant", listener.local_addr()?);
    let baseline = services.clone();
    tokio::spawn(async move {
        axum::serve(listener, constant)
            .with_graceful_shutdown(async move { baseline.cancelled().await })
            .await
    });

    println!(
        "bench-api: {} s per level, concurrency {:?}, query-api, invoicer and the load generator in one process on this machine",
        args.seconds, args.concurrency
    );
    let endpoints = [
        ("baseline: constant body (axum)", constant_url, None),
        (
            "GET /v1/invoices/{id}",
            invoice_url.clone(),
            Some(key.clone()),
        ),
        (
            "GET /v1/invoices/{id}, cache off (store reads)",
            invoice_url.replace(&base, &store_base),
            Some(key.clone()),
        ),
        (
            "GET /v1/customers/{id}/usage",
            format!("{base}/v1/customers/cus-bench/usage"),
            Some(key.clone()),
        ),
    ];
    let mut invoice_levels = Vec::new();
    println!(
        "| Endpoint | Concurrency | Requests/s | p50 | p99 | Errors |\n|---|---|---|---|---|---|"
    );
    for (name, url, key) in &endpoints {
        for &c in &args.concurrency {
            let level = load(
                &http,
                url,
                key.as_deref(),
                c,
                Duration::from_secs(args.seconds),
            )
            .await;
            println!(
                "| {name} | {c} | {} | {:.2} ms | {:.2} ms | {} |",
                grouped(level.rps()),
                level.p50.as_secs_f64() * 1e3,
                level.p99.as_secs_f64() * 1e3,
                level.errors
            );
            if *name == "GET /v1/invoices/{id}" {
                invoice_levels.push(level);
            }
        }
    }
    let best = invoice_levels
        .iter()
        .filter(|l| l.p99 < FLOOR_P99 && l.errors == 0)
        .max_by(|a, b| a.rps().total_cmp(&b.rps()));
    match best {
        Some(l) => println!(
            "GET invoice, best level with p99 < 10 ms: {} req/s at concurrency {} (p99 {:.2} ms): floor ≥ 5,000 req/s {}",
            grouped(l.rps()),
            l.concurrency,
            l.p99.as_secs_f64() * 1e3,
            met(l.rps() >= FLOOR_RPS)
        ),
        None => println!("GET invoice: no level kept p99 under 10 ms: floor {}", met(false)),
    }
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let lookups = |result: &str| {
        let prefix =
            format!("billing_query_api_invoice_cache_lookups_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or("0")
            .to_owned()
    };
    println!(
        "invoice cache of the first instance: {} hits, {} misses (invoice_cache_ttl {:?})",
        lookups("hit"),
        lookups("miss"),
        settings.query_api.invoice_cache_ttl
    );
    services.cancel();
    api.await??;
    second.await??;
    invoicer.await??;
    Ok(())
}

/// `concurrency` clients sending GETs to `url` back to back for `length`; latencies of the 200s, errors counted.
async fn load(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    concurrency: usize,
    length: Duration,
) -> Level {
    let started = Instant::now();
    let until = started + length;
    let mut tasks = tokio::task::JoinSet::new();
    let shared = Arc::new((http.clone(), url.to_owned(), key.map(str::to_owned)));
    for _ in 0..concurrency {
        let shared = shared.clone();
        tasks.spawn(async move {
            let (http, url, key) = &*shared;
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            while Instant::now() < until {
                let t = Instant::now();
                let mut req = http.get(url);
                if let Some(k) = key {
                    req = req.bearer_auth(k);
                }
                let ok = match req.send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    latencies.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        if let Ok((l, e)) = r {
            all.extend(l);
            errors += e;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort();
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Level {
        concurrency,
        requests: all.len(),
        errors,
        seconds,
        p50: at(0.50),
        p99: at(0.99),
    }
}
