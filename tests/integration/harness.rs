//! Real processes for the tests: an etcd on free loopback ports with a temp data dir, the
//! `ruddr` binary, and DNS clients (dig and a hickory-proto client over UDP and TCP).
//! Every child is killed on drop; on a failing test their logs are printed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// Fails with instructions when a required tool is missing; tests never skip silently.
pub fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: run `apt-get install -y {package}` (the README's test command does)"
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback address of its own for one etcd (127.x.y.z; all of 127/8 is local), so its ports
/// cannot collide with ephemeral ports other tests take on 127.0.0.1.
pub fn own_loopback() -> String {
    let n: u32 = rand::random();
    // 127.60-199.x.y: clear of 127.0.0.1 and of 127.53.x.y, which the glibc test uses.
    format!(
        "127.{}.{}.{}",
        60 + n % 140,
        (n >> 8) % 250,
        1 + (n >> 16) % 250
    )
}

/// `n` distinct free ports on `ip`: all bound at once before any is released, so two calls
/// in a row cannot hand out the same port (as separate bind-and-drop calls can).
fn free_ports_on(ip: &str, n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((ip, 0)).unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    })
}

pub fn ruddr_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ruddr")
}

fn dump_log(name: &str, path: &Path) {
    if let Ok(text) = std::fs::read_to_string(path) {
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        eprintln!("----- {name} log ({}) -----", path.display());
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
    }
}

/// An `etcd` member command on loopback URLs, its stderr appended to `log`.
fn etcd_command(
    name: &str,
    data: &Path,
    client: &str,
    peer: &str,
    cluster: &str,
    log: &Path,
) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new("etcd");
    cmd.args(["--name", name, "--data-dir"])
        .arg(data)
        .args([
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
        ])
        .args([
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .args([
            "--initial-cluster",
            cluster,
            "--initial-cluster-state",
            "new",
        ])
        .stdout(Stdio::null())
        .stderr(log);
    cmd
}

/// Certificates for an etcd with TLS and client-certificate authentication, made by openssl.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        require("openssl", "openssl");
        let dir = tempfile::tempdir().unwrap();
        let script = r#"
set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=ruddr-test-ca
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' > ext
for n in server client; do
  openssl req -newkey rsa:2048 -nodes -keyout $n.key -out $n.csr -subj /CN=$n
  openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $n.pem -days 2 -extfile ext
done
"#;
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

/// One etcd member (or a single-node cluster) on loopback.
pub struct Etcd {
    ip: String,
    pub client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// CA, client cert and key paths when etcd serves TLS with client-certificate auth.
    tls: Option<(String, String, String)>,
    server_tls: Vec<String>,
    /// User and password once authentication is enabled.
    auth: Option<(String, String)>,
}

impl Etcd {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// An etcd with its address and ports chosen but not started yet (see [`Etcd::start_now`]):
    /// for tests where ruddr comes up first.
    pub fn unstarted() -> Self {
        require("etcd", "etcd-server");
        let ip = own_loopback();
        let ports = free_ports_on(&ip, 2);
        Etcd {
            client_port: ports[0],
            peer_port: ports[1],
            ip,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            tls: None,
            server_tls: Vec::new(),
            auth: None,
        }
    }

    pub fn start_now(&mut self) {
        self.spawn();
    }

    /// An etcd that only speaks TLS and requires a client certificate signed by `pki`'s CA.
    pub fn start_tls(pki: &Pki) -> Self {
        Self::start_with(Some(pki))
    }

    fn start_with(pki: Option<&Pki>) -> Self {
        require("etcd", "etcd-server");
        // The test certificates name 127.0.0.1.
        let ip = if pki.is_some() {
            "127.0.0.1".to_string()
        } else {
            own_loopback()
        };
        let ports = free_ports_on(&ip, 2);
        let mut etcd = Etcd {
            client_port: ports[0],
            peer_port: ports[1],
            ip,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            tls: pki.map(|p| (p.path("ca.pem"), p.path("client.pem"), p.path("client.key"))),
            server_tls: pki
                .map(|p| {
                    vec![
                        "--cert-file".into(),
                        p.path("server.pem"),
                        "--key-file".into(),
                        p.path("server.key"),
                        "--trusted-ca-file".into(),
                        p.path("ca.pem"),
                        "--client-cert-auth".into(),
                    ]
                })
                .unwrap_or_default(),
            auth: None,
        };
        etcd.spawn();
        etcd
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.ip, self.client_port)
    }

    /// Creates `user` with a role of the same name that may read below each of `prefixes`.
    pub fn add_reader(&self, user: &str, password: &str, prefixes: &[&str]) {
        let mut c = self.client();
        runtime().block_on(async {
            c.role_add(user).await.expect("role add");
            c.user_add(user, password, None).await.expect("user add");
            c.user_grant_role(user, user).await.expect("grant role");
        });
        for p in prefixes {
            self.grant_read(user, p);
        }
    }

    /// Lets `role` read below `prefix`.
    pub fn grant_read(&self, role: &str, prefix: &str) {
        let mut c = self.client();
        let perm = etcd_client::Permission::read(prefix).with_prefix();
        runtime().block_on(async {
            c.role_grant_permission(role, perm)
                .await
                .expect("grant permission")
        });
    }

    /// Creates user `root` with `password` and turns authentication on.
    pub fn enable_auth(&mut self, password: &str) {
        let mut c = self.client();
        runtime().block_on(async {
            c.user_add("root", password, None).await.expect("user add");
            c.user_grant_role("root", "root").await.expect("grant root");
            c.auth_enable().await.expect("auth enable");
        });
        self.auth = Some(("root".into(), password.into()));
    }

    fn connect_options(&self) -> etcd_client::ConnectOptions {
        let mut opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(2));
        if let Some((ca, cert, key)) = &self.tls {
            let tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(
                    std::fs::read(ca).unwrap(),
                ))
                .identity(etcd_client::Identity::from_pem(
                    std::fs::read(cert).unwrap(),
                    std::fs::read(key).unwrap(),
                ));
            opts = opts.with_tls(tls);
        }
        if let Some((user, password)) = &self.auth {
            opts = opts.with_user(user.clone(), password.clone());
        }
        opts
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn spawn(&mut self) {
        let c = self.endpoint();
        let p = format!("http://{}:{}", self.ip, self.peer_port);
        let child = etcd_command(
            "n1",
            &self.dir.path().join("data"),
            &c,
            &p,
            &format!("n1={p}"),
            &self.log_path(),
        )
        .args(&self.server_tls)
        .spawn()
        .expect("start etcd");
        self.child = Some(child);
        eventually(Duration::from_secs(20), "etcd to accept requests", || {
            self.try_get("/health-probe").ok().map(|_| ())
        });
    }

    /// etcd's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("etcd running").id()
    }

    /// Sends `sig` (for example `STOP`, `CONT`) to etcd itself.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("etcd running").id();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} etcd failed");
    }

    /// Kills etcd (SIGKILL), keeping its data dir.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts a brand-new etcd (empty data, new cluster id) on the same ports.
    pub fn wipe_and_restart(&mut self) {
        self.kill();
        std::fs::remove_dir_all(self.dir.path().join("data")).unwrap();
        self.spawn();
    }

    fn client(&self) -> etcd_client::Client {
        let ep = self.endpoint();
        let opts = self.connect_options();
        runtime()
            .block_on(etcd_client::Client::connect([ep], Some(opts)))
            .expect("etcd client")
    }

    fn try_get(&self, key: &str) -> Result<i64, etcd_client::Error> {
        let ep = self.endpoint();
        let opts = self.connect_options();
        runtime().block_on(async move {
            let mut c = etcd_client::Client::connect([ep], Some(opts)).await?;
            let r = c.get(key, None).await?;
            Ok(r.header().map(|h| h.revision()).unwrap_or(0))
        })
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        self.try_get("/").expect("etcd get")
    }

    /// Writes a key; returns the new revision.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        let mut c = self.client();
        runtime().block_on(async {
            let r = c.put(key, value, None).await.expect("etcd put");
            r.header().unwrap().revision()
        })
    }

    /// Writes many keys in few round trips.
    pub fn put_many(&self, kvs: &[(String, String)]) {
        let mut c = self.client();
        runtime().block_on(async {
            for chunk in kvs.chunks(100) {
                let ops: Vec<_> = chunk
                    .iter()
                    .map(|(k, v)| etcd_client::TxnOp::put(k.as_str(), v.as_str(), None))
                    .collect();
                c.txn(etcd_client::Txn::new().and_then(ops))
                    .await
                    .expect("etcd txn");
            }
        })
    }

    /// Every key under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut c = self.client();
        runtime().block_on(async {
            let r = c
                .get(
                    prefix,
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_keys_only(),
                    ),
                )
                .await
                .expect("etcd get");
            r.kvs()
                .iter()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                .collect()
        })
    }

    /// The value of `key`, if present.
    pub fn value(&self, key: &str) -> Option<String> {
        let mut c = self.client();
        runtime().block_on(async {
            let r = c.get(key, None).await.expect("etcd get");
            r.kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        })
    }

    pub fn delete(&self, key: &str) {
        let mut c = self.client();
        runtime().block_on(async { c.delete(key, None).await.expect("etcd delete") });
    }

    /// Compacts history up to the current revision (physically).
    pub fn compact(&self) -> i64 {
        let mut c = self.client();
        runtime().block_on(async {
            let rev = c.get("/", None).await.unwrap().header().unwrap().revision();
            c.compact(
                rev,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
            .expect("etcd compact");
            rev
        })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            dump_log("etcd", &self.log_path());
        }
    }
}

/// A child process of ours with its stderr in a log file; killed on drop, log printed on a
/// failing test.
pub struct Proc {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    /// Starts `ruddr` with `args` and extra environment variables.
    pub fn ruddr(name: &'static str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::ruddr_limited(name, args, env, None)
    }

    /// Like [`Proc::ruddr`], with soft and hard open-file limits of `nofile` if given (as a
    /// service manager or container would set them).
    pub fn ruddr_limited(
        name: &'static str,
        args: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Self {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(ruddr_bin());
        if let Some(n) = nofile {
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        command.args(args).envs(env.iter().copied());
        Self::spawn(name, command)
    }

    /// Starts a prepared `command` (ruddr, or a shell that execs it) as [`Proc::ruddr`] does:
    /// the same log level, stderr to the log file.
    pub fn spawn(name: &'static str, mut command: Command) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .env("RUST_LOG", "info,ruddr=debug,hickory_server=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start ruddr");
        Proc {
            name,
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        eventually(Duration::from_secs(20), needle, || {
            self.log_text().contains(needle).then_some(())
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process running").id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take().expect("process running");
        let status = eventually(timeout, "the process to exit", || child.try_wait().unwrap());
        status.code()
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            dump_log(self.name, &self.log);
        }
    }
}

/// How long a test waits for a re-list after a compaction: ruddr first waits a random time of up
/// to `etcd.relist_jitter` (5 s by default, left on in the tests), then lists.
pub const RELIST_WAIT: Duration = Duration::from_secs(60);

/// The zone of [`upstream`].
pub const UPSTREAM_ZONE: &str = "$TTL 300\n@ IN SOA ns hostmaster 7 3600 600 86400 60\n@ IN NS ns\nns IN A 127.0.0.1\nwww IN A 192.0.2.10\n";

/// A second DNS server standing in for an upstream resolver: a ruddr serving `upstream.test.`
/// from a zone file (and nothing from etcd).
pub fn upstream(dir: &tempfile::TempDir) -> Ruddr {
    upstream_at(dir.path(), "192.0.2.10")
}

/// Like [`upstream`], with `www.upstream.test.` at `ip`, its zone files below `dir`.
pub fn upstream_at(dir: &Path, ip: &str) -> Ruddr {
    let zones = dir.join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    std::fs::write(
        zones.join("upstream.test.zone"),
        UPSTREAM_ZONE.replace("192.0.2.10", ip),
    )
    .unwrap();
    let dead_etcd = format!("http://{}:2379", own_loopback());
    Ruddr::start(
        &dead_etcd,
        &[
            "--zones-dir",
            zones.to_str().unwrap(),
            "--zone",
            "upstream-registry.test",
        ],
    )
}

/// A running `ruddr serve`, with the ports it bound (read from its log).
pub struct Ruddr {
    pub port: u16,
    /// Port of the admin HTTP listener (/metrics, /health, /ready).
    pub admin_port: u16,
    proc: Proc,
    /// Holds the config file of [`Ruddr::start_with_config`] while the process runs.
    _config: Option<tempfile::TempDir>,
}

impl std::ops::Deref for Ruddr {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.proc
    }
}

impl std::ops::DerefMut for Ruddr {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

fn logged_port(p: &Proc, line_has: &str, key: &str) -> u16 {
    u16::try_from(logged_number(p, line_has, key)).expect("a port number")
}

/// The number after `key` in the first log line of `p` containing `line_has` (waits for it).
pub fn logged_number(p: &Proc, line_has: &str, key: &str) -> u64 {
    eventually(Duration::from_secs(20), line_has, || {
        let text = p.log_text();
        let line = text.lines().find(|l| l.contains(line_has))?;
        let at = line.find(key)? + key.len();
        let digits: String = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

impl Ruddr {
    /// Starts `ruddr serve --listen 127.0.0.1:0 --etcd-endpoints <etcd>` plus `extra` flags.
    pub fn start(etcd_endpoints: &str, extra: &[&str]) -> Self {
        Self::start_env(etcd_endpoints, extra, &[])
    }

    /// Like [`Ruddr::start`], with extra environment variables for the child only.
    pub fn start_env(etcd_endpoints: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_limited(etcd_endpoints, extra, env, None)
    }

    /// Like [`Ruddr::start_env`], with soft and hard open-file limits of `nofile` if given.
    pub fn start_limited(
        etcd_endpoints: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Self {
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--etcd-endpoints",
            etcd_endpoints,
            "--admin-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let proc = Proc::ruddr_limited("ruddr", &args, env, nofile);
        let port = logged_port(&proc, "dns listening", "udp=127.0.0.1:");
        let admin_port = logged_port(&proc, "admin listening", "addr=127.0.0.1:");
        Ruddr {
            port,
            admin_port,
            proc,
            _config: None,
        }
    }

    /// Like [`Ruddr::start`] with `--config` of a file holding `toml`, then waits until the
    /// watch on etcd is established.
    pub fn start_with_config(etcd_endpoints: &str, toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("ruddr.toml");
        std::fs::write(&cfg, toml).unwrap();
        let mut r = Self::start(etcd_endpoints, &["--config", cfg.to_str().unwrap()]);
        r._config = Some(dir);
        r.wait_watching();
        r
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Waits until `/ready` says the watch on etcd is established (`"connected": true`).
    pub fn wait_watching(&self) {
        eventually(Duration::from_secs(20), "/ready to say connected", || {
            let (_, body) = self.try_http_get("/ready")?;
            let ready: serde_json::Value = serde_json::from_str(&body).ok()?;
            (ready["connected"] == serde_json::Value::Bool(true)).then_some(())
        });
    }

    /// GET on the admin listener, `None` when it does not answer (not bound yet).
    pub fn try_http_get(&self, path: &str) -> Option<(u16, String)> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut resp = agent
            .get(format!("http://127.0.0.1:{}{path}", self.admin_port))
            .call()
            .ok()?;
        let code = resp.status().as_u16();
        Some((code, resp.body_mut().read_to_string().ok()?))
    }

    /// GET on the admin listener: status code and body.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        self.try_http_get(path)
            .unwrap_or_else(|| panic!("admin HTTP request for {path} failed"))
    }

    /// Waits until the sample satisfies `ok` (metrics are recorded just after a response is
    /// sent, so a scrape right after an answer can precede its count).
    pub fn wait_metric(&self, sample: &str, ok: impl Fn(f64) -> bool) {
        eventually(Duration::from_secs(10), sample, || {
            ok(self.metric(sample)).then_some(())
        });
    }

    /// The value of one sample in /metrics, e.g. `ruddr_registry_connected` or
    /// `ruddr_dns_queries_total{qtype="A",rcode="NOERROR",proto="udp",path="registry"}`; 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let (code, body) = self.http_get("/metrics");
        assert_eq!(code, 200);
        body.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .map(|v| v.split_whitespace().next().unwrap().parse().unwrap())
            .unwrap_or(0.0)
    }
}

/// A recursion-desired UDP query from a socket bound to `src` (e.g. `127.0.0.2:0`).
pub fn udp_query_from(src: &str, to: SocketAddr, name: &str, qtype: RecordType) -> Message {
    try_udp_query_from(src, to, name, qtype, Duration::from_secs(5)).expect("a response")
}

/// Like [`udp_query_from`]; `None` when no response comes within `timeout`.
pub fn try_udp_query_from(
    src: &str,
    to: SocketAddr,
    name: &str,
    qtype: RecordType,
    timeout: Duration,
) -> Option<Message> {
    let sock = std::net::UdpSocket::bind(src).unwrap();
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut q = query_message(name, qtype, Some(1232));
    q.metadata.recursion_desired = true;
    sock.send_to(&q.to_vec().unwrap(), to).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    Some(Message::from_vec(&buf[..n]).unwrap())
}

/// Runs dig against ruddr with short timeouts.
pub fn dig(port: u16, args: &[&str]) -> String {
    require("dig", "bind9-dnsutils");
    let out: Output = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dig +short`, lines sorted.
pub fn dig_short(port: u16, name: &str, qtype: &str) -> Vec<String> {
    let mut lines: Vec<String> = dig(port, &[name, qtype, "+short"])
        .lines()
        .filter(|l| !l.starts_with(';') && !l.is_empty())
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Builds a query for `name`/`qtype`, with EDNS advertising `edns_payload` if given.
pub fn query_message(name: &str, qtype: RecordType, edns_payload: Option<u16>) -> Message {
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = false;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(p) = edns_payload {
        let mut e = Edns::new();
        e.set_max_payload(p);
        m.set_edns(e);
    }
    m
}

/// Sends raw bytes and returns the raw response, if any arrives within the timeout.
pub fn exchange_raw(addr: SocketAddr, bytes: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let timeout = Duration::from_secs(2);
    match transport {
        Transport::Udp => {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(timeout)).unwrap();
            sock.send_to(bytes, addr).unwrap();
            let mut buf = vec![0u8; 65535];
            let (n, _) = sock.recv_from(&mut buf).ok()?;
            buf.truncate(n);
            Some(buf)
        }
        Transport::Tcp => {
            let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
            s.set_read_timeout(Some(timeout)).unwrap();
            let len = u16::try_from(bytes.len()).unwrap().to_be_bytes();
            s.write_all(&len).ok()?;
            s.write_all(bytes).ok()?;
            let mut lb = [0u8; 2];
            s.read_exact(&mut lb).ok()?;
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(lb))];
            s.read_exact(&mut buf).ok()?;
            Some(buf)
        }
    }
}

/// Sends a query and parses the response; panics if none arrives.
pub fn exchange(addr: SocketAddr, msg: &Message, transport: Transport) -> Message {
    let bytes = msg.to_vec().unwrap();
    let resp = exchange_raw(addr, &bytes, transport).expect("a DNS response");
    let parsed = Message::from_vec(&resp).expect("a parseable DNS response");
    assert_eq!(parsed.metadata.id, msg.metadata.id, "response id matches");
    parsed
}

/// A-record query over UDP with EDNS 1232, as most stub resolvers send it.
pub fn query(addr: SocketAddr, name: &str, qtype: RecordType) -> Message {
    exchange(
        addr,
        &query_message(name, qtype, Some(1232)),
        Transport::Udp,
    )
}

/// The answer section's data as sorted strings (addresses, or "prio weight port target").
pub fn answer_strings(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m.answers.iter().map(|r| rdata_string(&r.data)).collect();
    v.sort();
    v
}

pub fn rdata_string(d: &RData) -> String {
    match d {
        RData::A(a) => a.0.to_string(),
        RData::AAAA(a) => a.0.to_string(),
        RData::SRV(s) => format!("{} {} {} {}", s.priority, s.weight, s.port, s.target),
        other => other.to_string(),
    }
}

/// The answers to `name`/`qtype` over UDP, as sorted strings.
pub fn answers(r: &Ruddr, name: &str, qtype: RecordType) -> Vec<String> {
    answer_strings(&query(r.addr(), name, qtype))
}

/// Waits until the answers to `name`/`qtype` are `want` (sorted strings).
pub fn wait_answers(r: &Ruddr, name: &str, qtype: RecordType, want: &[&str], timeout: Duration) {
    eventually(timeout, &format!("{name} {qtype} = {want:?}"), || {
        (answers(r, name, qtype) == want).then_some(())
    });
}

pub fn rcode(m: &Message) -> ResponseCode {
    m.metadata.response_code
}

impl Etcd {
    /// Grants a lease of `ttl` seconds, as a framework's registrar does.
    pub fn grant(&self, ttl: i64) -> i64 {
        let mut c = self.client();
        runtime().block_on(async {
            c.lease_grant(ttl, None)
                .await
                .expect("etcd lease grant")
                .id()
        })
    }

    /// Writes a key bound to `lease`.
    pub fn put_with_lease(&self, key: &str, value: &str, lease: i64) {
        let mut c = self.client();
        let opts = etcd_client::PutOptions::new().with_lease(lease);
        runtime().block_on(async {
            c.put(key, value, Some(opts))
                .await
                .expect("etcd put with lease")
        });
    }

    /// Revokes a lease: etcd deletes every key bound to it.
    pub fn revoke(&self, lease: i64) {
        let mut c = self.client();
        runtime().block_on(async { c.lease_revoke(lease).await.expect("etcd lease revoke") });
    }

    pub fn defragment(&self) {
        let mut c = self.client();
        runtime().block_on(async { c.defragment().await.expect("etcd defragment") });
    }
}

/// A multi-member etcd cluster on loopback, one data dir per member.
pub struct Cluster {
    dir: tempfile::TempDir,
    ip: String,
    members: Vec<(u16, u16)>,
    children: Vec<Option<Child>>,
}

impl Cluster {
    pub fn start(n: usize) -> Self {
        require("etcd", "etcd-server");
        let ip = own_loopback();
        let ports = free_ports_on(&ip, 2 * n);
        let mut c = Cluster {
            dir: tempfile::tempdir().unwrap(),
            members: ports.chunks(2).map(|p| (p[0], p[1])).collect(),
            ip,
            children: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_healthy();
        c
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://{}:{p}", self.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}:{}", self.ip, self.members[i].0)
    }

    /// Every member's client URL, comma-separated.
    pub fn endpoints(&self) -> String {
        (0..self.members.len())
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        let (cp, pp) = self.members[i];
        let c = format!("http://{}:{cp}", self.ip);
        let p = format!("http://{}:{pp}", self.ip);
        let log = self.dir.path().join(format!("m{i}.log"));
        let data = self.dir.path().join(format!("m{i}"));
        let child = etcd_command(
            &format!("m{i}"),
            &data,
            &c,
            &p,
            &self.initial_cluster(),
            &log,
        )
        .args(["--initial-cluster-token", "ruddr-test"])
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .spawn()
        .expect("start etcd member");
        self.children[i] = Some(child);
    }

    fn live(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.children[*i].is_some())
            .collect()
    }

    /// Waits until every live member answers and agrees on a leader.
    pub fn wait_healthy(&self) {
        eventually(
            Duration::from_secs(30),
            "etcd cluster healthy with a leader",
            || {
                let leaders: Vec<u64> = self
                    .live()
                    .into_iter()
                    .map(|i| self.status(i).map(|(leader, _)| leader))
                    .collect::<Option<_>>()?;
                (leaders.iter().all(|l| *l != 0 && *l == leaders[0])).then_some(())
            },
        );
    }

    /// (leader id, own member id) as member `i` sees it.
    fn status(&self, i: usize) -> Option<(u64, u64)> {
        let ep = self.endpoint(i);
        runtime().block_on(async move {
            let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(1));
            let mut c = etcd_client::Client::connect([ep], Some(opts)).await.ok()?;
            let s = c.status().await.ok()?;
            Some((s.leader(), s.header()?.member_id()))
        })
    }

    /// Index of the current leader.
    pub fn leader(&self) -> usize {
        eventually(Duration::from_secs(20), "a leader", || {
            self.live()
                .into_iter()
                .find(|i| matches!(self.status(*i), Some((l, me)) if l == me))
        })
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// Kills every member.
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Starts every stopped member and waits for a leader.
    pub fn start_all(&mut self) {
        for i in 0..self.members.len() {
            if self.children[i].is_none() {
                self.spawn(i);
            }
        }
        self.wait_healthy();
    }

    /// Runs `op` against the live members, retrying for up to 20 s (etcd-client does not retry
    /// unary calls when a member is down).
    fn with_retry<T>(
        &self,
        what: &str,
        op: impl for<'c> Fn(
            &'c mut etcd_client::Client,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<T>> + 'c>>,
    ) -> T {
        let eps: Vec<String> = self.live().into_iter().map(|i| self.endpoint(i)).collect();
        eventually(Duration::from_secs(20), what, || {
            let eps = eps.clone();
            runtime().block_on(async {
                let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(2));
                let mut c = etcd_client::Client::connect(eps, Some(opts)).await.ok()?;
                op(&mut c).await
            })
        })
    }

    pub fn put(&self, key: &str, value: &str) {
        self.with_retry("a put to the cluster", |c| {
            let (k, v) = (key.to_string(), value.to_string());
            Box::pin(async move { c.put(k, v, None).await.ok().map(|_| ()) })
        })
    }

    pub fn grant(&self, ttl: i64) -> i64 {
        self.with_retry("a lease grant", |c| {
            Box::pin(async move { c.lease_grant(ttl, None).await.ok().map(|r| r.id()) })
        })
    }

    pub fn put_with_lease(&self, key: &str, value: &str, lease: i64) {
        self.with_retry("a put with lease", |c| {
            let (k, v) = (key.to_string(), value.to_string());
            Box::pin(async move {
                let opts = etcd_client::PutOptions::new().with_lease(lease);
                c.put(k, v, Some(opts)).await.ok().map(|_| ())
            })
        })
    }

    /// The client URLs of every member, for a registrant running in another thread.
    pub fn endpoint_list(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }
}

/// Sends one keepalive for `lease` to any of `endpoints`; false if none could be reached.
pub fn keep_alive_once(endpoints: &[String], lease: i64) -> bool {
    let eps = endpoints.to_vec();
    runtime().block_on(async move {
        let attempt = async {
            let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(1));
            let mut c = etcd_client::Client::connect(eps, Some(opts)).await?;
            let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            stream.message().await?;
            Ok::<_, etcd_client::Error>(())
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), attempt).await,
            Ok(Ok(()))
        )
    })
}

impl Cluster {}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            for i in 0..self.members.len() {
                dump_log(
                    &format!("etcd m{i}"),
                    &self.dir.path().join(format!("m{i}.log")),
                );
            }
        }
    }
}

/// Starts `ruddr register --etcd-endpoints <etcd>` plus `extra` flags.
pub fn register(etcd: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["register", "--etcd-endpoints", etcd];
    args.extend_from_slice(extra);
    Proc::ruddr("register", &args, &[])
}

/// A shell script for a child service that writes `term` to `marker` and exits 7 on SIGTERM.
pub fn term_trapping_script(marker: &Path) -> String {
    format!(
        "trap 'echo term > {m}; exit 7' TERM; while :; do sleep 0.05; done",
        m = marker.display()
    )
}
