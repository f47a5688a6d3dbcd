//! Health checks: HTTP GET (2xx passes), TCP connect, or a shell command (exit 0 passes), each
//! bounded by a timeout.

use std::time::Duration;

use super::spec::Check;

/// The result of one check run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub passed: bool,
    /// Short detail worth publishing in `meta.check` (an HTTP body's `status` field).
    pub detail: Option<String>,
    /// Why it failed, for the log.
    pub reason: Option<String>,
}

impl Outcome {
    fn pass(detail: Option<String>) -> Self {
        Self {
            passed: true,
            detail,
            reason: None,
        }
    }
    fn fail(reason: impl Into<String>, detail: Option<String>) -> Self {
        Self {
            passed: false,
            detail,
            reason: Some(reason.into()),
        }
    }
}

const MAX_DETAIL: usize = 64;

/// The `status` field of a JSON object body, shortened; `None` for anything else.
fn status_detail(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let s = match v.get("status")? {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Some(s.chars().take(MAX_DETAIL).collect())
}

/// Runs `check` once.
pub async fn run(check: &Check, timeout: Duration) -> Outcome {
    match check {
        Check::Http(url) => {
            let url = url.clone();
            let task = tokio::task::spawn_blocking(move || http(&url, timeout));
            match tokio::time::timeout(timeout + Duration::from_millis(500), task).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(e)) => Outcome::fail(format!("check task failed: {e}"), None),
                Err(_) => Outcome::fail(format!("no response within {timeout:?}"), None),
            }
        }
        Check::Tcp(target) => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target.as_str()))
                .await
            {
                Ok(Ok(_)) => Outcome::pass(None),
                Ok(Err(e)) => Outcome::fail(format!("connect {target}: {e}"), None),
                Err(_) => Outcome::fail(
                    format!("connect {target}: no answer within {timeout:?}"),
                    None,
                ),
            }
        }
        Check::Cmd(cmd) => {
            // Its own process group, so that a timeout or shutdown ends everything it started
            // (`sleep 1000 | cat` is two processes; killing the shell alone leaves both).
            let child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .process_group(0)
                .kill_on_drop(true)
                .spawn();
            let mut child = match child {
                Ok(c) => c,
                Err(e) => return Outcome::fail(format!("cannot run {cmd:?}: {e}"), None),
            };
            // Kills the group when the check ends in any way, the future being dropped at
            // shutdown included.
            let _group = child.id().map(ProcessGroup::of);
            match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(status)) if status.success() => Outcome::pass(None),
                Ok(Ok(status)) => Outcome::fail(format!("{cmd:?} exited with {status}"), None),
                Ok(Err(e)) => Outcome::fail(format!("{cmd:?}: {e}"), None),
                Err(_) => Outcome::fail(format!("{cmd:?} still running after {timeout:?}"), None),
            }
        }
    }
}

/// A check command's process group, killed (SIGKILL) when dropped: a check leaves nothing
/// running behind it.
struct ProcessGroup(nix::unistd::Pid);

impl ProcessGroup {
    fn of(leader: u32) -> Self {
        Self(nix::unistd::Pid::from_raw(leader as i32))
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // ESRCH (nothing left in the group) is the usual, fine outcome.
        let _ = nix::sys::signal::killpg(self.0, nix::sys::signal::Signal::SIGKILL);
    }
}

fn http(url: &str, timeout: Duration) -> Outcome {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    match agent.get(url).call() {
        Ok(mut resp) => {
            let code = resp.status().as_u16();
            let body = resp
                .body_mut()
                .with_config()
                .limit(16 * 1024)
                .read_to_string()
                .unwrap_or_default();
            let detail = status_detail(&body);
            if (200..300).contains(&code) {
                Outcome::pass(detail)
            } else {
                Outcome::fail(format!("GET {url}: HTTP {code}"), detail)
            }
        }
        Err(e) => Outcome::fail(format!("GET {url}: {e}"), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_detail_is_short_and_only_from_json_objects() {
        assert_eq!(
            status_detail(r#"{"status":"ok","x":1}"#).as_deref(),
            Some("ok")
        );
        assert_eq!(status_detail(r#"{"status":3}"#).as_deref(), Some("3"));
        assert_eq!(status_detail("plain text"), None);
        assert_eq!(
            status_detail(&format!(r#"{{"status":"{}"}}"#, "x".repeat(500)))
                .unwrap()
                .len(),
            64
        );
    }

    #[tokio::test]
    async fn command_and_tcp_checks() {
        let t = Duration::from_secs(2);
        assert!(run(&Check::Cmd("true".into()), t).await.passed);
        assert!(!run(&Check::Cmd("exit 3".into()), t).await.passed);
        let slow = run(&Check::Cmd("sleep 5".into()), Duration::from_millis(100)).await;
        assert!(!slow.passed && slow.reason.unwrap().contains("still running"));
        // A pipeline that outlives its timeout leaves no process behind.
        let marker = format!("sleep 31{}", std::process::id() % 1000);
        let piped = run(
            &Check::Cmd(format!("{marker} | cat")),
            Duration::from_millis(200),
        )
        .await;
        assert!(!piped.passed);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let left: Vec<_> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&marker))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert!(run(&Check::Tcp(addr.clone()), t).await.passed);
        drop(listener);
        assert!(!run(&Check::Tcp(addr), t).await.passed);
    }
}
