//! Test harness: real servers on 127.0.0.1 and the real binaries. Every test gets its own emulator on its own
//! port, its own queue and tables, and its own worker processes; everything is stopped on drop.

pub mod dynamodb_local;
pub mod proxy;

pub use dynamodb_local::{DynamoLocal, Engine, Region};

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use serde_json::json;

pub const REGION: &str = "us-east-1";

/// A free TCP port on 127.0.0.1 for a server that cannot take port 0 (bound, then released for it to take),
/// below the kernel's ephemeral range: a port the kernel picked for us is the kind it also hands out as the
/// source port of a new outgoing connection, which could take it before the server binds ("address already
/// in use": seen once the suite's tests ran in one binary, side by side). Never the same port twice in
/// this process.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let (low, high) = (15_000u16, ephemeral_start().min(32_768));
    for _ in 0..1_000 {
        let port = fastrand::u16(low..high);
        let mut given = GIVEN.lock().unwrap();
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// The first port of the kernel's ephemeral range (Linux's default when unreadable).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where test logs go: target/test-logs/<test>/...
pub fn log_dir(test: &str) -> PathBuf {
    let dir = repo().join("target").join("test-logs").join(test);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Poll `f` until it returns Some, or panic with `what` at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A child process killed (its whole process group) on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }

    /// Wait for exit with a deadline; panics at the deadline.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "process did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let pgid = format!("-{}", self.child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Spawn `cmd` in its own process group with stdout+stderr to `log`. Drop stops it; if the test process dies
/// first (a `cargo test` killed by a timeout or ^C runs no drop), the kernel kills it (`PR_SET_PDEATHSIG`), so
/// no emulator, gate or worker outlives its test. The death signal is tied to the thread that spawned: a test's
/// own thread or a runtime worker, both of which live as long as the test, never a `spawn_blocking` thread.
pub fn spawn_logged(mut cmd: Command, log: &Path) -> Proc {
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::create(log).unwrap();
    cmd.stdout(file.try_clone().unwrap())
        .stderr(file)
        .stdin(Stdio::null())
        .process_group(0);
    // SAFETY: runs in the forked child before exec, and prctl(2) is async-signal-safe.
    #[cfg(target_os = "linux")]
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    Proc {
        child,
        log: log.to_path_buf(),
    }
}

/// The SQS + DynamoDB emulator (ministack, from the project's virtual environment) behind the local region's
/// IAM gate (chaos/proxy.py --iam strict, chaos/iamgate): every request is authorised against the policies
/// Terraform deploys (terraform/policies/), as its principal, before ministack sees it. `endpoint` is the gate's.
pub struct Emulator {
    pub endpoint: String,
    /// ministack itself, behind the gate.
    proc: Proc,
    pub gate: proxy::FaultProxy,
    test: String,
    /// What a test that plants a defect expects the gate to deny (text each denial line must contain one of):
    /// any other denial still fails the test.
    expected_denials: std::sync::Mutex<Vec<String>>,
}

/// The access key of the test's own clients: the deployer (what `terraform apply` runs as), registered with every
/// gate. Workers get their fixture's worker key (`Fixture::env`).
pub const TEST_KEY: &str = "test";

/// LOCAL_IAM=strict|soft|off (default strict), as in harness/gate.py.
pub fn iam_mode() -> String {
    std::env::var("LOCAL_IAM").unwrap_or_else(|_| "strict".into())
}

/// The test clients' configuration for a local endpoint: the deployer's key (see `TEST_KEY`).
pub async fn sdk_for(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await
}

pub fn ministack_bin() -> PathBuf {
    std::env::var_os("MINISTACK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/ministack"))
}

impl Emulator {
    pub async fn start(test: &str) -> Emulator {
        Self::start_on(test, free_port()).await
    }

    /// The gate listens on `port` (what the workers use), ministack on a port of its own.
    pub async fn start_on(test: &str, port: u16) -> Emulator {
        let raw_port = free_port();
        let bin = ministack_bin();
        assert!(
            bin.exists(),
            "{} missing: run scripts/bootstrap (the README's test command does)",
            bin.display()
        );
        let mut cmd = Command::new(bin);
        cmd.env("BIND_HOST", "127.0.0.1")
            .env("GATEWAY_PORT", raw_port.to_string());
        let proc = spawn_logged(
            cmd,
            &log_dir(test).join(format!("ministack-{raw_port}.log")),
        );
        let raw_endpoint = format!("http://127.0.0.1:{raw_port}");
        let use_dir = std::env::var_os("LOCAL_IAM_USE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| log_dir(test).join("iam-use"));
        let gate = proxy::FaultProxy::start_with(
            test,
            "iam-gate",
            &raw_endpoint,
            &[
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--iam".into(),
                iam_mode(),
                "--iam-use-dir".into(),
                use_dir.display().to_string(),
            ],
        )
        .await;
        wait_for(
            "the emulator to listen",
            Duration::from_secs(30),
            || async {
                std::net::TcpStream::connect(("127.0.0.1", raw_port))
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
        let emu = Emulator {
            endpoint: gate.url().to_owned(),
            proc,
            gate,
            test: test.to_owned(),
            expected_denials: std::sync::Mutex::new(Vec::new()),
        };
        // The test's own clients (TEST_KEY) act as the deployer; fixtures add their own principals.
        emu.add_stack(json!({
            "queue_name": "tests.fifo", "orders_table": "tests", "groups_table": "tests-groups",
            "keys": {TEST_KEY: "deployer"},
        }))
        .await;
        emu
    }

    /// Register a stack with the gate (chaos/iamgate: names to render the policies with, keys of principals).
    pub async fn add_stack(&self, stack: serde_json::Value) {
        if iam_mode() == "off" {
            return;
        }
        let (status, v) = self
            .gate
            .call(reqwest::Method::POST, "/iam/stacks", Some(stack))
            .await;
        assert_eq!(status, 200, "the IAM gate refused the stack: {v}");
    }

    /// Send one service's requests to another server (DynamoDB Local).
    pub async fn route(&self, service: &str, url: &str) {
        let (status, v) = self
            .gate
            .call(
                reqwest::Method::POST,
                "/upstream",
                Some(json!({"service": service, "url": url})),
            )
            .await;
        assert_eq!(status, 200, "gate route: {v}");
    }

    /// A denial this test plants on purpose: a gate log line containing `needle` does not fail it.
    pub fn expect_denial(&self, needle: &str) {
        self.expected_denials
            .lock()
            .unwrap()
            .push(needle.to_owned());
    }

    /// The gate's denials so far ("iam: DENIED ..." lines of its log: principal, action, resource).
    pub fn denials(&self) -> Vec<String> {
        self.gate
            .log_text()
            .lines()
            .filter(|l| l.starts_with("iam: DENIED"))
            .map(str::to_owned)
            .collect()
    }

    pub async fn sdk(&self) -> aws_config::SdkConfig {
        sdk_for(&self.endpoint).await
    }

    /// Stop the emulator and its gate (an outage: nothing answers on `port`).
    pub fn stop(&mut self) {
        self.proc.signal("KILL");
        let _ = self.proc.child.wait();
        self.gate.stop();
    }
}

impl Drop for Emulator {
    /// Every test that ran against the local region fails if the gate refused anything it did not plant: AWS
    /// would have refused it too (the gate's log names principal, action and resource).
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let expected = self.expected_denials.lock().unwrap().clone();
        let denials: Vec<String> = self
            .denials()
            .into_iter()
            .filter(|d| !expected.iter().any(|e| d.contains(e.as_str())))
            .collect();
        if !denials.is_empty() {
            panic!(
                "{}: the local region's IAM gate denied {} request(s) the test did not plant, as AWS would:\n{}",
                self.test,
                denials.len(),
                denials.join("\n")
            );
        }
    }
}

/// One test's queue and tables.
pub struct Fixture {
    pub sqs: aws_sdk_sqs::Client,
    pub ddb: aws_sdk_dynamodb::Client,
    pub queue_url: String,
    pub orders_table: String,
    pub groups_table: String,
    pub endpoint: String,
    /// DynamoDB's own endpoint when the tables are not on the emulator (DynamoDB Local).
    pub ddb_endpoint: Option<String>,
    pub test: String,
    pub suffix: String,
    /// The IAM gate's control URL: workers on a simulated instance reach Auto Scaling through the gate.
    pub gate_control: String,
}

/// A copy of terraform/policies/ in the test's log folder with `plant` applied to one template (`name`, e.g.
/// "worker"): the defect a test expects the local region to refuse.
pub fn planted_policies(test: &str, name: &str, plant: impl Fn(&str) -> String) -> PathBuf {
    let dir = log_dir(test).join(format!("policies-{}", suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(repo().join("terraform/policies")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_owned();
        let text = if file.to_string_lossy() == format!("{name}.json.tftpl") {
            let planted = plant(&text);
            assert_ne!(planted, text, "the plant changed nothing in {name}");
            planted
        } else {
            text
        };
        std::fs::write(dir.join(file), text).unwrap();
    }
    dir
}

/// The worker principal's access key of the fixture named with `s`.
pub fn worker_key(s: &str) -> String {
    // Letters and digits only: DynamoDB Local refuses any other access key id.
    format!("WORKER{s}")
}

pub fn suffix() -> String {
    format!("{:08x}", fastrand::u32(..))
}

impl Fixture {
    pub async fn new(emu: &Emulator, test: &str) -> Fixture {
        Self::with_queue_attrs(emu, test, &[]).await
    }

    pub async fn with_queue_attrs(
        emu: &Emulator,
        test: &str,
        attrs: &[(QueueAttributeName, &str)],
    ) -> Fixture {
        Self::named(emu, test, &suffix(), attrs).await
    }

    /// The queue and tables named with `s` (the same names again on a restarted emulator).
    pub async fn named(
        emu: &Emulator,
        test: &str,
        s: &str,
        attrs: &[(QueueAttributeName, &str)],
    ) -> Fixture {
        Self::named_on(emu, None, test, s, attrs).await
    }

    /// The queue on the emulator, the tables on `dynamo` when given (else on the emulator too).
    pub async fn named_on(
        emu: &Emulator,
        dynamo: Option<&DynamoLocal>,
        test: &str,
        s: &str,
        attrs: &[(QueueAttributeName, &str)],
    ) -> Fixture {
        // The tables on DynamoDB Local are reached through the gate too (Region::start routes DynamoDB there).
        let _ = dynamo;
        Self::create(emu, test, s, attrs, None).await
    }

    /// A fixture whose principals' policies are rendered from `policy_dir` (a planted copy of
    /// terraform/policies/) instead of the deployed templates.
    pub async fn with_policies(emu: &Emulator, test: &str, policy_dir: &Path) -> Fixture {
        Self::create(emu, test, &suffix(), &[], Some(policy_dir)).await
    }

    async fn create(
        emu: &Emulator,
        test: &str,
        s: &str,
        attrs: &[(QueueAttributeName, &str)],
        policy_dir: Option<&Path>,
    ) -> Fixture {
        emu.add_stack(json!({
            "queue_name": format!("orders-{s}.fifo"),
            "orders_table": format!("orders-{s}"),
            "groups_table": format!("order-groups-{s}"),
            "keys": {worker_key(s): "worker", format!("OPERATOR{s}"): "operator"},  // see operator_env
            "policy_dir": policy_dir.map(|d| d.display().to_string()),
        }))
        .await;
        let sdk = emu.sdk().await;
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        let mut q = sqs
            .create_queue()
            .queue_name(format!("orders-{s}.fifo"))
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::VisibilityTimeout, "120");
        for (k, v) in attrs {
            q = q.attributes(k.clone(), *v);
        }
        let queue_url = q
            .send()
            .await
            .expect("create queue")
            .queue_url()
            .unwrap()
            .to_owned();
        let orders_table = format!("orders-{s}");
        let groups_table = format!("order-groups-{s}");
        create_table(&ddb, &orders_table, "OrderID").await;
        create_table(&ddb, &groups_table, "MessageGroupId").await;
        Fixture {
            sqs,
            ddb,
            queue_url,
            orders_table,
            groups_table,
            endpoint: emu.endpoint.clone(),
            ddb_endpoint: None,
            test: test.to_owned(),
            suffix: s.to_owned(),
            gate_control: emu.gate.control().to_owned(),
        }
    }

    /// The same queue and tables, with workers reaching them through `endpoint` (a fault proxy); the test's own
    /// clients still talk to the emulator directly.
    pub fn through(&self, endpoint: &str) -> Fixture {
        Fixture {
            sqs: self.sqs.clone(),
            ddb: self.ddb.clone(),
            queue_url: self.queue_url.clone(),
            orders_table: self.orders_table.clone(),
            groups_table: self.groups_table.clone(),
            endpoint: endpoint.to_owned(),
            ddb_endpoint: self.ddb_endpoint.clone(),
            test: self.test.clone(),
            suffix: self.suffix.clone(),
            gate_control: self.gate_control.clone(),
        }
    }

    /// The environment a worker (or spot-sim's workers) needs to reach this fixture.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_REGION", REGION),
            // The instance role's key: the gate holds the worker to terraform/policies/worker.json.tftpl.
            ("AWS_ACCESS_KEY_ID", worker_key(&self.suffix).as_str()),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("ORDER_WORKER_QUEUE_URL", self.queue_url.as_str()),
            ("ORDER_WORKER_ORDERS_TABLE", self.orders_table.as_str()),
            ("ORDER_WORKER_GROUPS_TABLE", self.groups_table.as_str()),
            ("RUST_LOG", "info,order_worker=debug"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Some(d) = &self.ddb_endpoint {
            env.push(("AWS_ENDPOINT_URL_DYNAMODB".into(), d.clone()));
        }
        env
    }

    /// The environment of the operator's tools against this fixture (`order-worker verify`, `order-worker
    /// repair`): the operator's key, held to terraform/policies/operator.json.tftpl by the gate.
    pub fn operator_env(&self) -> Vec<(String, String)> {
        let mut env = self.env();
        for (k, v) in env.iter_mut() {
            if k == "AWS_ACCESS_KEY_ID" {
                *v = format!("OPERATOR{}", self.suffix);
            }
        }
        env
    }

    /// Start an order-worker against this fixture. `args` come after the defaults and win.
    pub fn worker(&self, name: &str, args: &[&str]) -> Proc {
        self.worker_as(name, &worker_key(&self.suffix), args)
    }

    /// The same, as the principal of access key `key` (TEST_KEY: the deployer, who may do anything).
    pub fn worker_as(&self, name: &str, key: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_order-worker"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        cmd.envs(self.env());
        cmd.env("AWS_ACCESS_KEY_ID", key);
        // Harness defaults through the environment, so a test's own flags win.
        cmd.envs([
            ("ORDER_WORKER_METRICS_ADDR", "127.0.0.1:0"),
            ("ORDER_WORKER_WAIT_TIME", "1s"),
            ("ORDER_WORKER_IMDS_DISABLED", "true"),
            ("ORDER_WORKER_INSTANCE_ID", name),
        ]);
        cmd.args(args);
        spawn_logged(cmd, &log_dir(&self.test).join(format!("{name}.log")))
    }

    /// Send bodies to one group, in order, 10 per batch; dedup id = `dedup(i)`.
    pub async fn send(&self, group: &str, messages: &[(String, String)]) {
        for chunk in messages.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, (dedup, body))| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .message_group_id(group)
                        .message_deduplication_id(dedup)
                        .build()
                        .unwrap()
                })
                .collect();
            let out = self
                .sqs
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .expect("send batch");
            assert!(out.failed().is_empty(), "send failed: {:?}", out.failed());
        }
    }

    /// Send orders `ids` (valid bodies) to `group`, dedup id = order id.
    pub async fn send_orders(&self, group: &str, ids: &[String]) {
        let msgs: Vec<(String, String)> = ids
            .iter()
            .map(|id| (id.clone(), order_body(id, group)))
            .collect();
        self.send(group, &msgs).await;
    }

    /// Every record in the orders table.
    pub async fn records(&self) -> Vec<HashMap<String, AttributeValue>> {
        let mut all = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .ddb
                .scan()
                .table_name(&self.orders_table)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("scan");
            all.extend(out.items().iter().cloned());
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                return all;
            }
        }
    }

    pub async fn wait_records(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Vec<HashMap<String, AttributeValue>> {
        wait_for(
            &format!("{n} records in {}", self.orders_table),
            timeout,
            || async {
                let r = self.records().await;
                (r.len() >= n).then_some(r)
            },
        )
        .await
    }

    /// The group's row in the groups table, read consistently (its `item()` is None when there is none).
    pub async fn group_row(
        &self,
        group: &str,
    ) -> aws_sdk_dynamodb::operation::get_item::GetItemOutput {
        self.ddb
            .get_item()
            .table_name(&self.groups_table)
            .key("MessageGroupId", AttributeValue::S(group.into()))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
    }

    /// Wait until the queue holds nothing, visible or in flight.
    pub async fn wait_queue_drained(&self, timeout: Duration) {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        wait_for("the queue drained", timeout, || async {
            let a = self
                .sqs
                .get_queue_attributes()
                .queue_url(&self.queue_url)
                .attribute_names(A::ApproximateNumberOfMessages)
                .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
                .send()
                .await
                .unwrap();
            let n: u64 = a
                .attributes()
                .unwrap()
                .values()
                .map(|v| v.parse::<u64>().unwrap())
                .sum();
            (n == 0).then_some(())
        })
        .await;
    }

    /// Audit the table against what was sent (the same code as `order-worker verify`).
    pub async fn audit(&self, sent: &[order_worker::verify::Sent]) -> order_worker::verify::Report {
        let (stored, last) =
            order_worker::verify::read_table(&self.ddb, &self.orders_table, &self.groups_table)
                .await
                .expect("read table");
        order_worker::verify::audit(sent, &stored, &last, true)
    }

    /// Messages visible right now (one immediate receive, no wait).
    pub async fn receive_now(&self, max: i32) -> Vec<aws_sdk_sqs::types::Message> {
        self.sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max)
            .wait_time_seconds(0)
            .visibility_timeout(30)
            .send()
            .await
            .expect("receive")
            .messages()
            .to_vec()
    }
}

pub(crate) async fn create_table(ddb: &aws_sdk_dynamodb::Client, name: &str, key: &str) {
    ddb.create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(key)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(key)
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("create table");
}

pub fn ids(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i:06}")).collect()
}

/// Send `per_group` orders to each of `groups` groups, interleaved, and return the manifest in send order.
pub async fn send_interleaved(
    fx: &Fixture,
    groups: usize,
    per_group: usize,
) -> Vec<order_worker::verify::Sent> {
    let mut manifest = Vec::new();
    // Ten at a time per group, round robin: the queue sees the groups interleaved.
    for round in 0..per_group.div_ceil(10) {
        for g in 0..groups {
            let group = format!("cust-{g}");
            let batch: Vec<String> = (round * 10..((round + 1) * 10).min(per_group))
                .map(|i| format!("ord-{g}-{i:05}"))
                .collect();
            fx.send_orders(&group, &batch).await;
            manifest.extend(batch.iter().map(|id| sent(id, &group, "accepted")));
        }
    }
    manifest
}

/// Wait (with a deadline) until a process's log contains `needle`.
pub async fn wait_log(proc: &Proc, needle: &str, timeout: Duration) {
    wait_for(
        &format!("{needle:?} in the worker log"),
        timeout,
        || async { proc.log_text().contains(needle).then_some(()) },
    )
    .await;
}

/// A valid order body.
pub fn order_body(id: &str, customer: &str) -> String {
    format!(
        r#"{{"order_id":"{id}","customer_id":"{customer}","items":[{{"sku":"SKU-1","qty":2,"unit_price_cents":1299}}],"currency":"EUR","placed_at":"2026-11-25T12:00:00Z"}}"#
    )
}

pub fn sent(id: &str, group: &str, expect: &str) -> order_worker::verify::Sent {
    order_worker::verify::Sent {
        order_id: Some(id.into()),
        group: group.into(),
        expect: Some(expect.into()),
        ..Default::default()
    }
}

pub fn s(item: &HashMap<String, AttributeValue>, k: &str) -> String {
    item.get(k)
        .and_then(|v| v.as_s().or_else(|_| v.as_n()).ok())
        .cloned()
        .unwrap_or_default()
}

/// A worker's metrics address, from its log line `metrics on ... addr=...`.
pub async fn metrics_addr(proc: &Proc) -> String {
    wait_for(
        "the worker's metrics address",
        Duration::from_secs(20),
        || async {
            let text = proc.log_text();
            let line = text.lines().find(|l| l.contains("metrics on"))?;
            // `--log-format json` puts it in a field, the text format after `addr=`.
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) => v["addr"].as_str().map(str::to_owned),
                Err(_) => line
                    .split("addr=")
                    .nth(1)
                    .map(|a| a.split_whitespace().next().unwrap().to_owned()),
            }
        },
    )
    .await
}

/// Read one counter from a worker's metrics.
pub async fn metric(proc: &Proc, line_prefix: &str) -> f64 {
    let addr = metrics_addr(proc).await;
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap();
    body.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The spot-sim binary (built beside order-worker by `cargo build --workspace`).
pub fn spot_sim_bin() -> PathBuf {
    std::env::var_os("SPOT_SIM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_BIN_EXE_order-worker")).with_file_name("spot-sim"))
}

/// A running spot-sim: the local Spot region (metadata, Auto Scaling, FIS).
pub struct Sim {
    pub api: String,
    /// spot-sim itself, stopped when the `Sim` is dropped.
    _proc: Proc,
    http: reqwest::Client,
}

/// One simulated instance with no process: the test runs the worker itself.
pub struct Instance {
    pub id: String,
    pub imds_url: String,
}

impl Sim {
    /// Start spot-sim with no fleet of its own (`--desired 0`) plus `args`.
    pub async fn start(test: &str, args: &[&str]) -> Sim {
        let bin = spot_sim_bin();
        assert!(
            bin.exists(),
            "{} missing: cargo build --workspace",
            bin.display()
        );
        let dir = log_dir(test);
        let ready = dir.join(format!("spot-sim-{}.ready", suffix()));
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0", "--desired", "0", "--ready-file"])
            .arg(&ready)
            .args(args);
        let proc = spawn_logged(cmd, &dir.join(format!("spot-sim-{}.log", suffix())));
        let api = wait_for("spot-sim's ready file", Duration::from_secs(20), || async {
            let text = std::fs::read_to_string(&ready).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            v["api"].as_str().map(str::to_owned)
        })
        .await;
        Sim {
            api,
            _proc: proc,
            http: reqwest::Client::new(),
        }
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let r = self
            .http
            .post(format!("{}{path}", self.api))
            .json(&body)
            .send()
            .await
            .expect("spot-sim control call");
        let status = r.status();
        let v: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
        assert!(status.is_success(), "POST {path}: {status} {v}");
        v
    }

    pub async fn status(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/_sim/status", self.api))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("status json")
    }

    pub async fn instance(&self, id: &str) -> serde_json::Value {
        let s = self.status().await;
        s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no instance {id} in {s}"))
    }

    /// Events recorded for one instance, as text.
    pub async fn events(&self, id: &str) -> Vec<String> {
        self.instance(id).await["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    pub async fn launch_external(&self) -> Instance {
        let v = self
            .post("/_sim/instances", serde_json::json!({"external": true}))
            .await;
        Instance {
            id: v["id"].as_str().unwrap().to_owned(),
            imds_url: v["imds_url"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn interrupt(&self, id: &str, in_seconds: f64) -> serde_json::Value {
        self.post(
            &format!("/_sim/instances/{id}/interrupt"),
            serde_json::json!({"in_seconds": in_seconds}),
        )
        .await
    }

    pub async fn fault(&self, id: &str, body: serde_json::Value) {
        self.post(&format!("/_sim/instances/{id}/imds-fault"), body)
            .await;
    }
}

impl Fixture {
    /// A worker running "on" a simulated instance: metadata and Auto Scaling from spot-sim, group name from the
    /// instance tags, instance id from metadata.
    pub fn worker_on(&self, sim: &Sim, instance: &Instance, args: &[&str]) -> Proc {
        // Auto Scaling through the IAM gate, as SQS and DynamoDB: CompleteLifecycleAction is authorised too.
        post_blocking(
            &self.gate_control,
            "/upstream",
            &json!({"service": "autoscaling", "url": sim.api}).to_string(),
        );
        self.worker_with_imds(
            &format!("worker-{}", instance.id),
            &self.endpoint,
            &instance.imds_url,
            args,
        )
    }

    pub fn worker_with_imds(
        &self,
        name: &str,
        autoscaling: &str,
        imds_url: &str,
        args: &[&str],
    ) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_order-worker"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        cmd.envs(self.env());
        cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds_url)
            .env("AWS_ENDPOINT_URL_AUTO_SCALING", autoscaling);
        cmd.envs([
            ("ORDER_WORKER_METRICS_ADDR", "127.0.0.1:0"),
            ("ORDER_WORKER_WAIT_TIME", "1s"),
            ("ORDER_WORKER_IMDS_POLL", "200ms"),
            ("ORDER_WORKER_HOOK_HEARTBEAT", "1s"),
        ]);
        cmd.args(args);
        spawn_logged(
            cmd,
            &log_dir(&self.test).join(format!("{name}-{}.log", suffix())),
        )
    }
}

/// One JSON POST to a control port, from sync code (a worker's start); panics unless it answers 200.
pub fn post_blocking(base: &str, path: &str, body: &str) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{base}: {e}"));
    write!(
        c,
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "POST {base}{path}: {answer}"
    );
}

/// A `key=value` field of the first log line containing `marker`.
pub fn line_field(log: &str, marker: &str, key: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no {marker:?} line:\n{log}"));
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .trim_matches('"')
        .to_owned()
}

/// GET a worker's /readyz status code.
pub async fn readyz(proc: &Proc) -> u16 {
    let addr = metrics_addr(proc).await;
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// An accepted order's record as a group task would hand it to the store (tests that call the store
/// directly; change a field with `Record { receive_count: 2, ..accepted_record(..) }`).
pub fn accepted_record(
    key: &str,
    group: &str,
    message_id: &str,
    seq: &str,
) -> order_worker::schema::Record {
    order_worker::schema::Record {
        order_key: key.into(),
        group_id: group.into(),
        status: order_worker::schema::Status::Accepted,
        reason: None,
        total_cents: Some(1),
        currency: Some("EUR".into()),
        item_count: 1,
        payload_sha256: "sha".into(),
        sqs_message_id: message_id.into(),
        sqs_sequence_number: Some(seq.into()),
        receive_count: 1,
        processed_by: "i-test".into(),
        processed_at: "2026-12-06T12:00:00.000Z".into(),
    }
}

/// What a store commit borrows besides the store (admission and abort), for tests that call the store
/// directly; `ctx()` is a commit that may retry until it works.
#[derive(Default)]
pub struct CommitEnv {
    pub admission: order_worker::admission::Admission,
    pub abort: tokio_util::sync::CancellationToken,
}

impl CommitEnv {
    pub fn ctx(&self) -> order_worker::store::CommitContext<'_> {
        order_worker::store::CommitContext {
            budget: order_worker::retry::Budget::UntilItWorks,
            abort: &self.abort,
            admission: &self.admission,
        }
    }
}

impl Fixture {
    /// A store on this fixture's tables, through `client` (the fixture's own, or one through a fault proxy).
    pub fn store_via(&self, client: aws_sdk_dynamodb::Client) -> order_worker::store::Store {
        order_worker::store::Store::new(
            client,
            self.orders_table.clone(),
            self.groups_table.clone(),
        )
    }
}
