//! Never silently stale, never stuck: a registration repairs what others do to its key,
//! shutdown is bounded whatever etcd does, check commands leave nothing behind, and the
//! watcher is supervised and notices a member that lost its leader.

use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use crate::harness::*;

fn ready(r: &Ruddr) -> (u16, serde_json::Value) {
    let (code, body) = r.http_get("/ready");
    (code, serde_json::from_str(&body).expect("/ready is JSON"))
}

/// Processes whose command line starts with `prefix` (from /proc, so no procps is needed).
fn processes_with(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with(prefix))
        .collect()
}

#[test]
fn a_key_deleted_or_overwritten_by_hand_is_restored_and_a_fight_backs_off() {
    let etcd = Etcd::start();
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    let mut owner = register(
        &etcd.endpoint(),
        &[
            "--service",
            "web",
            "--id",
            "w1",
            "--address",
            "10.40.0.1",
            "--drain",
            "0s",
        ],
    );
    let key = "/ruddr/services/web/w1";
    wait_answers(
        &r,
        "web.svc.internal.",
        RecordType::A,
        &["10.40.0.1"],
        Duration::from_secs(10),
    );
    let written = etcd.value(key).unwrap();
    // The registrar's own value back in etcd, then in DNS (DNS may not even have seen it
    // gone). The repair is immediate; the 5 s bounds only allow for a loaded machine.
    let restored = |what: &str| {
        eventually(Duration::from_secs(5), what, || {
            (etcd.value(key).as_deref() == Some(written.as_str())).then_some(())
        });
        wait_answers(
            &r,
            "web.svc.internal.",
            RecordType::A,
            &["10.40.0.1"],
            Duration::from_secs(5),
        );
    };

    // An operator deletes the key.
    etcd.delete(key);
    restored("the key restored");
    owner.wait_log("registration deleted by someone else");

    // Someone overwrites it.
    etcd.put(key, r#"{"address":"10.40.9.9"}"#);
    restored("the value restored");
    owner.wait_log("registration overwritten by someone else");

    // A second registrar with the same service and id: they fight, then back off instead of
    // rewriting the key forever.
    let rival = register(
        &etcd.endpoint(),
        &[
            "--service",
            "web",
            "--id",
            "w1",
            "--address",
            "10.40.0.2",
            "--drain",
            "0s",
        ],
    );
    eventually(Duration::from_secs(15), "a conflict logged", || {
        (owner.log_text().contains("another writer keeps changing")
            || rival.log_text().contains("another writer keeps changing"))
        .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let before = etcd.revision();
    std::thread::sleep(Duration::from_secs(3));
    let writes = etcd.revision() - before;
    assert!(
        writes <= 4,
        "{writes} writes in 3 s after the conflict was detected"
    );
    drop(rival);
    owner.signal("TERM");
    assert_eq!(owner.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn sigterm_with_etcd_stopped_is_bounded_and_a_deaf_child_is_killed() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("got-term");
    let script = term_trapping_script(&marker);
    let mut sidecar = register(
        &etcd.endpoint(),
        &[
            "--service",
            "wk",
            "--id",
            "w1",
            "--address",
            "10.41.0.1",
            "--drain",
            "1s",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    eventually(Duration::from_secs(10), "registered", || {
        etcd.value("/ruddr/services/wk/w1")
    });
    // etcd stops answering (reachable, never replying).
    etcd.signal("STOP");
    let start = Instant::now();
    sidecar.signal("TERM");
    assert_eq!(sidecar.wait_exit(Duration::from_secs(15)), Some(7));
    let took = start.elapsed();
    etcd.signal("CONT");
    assert!(marker.exists(), "the child got SIGTERM");
    assert!(
        took < Duration::from_secs(6),
        "SIGTERM to exit took {took:?} with etcd stopped (drain 1 s + 2.5 s hard stop; without it \
         the delete and revoke would each wait out the 5 s request timeout)"
    );

    // A child that ignores SIGTERM gets SIGKILL after --stop-timeout.
    let mut deaf = register(
        &etcd.endpoint(),
        &[
            "--service",
            "wk",
            "--id",
            "w2",
            "--address",
            "10.41.0.2",
            "--drain",
            "0s",
            "--stop-timeout",
            "1s",
            "--",
            "sh",
            "-c",
            "trap '' TERM; while :; do sleep 0.05; done",
        ],
    );
    eventually(Duration::from_secs(10), "registered", || {
        etcd.value("/ruddr/services/wk/w2")
    });
    deaf.signal("TERM");
    assert_eq!(
        deaf.wait_exit(Duration::from_secs(10)),
        Some(128 + 9),
        "killed"
    );
    deaf.wait_log("ignored the signal");

    // A second SIGTERM during a long drain skips the rest of it.
    let mut draining = register(
        &etcd.endpoint(),
        &[
            "--service",
            "wk",
            "--id",
            "w3",
            "--address",
            "10.41.0.3",
            "--drain",
            "60s",
        ],
    );
    eventually(Duration::from_secs(10), "registered", || {
        etcd.value("/ruddr/services/wk/w3")
    });
    draining.signal("TERM");
    draining.wait_log("draining");
    draining.signal("TERM");
    assert_eq!(draining.wait_exit(Duration::from_secs(10)), Some(0));
    draining.wait_log("skipping the rest of the drain");
}

#[test]
fn a_check_command_that_times_out_leaves_no_process_behind() {
    let etcd = Etcd::start();
    // A sleep no other process runs: its argument is unique to this test run.
    let sleep = format!("sleep 1000.{}", std::process::id());
    let mut sidecar = register(
        &etcd.endpoint(),
        &[
            "--service",
            "chk",
            "--id",
            "c1",
            "--address",
            "10.42.0.1",
            "--drain",
            "0s",
            "--check-cmd",
            &format!("{sleep} | cat"),
            "--timeout",
            "300ms",
            "--interval",
            "400ms",
        ],
    );
    // Several checks time out meanwhile; at most the running one's sleep is alive.
    std::thread::sleep(Duration::from_secs(3));
    let alive = processes_with(&sleep).len();
    assert!(alive <= 1, "{alive} check processes alive");
    sidecar.signal("TERM");
    assert_eq!(sidecar.wait_exit(Duration::from_secs(10)), Some(0));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(processes_with(&sleep), Vec::<String>::new(), "left behind");
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the test-hooks feature (scripts/test.sh turns it on)"
)]
fn a_watcher_that_dies_is_restarted_and_ready_says_so_meanwhile() {
    let etcd = Etcd::start();
    etcd.put("/ruddr/services/web/w1", r#"{"address":"10.43.0.1"}"#);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ruddr.toml");
    // Progress requests every 2 s; the injected failure strikes at one.
    std::fs::write(&cfg, "[etcd]\nkeepalive_interval = \"1s\"\n").unwrap();
    let r = Ruddr::start_env(
        &etcd.endpoint(),
        &["--config", cfg.to_str().unwrap(), "--max-stale", "300ms"],
        &[("RUDDR_TEST_WATCHER_PANICS", "2")],
    );
    eventually(Duration::from_secs(10), "ready", || {
        (ready(&r).0 == 200).then_some(())
    });
    let body = eventually(
        Duration::from_secs(10),
        "503 while the watcher is down",
        || {
            let (code, body) = ready(&r);
            (code == 503).then_some(body)
        },
    );
    assert_eq!(body["error"]["kind"], "watcher_failed", "{body}");
    r.wait_metric("ruddr_registry_watcher_restarts_total", |v| v >= 1.0);
    r.wait_log("etcd watcher stopped");
    // Restarted (twice), then data flows again.
    r.wait_metric("ruddr_registry_watcher_restarts_total", |v| v >= 2.0);
    eventually(Duration::from_secs(15), "ready again", || {
        (ready(&r).0 == 200).then_some(())
    });
    etcd.put("/ruddr/services/web/w2", r#"{"address":"10.43.0.2"}"#);
    wait_answers(
        &r,
        "web.svc.internal.",
        RecordType::A,
        &["10.43.0.1", "10.43.0.2"],
        Duration::from_secs(10),
    );
    assert_eq!(r.metric("ruddr_registry_watcher_restarts_total"), 2.0);
}

#[test]
fn a_member_that_lost_its_leader_is_reported_stale_and_recovers() {
    let mut cluster = Cluster::start(3);
    cluster.put("/ruddr/services/web/w1", r#"{"address":"10.44.0.1"}"#);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ruddr.toml");
    std::fs::write(
        &cfg,
        // retry_max 1 s: while member 0 has no leader every attempt fails at once and the
        // back-off would otherwise reach 5 s, most of the test's wait for the recovery.
        "[etcd]\nkeepalive_interval = \"1s\"\nconfirm_within = \"4s\"\nretry_max = \"1s\"\n",
    )
    .unwrap();
    // Only member 0: ruddr cannot fail over, it must notice.
    let keep = 0;
    let r = Ruddr::start(
        &cluster.endpoint(keep),
        &["--config", cfg.to_str().unwrap()],
    );
    wait_answers(
        &r,
        "web.svc.internal.",
        RecordType::A,
        &["10.44.0.1"],
        Duration::from_secs(10),
    );
    r.wait_metric("ruddr_registry_connected", |v| v == 1.0);

    // The other two members go away: member 0 is alive but has no leader; nothing is written.
    cluster.kill(1);
    cluster.kill(2);
    let lost = Instant::now();
    r.wait_metric("ruddr_registry_connected", |v| v == 0.0);
    let noticed = lost.elapsed();
    assert!(noticed < Duration::from_secs(10), "stale after {noticed:?}");
    let (_, body) = ready(&r);
    assert_eq!(body["connected"], false, "{body}");
    assert!(body["stale_seconds"].as_f64().is_some(), "{body}");
    // Still answering from memory meanwhile.
    assert_eq!(
        answers(&r, "web.svc.internal.", RecordType::A),
        ["10.44.0.1"]
    );

    cluster.restart(1);
    cluster.restart(2);
    cluster.wait_healthy();
    r.wait_metric("ruddr_registry_connected", |v| v == 1.0);
    cluster.put("/ruddr/services/web/w2", r#"{"address":"10.44.0.2"}"#);
    wait_answers(
        &r,
        "web.svc.internal.",
        RecordType::A,
        &["10.44.0.1", "10.44.0.2"],
        Duration::from_secs(10),
    );
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn a_registration_whose_write_was_compacted_away_keeps_repairing_without_spinning() {
    let mut etcd = Etcd::start();
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    let owner = register(
        &etcd.endpoint(),
        &[
            "--service",
            "old",
            "--id",
            "o1",
            "--address",
            "10.47.0.1",
            "--drain",
            "0s",
        ],
    );
    let key = "/ruddr/services/old/o1";
    eventually(Duration::from_secs(10), "registered", || etcd.value(key));
    // While the registrar is frozen, its watch's connection breaks and history moves on past
    // its own write: the watch cannot resume from there.
    owner.signal("STOP");
    etcd.restart();
    for n in 0..20 {
        etcd.put(&format!("/other/k{n}"), "x");
    }
    etcd.compact();
    owner.signal("CONT");
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_seconds(owner.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(owner.pid()) - before;
    assert!(
        used < 0.5,
        "the registrar used {used} CPU-s in 2 s: spinning"
    );
    // And it still repairs: its value is written back (the answer below alone would not tell,
    // ruddr may not have seen the delete yet).
    etcd.delete(key);
    eventually(
        Duration::from_secs(10),
        "the registration written back",
        || etcd.value(key),
    );
    wait_answers(
        &r,
        "old.svc.internal.",
        RecordType::A,
        &["10.47.0.1"],
        Duration::from_secs(5),
    );
}
