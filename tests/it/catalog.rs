//! The catalog of user-defined VOLATILE functions, loaded from a real
//! primary: exactly the volatile functions, bare and schema-qualified, per
//! database, reloaded on demand, and through a running proxy on an interval.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::harness::{node_url, proxy_config, start_proxy};
use crate::support::nodes::wait_until;
use crate::support::shared_cluster;
use palisade::classify::{classify, Class};
use palisade::control::{FunctionCatalog, VolatileSet};
use palisade::proxy::Proxy;
use palisade::tls::ServerTls;
use palisade::topology::{Role, Topology, TopologyHandle};
use palisade_testkit::LocalCluster;
use tokio_postgres::{Client, NoTls};

/// How long a load of a database's functions may take to be published.
const LOAD_LIMIT: Duration = Duration::from_secs(10);

/// A catalog over the demo config, with node 0 published as the healthy primary.
fn catalog(cluster: &LocalCluster) -> FunctionCatalog {
    let config = proxy_config(cluster);
    let mut topology = Topology::from_config(&config.nodes);
    topology.nodes[0].role = Role::Primary;
    topology.nodes[0].healthy = true;
    topology.leader = Some(0);
    FunctionCatalog::new(
        &config,
        ServerTls::disabled(),
        TopologyHandle::new(topology),
    )
}

/// A fresh database on the primary, dropped again when this goes out of scope
/// (also when the test fails).
struct TempDatabase<'a> {
    cluster: &'a LocalCluster,
    name: String,
}

impl<'a> TempDatabase<'a> {
    fn create(cluster: &'a LocalCluster) -> TempDatabase<'a> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "catalog_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        cluster
            .psql(0, &format!("CREATE DATABASE {name}"))
            .expect("create a test database");
        TempDatabase { cluster, name }
    }

    /// A client through `proxy`, in this database.
    async fn connect_through(&self, proxy: &Proxy) -> Client {
        let addr = proxy.local_addr();
        let (client, connection) = tokio_postgres::Config::new()
            .host(addr.ip().to_string())
            .port(addr.port())
            .user(self.cluster.superuser())
            .password(self.cluster.password())
            .dbname(&self.name)
            .connect(NoTls)
            .await
            .expect("connect through the proxy");
        tokio::spawn(connection);
        client
    }

    /// A direct connection to the primary, in this database.
    async fn connect(&self) -> Client {
        let url = node_url(self.cluster, self.cluster.primary(), &self.name);
        let (client, connection) = tokio_postgres::connect(&url, NoTls)
            .await
            .expect("connect to the primary");
        tokio::spawn(connection);
        client
    }
}

impl Drop for TempDatabase<'_> {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = self.cluster.psql(0, &sql) {
            eprintln!("could not drop {}: {e}", self.name);
        }
    }
}

fn set_of(names: &[&str]) -> HashSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn class(sql: &str, set: &VolatileSet) -> Class {
    classify(sql, &set.names).class
}

const FUNCTIONS: &str = r#"
    CREATE SCHEMA app;
    CREATE FUNCTION public.my_volatile() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1';
    CREATE FUNCTION public.my_stable() RETURNS int LANGUAGE sql STABLE AS 'SELECT 1';
    CREATE FUNCTION public.my_immutable() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1';
    CREATE FUNCTION app.app_volatile(x int) RETURNS int LANGUAGE sql AS 'SELECT x';
    CREATE FUNCTION app.app_stable() RETURNS SETOF int LANGUAGE sql STABLE AS 'SELECT 1';
    CREATE FUNCTION app.app_immutable() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1';
    CREATE FUNCTION public."MixedCase_Vol"() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1';
    CREATE PROCEDURE public.my_proc() LANGUAGE sql AS 'SELECT 1';
"#;

#[tokio::test]
async fn the_set_holds_exactly_the_volatile_functions_and_reloads_see_changes() {
    let cluster = shared_cluster();
    let db = TempDatabase::create(cluster);
    let client = db.connect().await;
    client.batch_execute(FUNCTIONS).await.unwrap();
    let catalog = catalog(cluster);

    let set = catalog.volatile(&db.name).await;
    assert_eq!(
        set.names,
        set_of(&[
            "my_volatile",
            "public.my_volatile",
            "app_volatile",
            "app.app_volatile",
            "mixedcase_vol",
            "public.mixedcase_vol",
        ]),
        "stable, immutable, procedures and pg_catalog are left out"
    );
    assert!(set.generation > 0);
    assert!(Arc::ptr_eq(&set, &catalog.current(&db.name).unwrap()));

    assert_eq!(class("select my_volatile()", &set), Class::Write);
    assert_eq!(class("select public.my_volatile()", &set), Class::Write);
    assert_eq!(class("select app.app_volatile(1)", &set), Class::Write);
    assert_eq!(class(r#"select "MixedCase_Vol"()"#, &set), Class::Write);
    assert_eq!(
        class(r#"select public."MixedCase_Vol"()"#, &set),
        Class::Write
    );
    assert_eq!(class("select my_stable()", &set), Class::Read);
    assert_eq!(class("select my_immutable()", &set), Class::Read);
    assert_eq!(class("select * from app.app_stable()", &set), Class::Read);

    // A new function is not seen until a reload...
    client
        .batch_execute(
            "CREATE FUNCTION app.later_volatile() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 2'",
        )
        .await
        .unwrap();
    assert!(!catalog
        .current(&db.name)
        .unwrap()
        .names
        .contains("later_volatile"));
    let reloaded = catalog.reload(&db.name).await;
    assert!(reloaded.names.contains("later_volatile"));
    assert!(reloaded.names.contains("app.later_volatile"));
    assert!(reloaded.generation > set.generation);
    assert!(Arc::ptr_eq(&reloaded, &catalog.current(&db.name).unwrap()));
    assert!(Arc::ptr_eq(&reloaded, &catalog.volatile(&db.name).await));
    assert_eq!(
        class("select app.later_volatile()", &reloaded),
        Class::Write
    );

    // ...an unchanged list keeps its generation (caches stay valid)...
    let again = catalog.reload(&db.name).await;
    assert_eq!(again.generation, reloaded.generation);

    // ...and a dropped function goes away with the next one.
    client
        .batch_execute("DROP FUNCTION public.my_volatile()")
        .await
        .unwrap();
    let dropped = catalog.reload(&db.name).await;
    assert!(!dropped.names.contains("my_volatile"));
    assert!(!dropped.names.contains("public.my_volatile"));
    assert!(dropped.generation > reloaded.generation);
    assert_eq!(class("select my_volatile()", &dropped), Class::Read);
}

#[tokio::test]
async fn sets_are_per_database() {
    let cluster = shared_cluster();
    let (one, two) = (TempDatabase::create(cluster), TempDatabase::create(cluster));
    one.connect()
        .await
        .batch_execute("CREATE FUNCTION only_in_one() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        .await
        .unwrap();
    let catalog = catalog(cluster);
    assert!(catalog
        .volatile(&one.name)
        .await
        .names
        .contains("only_in_one"));
    let other = catalog.volatile(&two.name).await;
    assert!(other.names.is_empty(), "{:?}", other.names);
    assert!(
        other.generation > 0,
        "an empty list that loaded is still a load"
    );
}

#[tokio::test]
async fn unknown_databases_give_an_empty_set_quickly() {
    let cluster = shared_cluster();
    let catalog = catalog(cluster);
    let names = [
        "palisade_no_such_database".to_owned(),
        "\"; DROP DATABASE postgres; --".to_owned(),
        "nul\0byte".to_owned(),
        "x".repeat(10_000),
        String::new(),
    ];
    for name in &names {
        let began = Instant::now();
        let set = tokio::time::timeout(Duration::from_secs(15), catalog.volatile(name))
            .await
            .expect("no hang on an unknown database");
        assert_eq!(*set, VolatileSet::default(), "{name:.40?}");
        assert!(catalog.current(name).is_none());
        let set = catalog.reload(name).await;
        assert_eq!(set.generation, 0);
        assert!(began.elapsed() < Duration::from_secs(15));
    }
}

#[tokio::test]
async fn concurrent_first_calls_share_one_load() {
    let cluster = shared_cluster();
    let db = TempDatabase::create(cluster);
    db.connect()
        .await
        .batch_execute("CREATE FUNCTION shared_volatile() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        .await
        .unwrap();
    let catalog = Arc::new(catalog(cluster));
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (catalog, name) = (Arc::clone(&catalog), db.name.clone());
            tokio::spawn(async move { catalog.volatile(&name).await })
        })
        .collect();
    let (first, second) = tokio::join!(catalog.volatile(&db.name), catalog.volatile(&db.name));
    let mut sets = vec![first, second];
    for call in calls {
        sets.push(call.await.unwrap());
    }
    for set in &sets {
        assert!(set.names.contains("shared_volatile"));
        assert!(Arc::ptr_eq(set, &sets[0]), "one load, one set");
    }
}

#[tokio::test]
async fn the_refresher_catches_functions_created_elsewhere_and_stops_on_shutdown() {
    let cluster = shared_cluster();
    let db = TempDatabase::create(cluster);
    let proxy = start_proxy(cluster, |c| c.routing.function_refresh_ms = 100).await;
    // A session in the database makes the proxy load its functions.
    let session = db.connect_through(&proxy).await;
    let published = || proxy.functions(&db.name);
    wait_until("the first load to be published", LOAD_LIMIT, || async {
        published().is_some()
    })
    .await;
    let first = published().unwrap();
    assert!(first.set.names.is_empty());

    db.connect()
        .await
        .batch_execute("CREATE FUNCTION made_elsewhere() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        .await
        .unwrap();
    wait_until(
        "the refresher to publish made_elsewhere",
        LOAD_LIMIT,
        || async { published().is_some_and(|p| p.set.names.contains("made_elsewhere")) },
    )
    .await;
    let caught = published().unwrap();
    assert!(caught.set.generation > first.set.generation);
    assert!(caught.generation > first.generation);

    // Shutdown awaits the proxy's named tasks, the refresher among them, with
    // no limit (sessions get at most 10 s): only a task that ignores shutdown
    // keeps it past this bound.
    drop(session);
    tokio::time::timeout(Duration::from_secs(20), proxy.shutdown())
        .await
        .expect("the proxy and its refresher stop on shutdown");
}
