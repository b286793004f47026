//! A real RabbitMQ with its MQTT plugin (Debian's `rabbitmq-server`,
//! installed by scripts/setup.sh) on loopback ports of its own: the broker
//! that clusters, beside the Mosquitto of every other test.
//!
//! Each instance gets its own node name, data folder, Erlang cookie and
//! `epmd` (Erlang's port mapper, started here in the foreground on a port
//! of its own rather than as the shared daemon `rabbitmq-server` would
//! spawn), all bound to 127.0.0.1, and is killed with its process group on
//! drop.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_for};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const EPMD: &str = "/usr/bin/epmd";

pub struct RabbitMq {
    /// The MQTT listener's port.
    pub port: u16,
    server: Child,
    epmd: Child,
    pub dir: tempfile::TempDir,
}

impl RabbitMq {
    /// Starts the broker and waits (up to 2 minutes: Erlang boots slowly on
    /// a loaded machine) for its MQTT port. Panics, naming the fix, when
    /// RabbitMQ is not installed: this test must not pass without it.
    pub fn start() -> Self {
        assert!(
            Path::new(SERVER).exists() && Path::new(EPMD).exists(),
            "{SERVER} or {EPMD} missing: run scripts/setup.sh (it installs Debian's rabbitmq-server)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, amqp, dist, epmd_port) = (free_port(), free_port(), free_port(), free_port());
        let conf = format!(
            "listeners.tcp.default = 127.0.0.1:{amqp}\n\
             mqtt.listeners.tcp.default = 127.0.0.1:{port}\n\
             mqtt.allow_anonymous = true\n\
             loopback_users = none\n\
             log.console = false\n"
        );
        std::fs::write(dir.path().join("rabbitmq.conf"), conf).expect("write rabbitmq.conf");
        std::fs::write(dir.path().join("enabled_plugins"), "[rabbitmq_mqtt].\n").expect("write enabled_plugins");
        let cookie = dir.path().join(".erlang.cookie");
        std::fs::write(&cookie, format!("SPARKTEST{port}")).expect("write the cookie");
        std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o400)).expect("chmod cookie");

        let epmd = Command::new(EPMD)
            .args(["-address", "127.0.0.1", "-port", &epmd_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("starting epmd");
        wait_for(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", epmd_port)).ok())
            .expect("epmd did not start");

        let log = std::fs::File::create(dir.path().join("server.log")).expect("server.log");
        let server = Command::new(SERVER)
            .env("HOME", dir.path())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("RABBITMQ_NODENAME", format!("sparktest{port}@localhost"))
            .env("RABBITMQ_CONFIG_FILE", dir.path().join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.path().join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.path().join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.path().join("log"))
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("starting rabbitmq-server");
        let rabbit = RabbitMq { port, server, epmd, dir };
        if wait_for(Duration::from_secs(120), || std::net::TcpStream::connect(("127.0.0.1", port)).ok()).is_none() {
            panic!("RabbitMQ's MQTT listener did not open port {port}; log:\n{}", rabbit.log_text());
        }
        rabbit
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        let mut text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("log")) {
            for e in entries.flatten() {
                text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        text
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        // The whole group: the shell script, erl and beam.smp.
        for child in [&mut self.server, &mut self.epmd] {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
        }
    }
}
