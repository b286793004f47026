//! A real terminal for tests of human output: one command in a detached tmux
//! session (120×40, `TERM=xterm-256color`), its screen read back.

use std::process::Command;
use std::time::Duration;

pub struct Tmux {
    server: String,
}

impl Tmux {
    /// Runs `shell_cmd` on its own tmux server named after `tag`. The pane
    /// stays after the command (it prints `__DONE__ <exit code>`) so its
    /// last screen can be read.
    pub fn run(tag: &str, shell_cmd: &str) -> Self {
        let t = Tmux { server: format!("spark-test-{tag}-{}", std::process::id()) };
        let script = format!("{shell_cmd}; echo __DONE__ $?; sleep 120");
        let out = Command::new("tmux")
            .args(["-L", &t.server, "new-session", "-d", "-x", "120", "-y", "40", "-s", "t"])
            .arg(script)
            .env("TERM", "xterm-256color")
            .env_remove("NO_COLOR")
            .output()
            .expect("tmux not installed: run scripts/setup.sh");
        assert!(out.status.success(), "tmux: {}", String::from_utf8_lossy(&out.stderr));
        t
    }

    /// The visible screen; with `escapes`, colour codes included.
    pub fn screen(&self, escapes: bool) -> String {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.server, "capture-pane", "-p", "-t", "t"]);
        if escapes {
            cmd.arg("-e");
        }
        String::from_utf8_lossy(&cmd.output().expect("capture-pane").stdout).into_owned()
    }

    /// Waits until the screen shows `what`; returns the screen.
    pub fn wait_for(&self, what: &str, timeout: Duration) -> String {
        super::wait_for(timeout, || {
            let s = self.screen(false);
            s.contains(what).then_some(s)
        })
        .unwrap_or_else(|| panic!("{what:?} never appeared; screen:\n{}", self.screen(false)))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.server, "kill-server"]).output();
    }
}
