//! `sparkctl` on a real terminal (tmux): aligned, coloured tables, and the
//! `sync --wait` progress bar from an empty bar to a full one.

mod common;

use std::path::Path;
use std::time::Duration;

use common::tmux::Tmux;
use common::*;

fn sparkctl_cmd(socket: &Path, args: &str) -> String {
    format!("{} --socket {} {args}", sparkctl_bin().display(), socket.display())
}

#[test]
fn status_on_a_terminal_is_an_aligned_coloured_table() {
    let broker = Broker::start();
    let mut cfg = DaemonConfig::new(&broker.url());
    cfg.fps = 1.0;
    let d = Daemon::start(&cfg);
    let s = cfg.socket();
    wait_for(Duration::from_secs(30), || (status_json(&s)["link"]["broker_connected"] == true).then_some(()))
        .expect("broker connected");

    let tmux = Tmux::run("status", &sparkctl_cmd(&s, "status"));
    let screen = tmux.wait_for("__DONE__ 0", Duration::from_secs(20));
    let lines: Vec<&str> = screen.lines().take_while(|l| !l.starts_with("__DONE__")).collect();
    let keys = ["device", "version", "uptime", "engine", "inferences", "frames", "queue", "link", "records lost"];
    assert_eq!(lines.len(), keys.len(), "one line per field:\n{screen}");
    // Values start in one column, two spaces after the longest key.
    let col = "records lost".len() + 2;
    for (line, key) in lines.iter().zip(keys) {
        assert!(line.starts_with(key), "{line:?} should start with {key:?}");
        assert_eq!(&line[col - 2..col], "  ", "{line:?}");
        assert_ne!(line.as_bytes()[col], b' ', "value not in column {col}: {line:?}");
    }
    assert!(screen.contains("test-dev") && screen.contains("onnx-cpu"), "{screen}");
    // Green for the engine and the connected broker, on a terminal only.
    let coloured = tmux.screen(true);
    assert!(coloured.contains("\x1b[32monnx-cpu"), "no colour on a terminal: {coloured:?}");
    assert!(coloured.contains("\x1b[32mconnected"), "{coloured:?}");
    drop(tmux);

    // Doctor on a terminal: coloured statuses and indented fixes.
    let tmux = Tmux::run("doctor", &sparkctl_cmd(&s, "doctor"));
    let screen = tmux.wait_for("__DONE__", Duration::from_secs(30));
    assert!(screen.contains("pass  daemon"), "{screen}");
    assert!(screen.contains("passed,"), "{screen}");
    let coloured = tmux.screen(true);
    assert!(coloured.contains("\x1b[32mpass"), "{coloured:?}");
    if screen.contains("warn  ") {
        assert!(coloured.contains("\x1b[33mwarn"), "{coloured:?}");
        assert!(screen.lines().any(|l| l.trim_start().starts_with("fix: ")), "{screen}");
    }
    assert!(d.terminate(Duration::from_secs(15)).success());
}

#[test]
fn sync_wait_draws_a_progress_bar_until_the_backlog_is_sent() {
    let port = free_port();
    let mut cfg = DaemonConfig::new(&format!("mqtt://127.0.0.1:{port}"));
    cfg.camera_off = true;
    cfg.telemetry_secs = 0.1;
    let d = Daemon::start(&cfg);
    let s = cfg.socket();
    // A backlog builds while there is no broker.
    wait_for(Duration::from_secs(30), || (queue_json(&s)["pending"].as_u64() >= Some(20)).then_some(()))
        .expect("backlog");

    let tmux = Tmux::run("sync", &sparkctl_cmd(&s, "sync --wait --timeout-secs 120"));
    // The bar is drawn, empty, while nothing can drain.
    let screen = tmux.wait_for("sent,", Duration::from_secs(20));
    let bar = screen.lines().find(|l| l.contains("sent,")).unwrap();
    assert!(bar.starts_with("[..............................] 0/"), "{bar:?}");
    assert!(bar.contains("ETA -"), "{bar:?}");
    assert!(!screen.contains("__DONE__"), "sync --wait ended with nothing sent:\n{screen}");

    // The broker comes up: the bar fills and sync reports success.
    let _broker = Broker::start_on(port);
    let screen = tmux.wait_for("__DONE__", Duration::from_secs(60));
    assert!(screen.contains("__DONE__ 0"), "{screen}");
    assert!(screen.contains("outbox empty"), "{screen}");
    let bar = screen.lines().find(|l| l.contains("sent,")).unwrap_or_else(|| panic!("bar gone:\n{screen}"));
    assert!(bar.starts_with("[##############################] "), "bar not full at the end: {bar:?}");
    let counts = bar.split(']').nth(1).and_then(|r| r.split_whitespace().next()).unwrap();
    let (done, total) = counts.split_once('/').unwrap();
    assert_eq!(done, total, "{bar:?}");
    assert!(total.parse::<u64>().unwrap() >= 20, "{bar:?}");
    assert!(d.terminate(Duration::from_secs(15)).success());
}
