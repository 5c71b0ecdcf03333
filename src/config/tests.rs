use std::time::Duration;

use super::*;

const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:6432"

[backend]
user = "postgres"
password = "pw"

[[nodes]]
name = "a"
host = "127.0.0.1"
port = 5432

[[nodes]]
host = "127.0.0.1"
port = 5433

[[users]]
name = "app"
password = "secret"
"#;

fn error_of(text: &str) -> ConfigError {
    Config::parse(text).expect_err("config should be rejected")
}

/// Replaces the first occurrence of `from` in the good config.
fn good_with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "fixture lacks {from:?}");
    GOOD.replacen(from, to, 1)
}

#[test]
fn good_config_parses_with_defaults() {
    let c = Config::parse(GOOD).unwrap();
    assert_eq!(c.nodes.len(), 2);
    assert_eq!(c.nodes[1].display_name(), "127.0.0.1:5433");
    assert_eq!(c.users[0].auth, AuthMethod::ScramSha256);
    assert_eq!(c.users[0].server_user(), "app");
    assert_eq!(c.users[0].server_password(), Some("secret"));
    assert_eq!(c.proxy.max_client_connections, 1000);
    assert_eq!(c.monitor.probe_interval_ms, 250);
    assert_eq!(c.nodes[0].weight, 1);
    assert_eq!(c.pool.max_server_connections, 100);
    assert_eq!(c.pool.acquire_timeout(), Duration::from_secs(5));
    assert_eq!(c.routing.load_balance, LoadBalance::RoundRobin);
    assert_eq!(c.routing.primary_read_weight, 0);
    assert_eq!(c.routing.classify_cache_size, 4096);
    assert_eq!(c.routing.function_refresh(), Duration::from_secs(60));
    assert_eq!(c.proxy.replica_connect_timeout(), Duration::from_secs(1));
    assert_eq!(c.routing.replica_stall(), Some(Duration::from_secs(2)));
}

#[test]
fn a_zero_replica_stall_turns_stall_retries_off() {
    let c = Config::parse(&format!(
        "{GOOD}
[routing]
replica_stall_ms = 0
"
    ))
    .unwrap();
    assert_eq!(c.routing.replica_stall(), None);
    let c = Config::parse(&format!(
        "{GOOD}
[routing]
replica_stall_ms = 750
"
    ))
    .unwrap();
    assert_eq!(c.routing.replica_stall(), Some(Duration::from_millis(750)));
}

#[test]
fn routing_section_parses_every_load_balance() {
    let cases = [
        ("round-robin", LoadBalance::RoundRobin),
        ("weighted", LoadBalance::Weighted),
        ("least-outstanding", LoadBalance::LeastOutstanding),
    ];
    for (text, expected) in cases {
        let c = Config::parse(&format!(
            "{GOOD}\n[routing]\nload_balance = \"{text}\"\nprimary_read_weight = 2\nclassify_cache_size = 0\n"
        ))
        .unwrap();
        assert_eq!(c.routing.load_balance, expected, "{text}");
        assert_eq!(c.routing.primary_read_weight, 2);
        assert_eq!(c.routing.classify_cache_size, 0);
    }
    let e = error_of(&format!("{GOOD}\n[routing]\nload_balance = \"random\"\n"));
    assert!(e.rule.contains("random"), "{e}");
}

#[test]
fn zero_function_refresh_is_rejected() {
    let e = error_of(&format!("{GOOD}\n[routing]\nfunction_refresh_ms = 0\n"));
    assert_eq!(e.key, "routing.function_refresh_ms");
}

#[test]
fn primary_read_weight_above_limit_is_rejected() {
    let e = error_of(&format!("{GOOD}\n[routing]\nprimary_read_weight = 1001\n"));
    assert_eq!(e.key, "routing.primary_read_weight");
}

#[test]
fn node_weight_above_limit_is_rejected_and_zero_is_allowed() {
    let e = error_of(&good_with("port = 5433", "port = 5433\nweight = 1001"));
    assert_eq!(e.key, "nodes[1].weight");
    let c = Config::parse(&good_with("port = 5433", "port = 5433\nweight = 0")).unwrap();
    assert_eq!(c.nodes[1].weight, 0);
}

#[test]
fn zero_max_server_connections_is_rejected() {
    let e = error_of(&format!("{GOOD}\n[pool]\nmax_server_connections = 0\n"));
    assert_eq!(e.key, "pool.max_server_connections");
}

#[test]
fn zero_acquire_timeout_is_rejected() {
    let e = error_of(&format!("{GOOD}\n[pool]\nacquire_timeout_ms = 0\n"));
    assert_eq!(e.key, "pool.acquire_timeout_ms");
}

#[test]
fn bad_listen_address_names_the_key() {
    let e = error_of(&good_with("127.0.0.1:6432", "localhost"));
    assert_eq!(e.key, "proxy.listen");
}

#[test]
fn http_endpoint_is_off_by_default_and_its_address_is_checked() {
    let c = Config::parse(GOOD).unwrap();
    assert_eq!(c.http.listen_addr(), Ok(None));
    let on = format!("{GOOD}\n[http]\nlisten = \"127.0.0.1:7432\"\n");
    let c = Config::parse(&on).unwrap();
    assert_eq!(
        c.http.listen_addr(),
        Ok(Some("127.0.0.1:7432".parse().unwrap()))
    );
    let e = error_of(&format!("{GOOD}\n[http]\nlisten = \"localhost\"\n"));
    assert_eq!(e.key, "http.listen");
}

#[test]
fn zero_max_client_connections_is_rejected() {
    let e = error_of(&good_with(
        "listen = \"127.0.0.1:6432\"",
        "listen = \"127.0.0.1:6432\"\nmax_client_connections = 0",
    ));
    assert_eq!(e.key, "proxy.max_client_connections");
}

#[test]
fn message_size_outside_bounds_is_rejected() {
    for size in ["10", "2147483648"] {
        let e = error_of(&good_with(
            "listen = \"127.0.0.1:6432\"",
            &format!("listen = \"127.0.0.1:6432\"\nmax_message_size = {size}"),
        ));
        assert_eq!(e.key, "proxy.max_message_size", "size {size}");
    }
}

#[test]
fn worker_threads_must_be_positive() {
    let e = error_of(&good_with(
        "listen = \"127.0.0.1:6432\"",
        "listen = \"127.0.0.1:6432\"\nworker_threads = 0",
    ));
    assert_eq!(e.key, "proxy.worker_threads");
}

#[test]
fn zero_timeouts_are_rejected() {
    for key in [
        "startup_timeout_ms",
        "connect_timeout_ms",
        "replica_connect_timeout_ms",
    ] {
        let e = error_of(&good_with(
            "listen = \"127.0.0.1:6432\"",
            &format!("listen = \"127.0.0.1:6432\"\n{key} = 0"),
        ));
        assert_eq!(e.key, format!("proxy.{key}"));
    }
    let e = error_of(&format!("{GOOD}\n[monitor]\nprobe_interval_ms = 0\n"));
    assert_eq!(e.key, "monitor.probe_interval_ms");
    let e = error_of(&format!("{GOOD}\n[monitor]\nhealth_threshold = 0\n"));
    assert_eq!(e.key, "monitor.health_threshold");
    let e = error_of(&format!("{GOOD}\n[pool]\nidle_timeout_ms = 0\n"));
    assert_eq!(e.key, "pool.idle_timeout_ms");
}

#[test]
fn empty_backend_user_is_rejected() {
    let e = error_of(&good_with("user = \"postgres\"", "user = \"\""));
    assert_eq!(e.key, "backend.user");
}

#[test]
fn no_nodes_is_rejected() {
    let text = "[[users]]\nname = \"u\"\nauth = \"trust\"\n";
    assert_eq!(error_of(text).key, "nodes");
}

#[test]
fn port_zero_and_empty_host_are_rejected() {
    assert_eq!(
        error_of(&good_with("port = 5433", "port = 0")).key,
        "nodes[1].port"
    );
    assert_eq!(
        error_of(&good_with("host = \"127.0.0.1\"", "host = \"\"")).key,
        "nodes[0].host"
    );
}

#[test]
fn duplicate_node_names_are_rejected() {
    let e = error_of(&good_with("port = 5433", "port = 5433\nname = \"a\""));
    assert_eq!(e.key, "nodes[1].name");
}

#[test]
fn no_users_is_rejected() {
    let text = "[[nodes]]\nhost = \"h\"\nport = 1\n";
    assert_eq!(error_of(text).key, "users");
}

#[test]
fn auth_query_defaults_and_its_rules_are_enforced() {
    let c = Config::parse(GOOD).unwrap();
    assert!(!c.auth.enabled());
    assert_eq!(c.auth.auth_query, DEFAULT_AUTH_QUERY);
    assert_eq!(c.auth.auth_cache_ms, 30_000);
    // With users looked up on the server, none need be listed.
    let text = "[[nodes]]\nhost = \"h\"\nport = 1\n[auth]\nauth_user = \"lookup\"\n\
                auth_password = \"pw\"\nauth_cache_ms = 500\nauth_database = \"app\"\n";
    let c = Config::parse(text).unwrap();
    assert_eq!(c.auth.auth_user.as_deref(), Some("lookup"));
    assert_eq!(c.auth.cache_ttl(), Duration::from_millis(500));
    assert_eq!(c.auth.negative_ttl(), Duration::from_millis(500));
    for (line, key) in [
        ("auth_user = \"\"", "auth.auth_user"),
        ("auth_user = \"x\"\nauth_query = \" \"", "auth.auth_query"),
        ("auth_user = \"x\"\nauth_cache_ms = 0", "auth.auth_cache_ms"),
        (
            "auth_user = \"x\"\nauth_database = \"\"",
            "auth.auth_database",
        ),
    ] {
        assert_eq!(
            error_of(&format!("{GOOD}\n[auth]\n{line}\n")).key,
            key,
            "{line}"
        );
    }
}

#[test]
fn duplicate_users_are_rejected() {
    let e = error_of(&format!(
        "{GOOD}\n[[users]]\nname = \"app\"\nauth = \"trust\"\n"
    ));
    assert_eq!(e.key, "users[1].name");
}

#[test]
fn scram_without_secret_is_rejected() {
    let e = error_of(&good_with(
        "password = \"secret\"",
        "auth = \"scram-sha-256\"",
    ));
    assert_eq!(e.key, "users[0].password");
}

#[test]
fn md5_needs_a_cleartext_password() {
    let e = error_of(&good_with(
        "password = \"secret\"",
        "auth = \"md5\"\nscram_verifier = \"SCRAM-SHA-256$4096:AQIDBAUGBwgJCgsMDQ4PEA==$8rrDg00OqaiWXJ7p+sCgHEIaBSHY89ZJl3mfIsf32oY=:05L1f+yZbiN8O0AnO40Og85NNRhvzTS57naKRWCcsIA=\"",
    ));
    assert_eq!(e.key, "users[0].password");
}

#[test]
fn malformed_verifier_is_rejected() {
    let e = error_of(&good_with(
        "password = \"secret\"",
        "scram_verifier = \"SCRAM-SHA-256$nope\"",
    ));
    assert_eq!(e.key, "users[0].scram_verifier");
}

#[test]
fn trust_needs_no_password() {
    let c = Config::parse(&good_with("password = \"secret\"", "auth = \"trust\"")).unwrap();
    assert_eq!(c.users[0].auth, AuthMethod::Trust);
}

#[test]
fn unknown_keys_and_bad_auth_methods_are_rejected_with_a_line() {
    let e = error_of(&good_with("port = 5432", "port = 5432\nprot = 1"));
    assert!(e.key.starts_with("toml (line"), "{e}");
    assert!(e.rule.contains("prot"), "{e}");
    let e = error_of(&good_with("password = \"secret\"", "auth = \"ldap\""));
    assert!(e.rule.contains("ldap"), "{e}");
}

#[test]
fn shipped_example_configs_are_valid() {
    for file in ["config/palisade.toml", "config/docker.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        if let Err(e) = Config::load(&path) {
            panic!("{file}: {e}");
        }
    }
}

#[test]
fn consistency_section_parses_and_its_bounds_are_enforced() {
    let c = Config::parse(&good_with(
        "[proxy]",
        "[consistency]\nlevel = \"bounded\"\nmax_lag_ms = 200\non_no_replica = \"error\"\npartition_mode = \"available\"\n\n[proxy]",
    ))
    .unwrap();
    assert_eq!(c.consistency.level, Consistency::Bounded);
    assert_eq!(c.consistency.on_no_replica, OnNoReplica::Error);
    assert_eq!(c.consistency.partition_mode, PartitionMode::Available);
    let e = error_of(&good_with(
        "[proxy]",
        "[consistency]\ncausal_wait_ms = 60001\n\n[proxy]",
    ));
    assert_eq!(e.key, "consistency.causal_wait_ms");
    let e = error_of(&good_with(
        "[proxy]",
        "[consistency]\nmax_lag_ms = 604800001\n\n[proxy]",
    ));
    assert_eq!(e.key, "consistency.max_lag_ms");
    let e = error_of(&good_with(
        "[proxy]",
        "[consistency]\nlevel = \"fresh\"\n\n[proxy]",
    ));
    assert!(e.key.starts_with("toml"), "{e}");
}

#[test]
fn failover_section_defaults() {
    let f = Config::parse(GOOD).unwrap().failover;
    assert_eq!(f.mode, FailoverMode::Automatic);
    assert_eq!(f.failover_timeout(), Duration::from_secs(5));
    assert_eq!(f.max_lag_on_failover_bytes, 16 * 1024 * 1024);
    assert_eq!(f.state_file, None);
    assert!(!f.auto_rejoin);
    assert_eq!(f.replication_mode, ReplicationMode::Async);
    assert_eq!(f.fence_command, None);
    assert_eq!(f.rejoin_command, None);
}

#[test]
fn failover_section_parses_every_key() {
    let c = Config::parse(&format!(
        "{GOOD}\n[failover]\nmode = \"manual\"\nfailover_timeout_ms = 8000\n\
         max_lag_on_failover_bytes = 0\nstate_file = \"/var/lib/palisade/state.toml\"\n\
         auto_rejoin = true\nreplication_mode = \"sync_strict\"\n\
         fence_command = \"pg_ctl stop -D %d\"\nrejoin_command = \"rejoin.sh %n\"\n"
    ))
    .unwrap();
    let f = c.failover;
    assert_eq!(f.mode, FailoverMode::Manual);
    assert_eq!(f.failover_timeout_ms, 8000);
    assert_eq!(f.max_lag_on_failover_bytes, 0);
    assert_eq!(
        f.state_file.as_deref(),
        Some(Path::new("/var/lib/palisade/state.toml"))
    );
    assert!(f.auto_rejoin);
    assert_eq!(f.replication_mode, ReplicationMode::SyncStrict);
    assert_eq!(f.fence_command.as_deref(), Some("pg_ctl stop -D %d"));
    assert_eq!(f.rejoin_command.as_deref(), Some("rejoin.sh %n"));
    for (text, mode) in [
        ("async", ReplicationMode::Async),
        ("sync", ReplicationMode::Sync),
    ] {
        let c = Config::parse(&format!(
            "{GOOD}\n[failover]\nreplication_mode = \"{text}\"\n"
        ))
        .unwrap();
        assert_eq!(c.failover.replication_mode, mode);
    }
}

#[test]
fn unknown_failover_modes_are_rejected() {
    let e = error_of(&format!("{GOOD}\n[failover]\nmode = \"sometimes\"\n"));
    assert!(e.rule.contains("sometimes"), "{e}");
    let e = error_of(&format!(
        "{GOOD}\n[failover]\nreplication_mode = \"semi\"\n"
    ));
    assert!(e.rule.contains("semi"), "{e}");
}

#[test]
fn zero_failover_timeout_is_rejected() {
    let e = error_of(&format!("{GOOD}\n[failover]\nfailover_timeout_ms = 0\n"));
    assert_eq!(e.key, "failover.failover_timeout_ms");
    assert!(e.rule.contains("greater than 0"), "{e}");
}

#[test]
fn transaction_replay_is_off_by_default_and_a_zero_limit_is_rejected() {
    let c = Config::parse(GOOD).unwrap();
    assert!(!c.failover.transaction_replay);
    assert_eq!(c.failover.replay_limit(), None);
    let on = format!("{GOOD}\n[failover]\ntransaction_replay = true\n");
    let c = Config::parse(&on).unwrap();
    assert_eq!(c.failover.replay_limit(), Some(1_048_576));
    let e = error_of(&format!(
        "{GOOD}\n[failover]\ntransaction_replay = true\nreplay_max_bytes = 0\n"
    ));
    assert_eq!(e.key, "failover.replay_max_bytes");
    assert!(e.rule.contains("greater than 0"), "{e}");
}

#[test]
fn failover_timeout_shorter_than_the_health_threshold_is_rejected() {
    // 250 ms × 3 probes = 750 ms.
    let e = error_of(&format!(
        "{GOOD}\n[monitor]\nprobe_timeout_ms = 100\n[failover]\nfailover_timeout_ms = 700\n"
    ));
    assert_eq!(e.key, "failover.failover_timeout_ms");
    assert!(e.rule.contains("health_threshold"), "{e}");
    Config::parse(&format!(
        "{GOOD}\n[monitor]\nprobe_timeout_ms = 100\n[failover]\nfailover_timeout_ms = 750\n"
    ))
    .unwrap();
}

#[test]
fn failover_timeout_within_the_probe_timeout_is_rejected() {
    let e = error_of(&format!("{GOOD}\n[failover]\nfailover_timeout_ms = 1000\n"));
    assert_eq!(e.key, "failover.failover_timeout_ms");
    assert!(e.rule.contains("probe_timeout_ms"), "{e}");
}

#[test]
fn state_file_must_name_a_file() {
    for bad in ["", "  ", "/var/lib/palisade/", "/"] {
        let e = error_of(&format!("{GOOD}\n[failover]\nstate_file = \"{bad}\"\n"));
        assert_eq!(e.key, "failover.state_file", "{bad:?}");
    }
    let c = Config::parse(&format!(
        "{GOOD}\n[failover]\nstate_file = \"state.toml\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.failover.state_file.as_deref(),
        Some(Path::new("state.toml"))
    );
}

#[test]
fn empty_fence_and_rejoin_commands_are_rejected() {
    for key in ["fence_command", "rejoin_command"] {
        let e = error_of(&format!("{GOOD}\n[failover]\n{key} = \" \"\n"));
        assert_eq!(e.key, format!("failover.{key}"));
    }
}

#[test]
fn sync_replication_needs_two_nodes() {
    let one_node = "[[nodes]]\nhost = \"h\"\nport = 1\n[[users]]\nname = \"u\"\nauth = \"trust\"\n";
    for mode in ["sync", "sync_strict"] {
        let e = error_of(&format!(
            "{one_node}[failover]\nreplication_mode = \"{mode}\"\n"
        ));
        assert_eq!(e.key, "failover.replication_mode", "{mode}");
    }
    Config::parse(&format!(
        "{one_node}[failover]\nreplication_mode = \"async\"\n"
    ))
    .unwrap();
}

#[test]
fn limits_default_and_their_rules_are_enforced() {
    let p = Config::parse(GOOD).unwrap().proxy;
    assert_eq!(p.max_pending_logins, 100);
    assert_eq!(p.startup_timeout(), Duration::from_secs(5));
    assert_eq!(p.client_message_timeout(), Duration::from_secs(30));
    assert_eq!(
        p.client_idle_timeout(),
        None,
        "idle sessions are kept by default"
    );
    assert_eq!(
        (p.login_failure_delay_ms, p.max_login_failure_delay_ms),
        (100, 5_000)
    );
    let with = |keys: &str| {
        good_with(
            "listen = \"127.0.0.1:6432\"",
            &format!("listen = \"127.0.0.1:6432\"\n{keys}"),
        )
    };
    let c = Config::parse(&with(
        "client_idle_timeout_ms = 60000\nlogin_failure_delay_ms = 0\nmax_login_failure_delay_ms = 0",
    ))
    .unwrap();
    assert_eq!(c.proxy.client_idle_timeout(), Some(Duration::from_secs(60)));
    for (keys, key) in [
        ("max_pending_logins = 0", "proxy.max_pending_logins"),
        (
            "client_message_timeout_ms = 0",
            "proxy.client_message_timeout_ms",
        ),
        (
            "login_failure_delay_ms = 200\nmax_login_failure_delay_ms = 100",
            "proxy.max_login_failure_delay_ms",
        ),
    ] {
        assert_eq!(error_of(&with(keys)).key, key, "{keys}");
    }
}

#[test]
fn admin_section_names_who_may_use_the_console() {
    let c = Config::parse(GOOD).unwrap();
    assert_eq!(
        c.admin.access("app"),
        ConsoleAccess::None,
        "nobody by default"
    );
    let c = Config::parse(&format!(
        "{GOOD}\n[admin]\nadmin_users = [\"app\"]\nstats_users = [\"watcher\"]\n"
    ))
    .unwrap();
    assert_eq!(c.admin.access("app"), ConsoleAccess::Admin);
    assert_eq!(c.admin.access("watcher"), ConsoleAccess::Stats);
    assert_eq!(c.admin.access("other"), ConsoleAccess::None);
    let e = error_of(&format!("{GOOD}\n[admin]\nstats_users = [\"a\", \"\"]\n"));
    assert_eq!(e.key, "admin.stats_users[1]");
    let e = error_of(&format!(
        "{GOOD}\n[admin]\nadmin_users = [\"app\"]\nstats_users = [\"app\"]\n"
    ));
    assert_eq!(e.key, "admin.stats_users");
    assert!(e.rule.contains("\"app\""), "{e}");
    let e = error_of(&format!("{GOOD}\n[admin]\nusers = [\"app\"]\n"));
    assert!(e.key.starts_with("toml"), "unknown keys are errors: {e}");
}

#[test]
fn the_etcd_store_parses_and_defaults_to_the_file() {
    let f = Config::parse(GOOD).unwrap().failover;
    assert_eq!(f.store, StoreKind::File);
    let c = Config::parse(&format!(
        "{GOOD}\n[failover]\nstore = \"etcd\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n\
         etcd_prefix = \"/palisade/main\"\netcd_user = \"u\"\netcd_password = \"p\"\netcd_grace_ms = 3000\n"
    ))
    .unwrap();
    let f = c.failover;
    assert_eq!(f.store, StoreKind::Etcd);
    assert_eq!(f.etcd_endpoints, ["http://127.0.0.1:2379"]);
    assert_eq!(f.etcd_prefix, "/palisade/main");
    assert_eq!(f.etcd_grace(), std::time::Duration::from_secs(3));
}

#[test]
fn etcd_store_rules_name_their_key() {
    let etcd = "store = \"etcd\"\n";
    let ends = "etcd_endpoints = [\"http://127.0.0.1:2379\"]\n";
    for (body, key) in [
        (etcd.to_owned(), "failover.etcd_endpoints"),
        (
            format!("{etcd}{ends}etcd_prefix = \"x\"\n"),
            "failover.etcd_prefix",
        ),
        (
            format!("{etcd}{ends}etcd_prefix = \"/x/\"\n"),
            "failover.etcd_prefix",
        ),
        (
            format!("{etcd}{ends}etcd_user = \"u\"\n"),
            "failover.etcd_user",
        ),
        (
            format!("{etcd}{ends}state_file = \"s.toml\"\n"),
            "failover.state_file",
        ),
        (
            format!("{etcd}{ends}etcd_grace_ms = 0\n"),
            "failover.etcd_grace_ms",
        ),
    ] {
        let e = error_of(&format!("{GOOD}\n[failover]\n{body}"));
        assert_eq!(e.key, key, "{body}");
    }
}
