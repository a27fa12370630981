//! Child processes of the benchmarks: `billing <service>` started from the running executable with a log file each,
//! stopped with SIGTERM (then SIGKILL after 20 s) when asked or when dropped, also on error.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Child processes of a bench, stopped with SIGTERM (then waited for) when dropped.
#[derive(Default)]
pub struct Children(Vec<(&'static str, Child)>);

impl Children {
    /// Start `billing <name>` with `env`, its output in `$TMPDIR/bench-<id>-<name>.log`; returns its pid.
    pub fn spawn(
        &mut self,
        name: &'static str,
        env: &[(String, String)],
        id: &str,
    ) -> anyhow::Result<u32> {
        let exe = std::env::current_exe().context("own executable")?;
        let log = std::env::temp_dir().join(format!("bench-{id}-{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(exe)
            .arg(name)
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        let pid = child.id();
        println!(
            "  started `billing {name}` pid {pid}, log {}",
            log.display()
        );
        self.0.push((name, child));
        Ok(pid)
    }

    /// SIGTERM one child by name and wait for it (SIGKILL after 20 s).
    pub fn stop(&mut self, name: &str) {
        if let Some(i) = self.0.iter().position(|(n, _)| *n == name) {
            let (n, child) = self.0.remove(i);
            terminate(n, child);
        }
    }

    /// The exit status of a child that has exited.
    pub fn exited(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        self.0
            .iter_mut()
            .find(|(n, _)| *n == name)
            .and_then(|(_, c)| c.try_wait().ok().flatten())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (n, child) in self.0.drain(..) {
            terminate(n, child);
        }
    }
}

fn terminate(name: &str, mut child: Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("  {name} did not stop after SIGTERM; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

/// A free loopback address for a child's listener ([`billing_runtime::health::free_loopback_addr`]).
pub fn free_addr() -> anyhow::Result<std::net::SocketAddr> {
    Ok(billing_runtime::health::free_loopback_addr()?)
}

/// "met" or "NOT met", for a target.
pub fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

impl Children {
    /// Fails when a child has exited (none of them should before it is stopped).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (n, c) in &mut self.0 {
            if let Ok(Some(status)) = c.try_wait() {
                anyhow::bail!("`billing {n}` exited early: {status} (see its log)");
            }
        }
        Ok(())
    }
}

/// Drop what a bench created: its keyspace and ClickHouse database, the topics of every prefix in `topic_prefixes`
/// and the consumer `groups`. Best effort: a failure leaves something behind, never fails the bench.
pub async fn drop_environment(
    settings: &billing_runtime::Settings,
    topic_prefixes: &[String],
    groups: &[&str],
) {
    if let Ok(session) = billing_runtime::cql::connect(&settings.cassandra).await {
        let _ = session
            .query_unpaged(
                format!("DROP KEYSPACE IF EXISTS {}", settings.cassandra.keyspace),
                (),
            )
            .await;
    }
    let _ = billing_runtime::clickhouse::server_client(&settings.clickhouse)
        .query(&format!(
            "DROP DATABASE IF EXISTS {}",
            settings.clickhouse.database
        ))
        .execute()
        .await;
    let admin: Result<rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>, _> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &settings.kafka.brokers)
            .create();
    if let Ok(admin) = admin {
        let opts = rdkafka::admin::AdminOptions::new();
        for prefix in topic_prefixes {
            let mut cfg = settings.kafka.clone();
            cfg.topic_prefix = prefix.clone();
            let topics = billing_runtime::kafka::Topics::new(&cfg);
            let names: Vec<&str> = topics.all().iter().map(|(n, _)| *n).collect();
            let _ = admin.delete_topics(&names, &opts).await;
        }
        let _ = admin.delete_groups(groups, &opts).await;
    }
}
