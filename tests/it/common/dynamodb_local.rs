//! DynamoDB Local, AWS's own DynamoDB engine (a Java program that `scripts/bootstrap` installs), for the tests
//! that must hold on both engines: SQS stays on ministack, the tables move to DynamoDB Local.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{free_port, log_dir, repo, spawn_logged, wait_for, Emulator, Fixture, Proc};

/// Where the tables live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// On the same ministack as the queue.
    Ministack,
    /// On DynamoDB Local.
    DynamoLocal,
}

/// DynamoDB Local on its own port, stopped on drop.
pub struct DynamoLocal {
    pub endpoint: String,
    _proc: Proc,
}

/// The jar, as `scripts/dynamodb-local-jar` finds it (the one place that knows where bootstrap put it).
fn jar() -> PathBuf {
    let out = Command::new(repo().join("scripts/dynamodb-local-jar"))
        .output()
        .expect("run scripts/dynamodb-local-jar");
    assert!(
        out.status.success(),
        "DynamoDB Local is not installed ({}): run scripts/bootstrap (the README's test command does)",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

impl DynamoLocal {
    pub async fn start(test: &str) -> DynamoLocal {
        let jar = jar();
        let port = free_port();
        let mut cmd = Command::new("java");
        // In memory (a fresh engine per test), one database whatever the credentials and region, no telemetry.
        cmd.arg(format!(
            "-Djava.library.path={}",
            jar.parent().unwrap().join("DynamoDBLocal_lib").display()
        ))
        .arg("-jar")
        .arg(&jar)
        .args(["-inMemory", "-sharedDb", "-disableTelemetry", "-port"])
        .arg(port.to_string())
        // It writes a metadata file into its working directory: keep it with the test's logs.
        .current_dir(log_dir(test));
        let proc = spawn_logged(
            cmd,
            &log_dir(test).join(format!("dynamodb-local-{port}.log")),
        );
        let d = DynamoLocal {
            endpoint: format!("http://127.0.0.1:{port}"),
            _proc: proc,
        };
        // The JVM listens a while before it serves: wait for an answer, not a port.
        let client = aws_sdk_dynamodb::Client::new(&d.sdk().await);
        wait_for(
            "DynamoDB Local to answer",
            Duration::from_secs(90),
            || async { client.list_tables().send().await.ok().map(|_| ()) },
        )
        .await;
        d
    }

    pub async fn sdk(&self) -> aws_config::SdkConfig {
        super::sdk_for(&self.endpoint).await
    }
}

/// A local region for one test: ministack for SQS, and the tables on the engine asked for.
pub struct Region {
    pub emu: Emulator,
    pub dynamo: Option<DynamoLocal>,
    /// The test's name with its engine: its logs' folder.
    pub test: String,
}

impl Region {
    pub async fn start(test: &str, engine: Engine) -> Region {
        let test = match engine {
            Engine::Ministack => format!("{test}-ministack"),
            Engine::DynamoLocal => format!("{test}-dynamodb-local"),
        };
        let test = test.as_str();
        let (emu, dynamo) = match engine {
            Engine::Ministack => (Emulator::start(test).await, None),
            Engine::DynamoLocal => tokio::join!(Emulator::start(test), async {
                Some(DynamoLocal::start(test).await)
            }),
        };
        if let Some(d) = &dynamo {
            emu.route("dynamodb", &d.endpoint).await;
        }
        Region {
            emu,
            dynamo,
            test: test.to_owned(),
        }
    }

    pub async fn fixture(&self) -> Fixture {
        Fixture::named_on(
            &self.emu,
            self.dynamo.as_ref(),
            &self.test,
            &super::suffix(),
            &[],
        )
        .await
    }
}
