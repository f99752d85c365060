//! Real Redis servers for tests, on free loopback ports: a single server that
//! can be killed and restarted on the same port with its data (also one that
//! speaks only TLS, with certificates of an authority made for it), and a
//! three-master Redis Cluster.
//!
//! Each `redis-server` runs under a small `sh` watchdog that holds the read
//! end of a pipe from the test process: when the test process exits, however
//! it exits, the pipe closes and the watchdog kills the server. Servers are
//! killed (SIGKILL) and waited for on `kill()` and on drop.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a server may take to accept connections (AOF loading included).
const READY_WITHIN: Duration = Duration::from_secs(10);
/// How many free ports a server tries before giving up.
const PORT_ATTEMPTS: usize = 10;

/// Runs `redis-server "$@"` until its standard input closes, then kills it
/// (and, when `TEMPOX_REDIS_RM` is set, removes that directory).
const WATCHDOG: &str = r#"
redis-server "$@" </dev/null &
pid=$!
cat >/dev/null
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
if [ -n "$TEMPOX_REDIS_RM" ]; then rm -rf "$TEMPOX_REDIS_RM"; fi
exit 0
"#;

/// One `redis-server` with AOF on (`appendfsync always`), no RDB snapshots, a
/// data directory and a log in a temporary directory.
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    cluster: bool,
    /// Remove the data directory when the test process exits (shared servers,
    /// which are never dropped).
    remove_at_exit: bool,
    /// The certificates of a server that speaks only TLS.
    tls: Option<Tls>,
    /// Listens on a Unix socket in its directory instead of a port.
    unix: bool,
    /// The port of the primary this server replicates.
    replica_of: Option<u16>,
    watchdog: Option<Child>,
}

/// What a TLS server and its clients use: an authority made for the server,
/// the server's certificate (for 127.0.0.1 and localhost) and a client's,
/// all signed by it, as PEM; their files are in the server's directory.
#[derive(Clone)]
pub struct Tls {
    /// Whether the server asks every client for a certificate.
    pub auth_clients: bool,
    pub ca: String,
    pub client_cert: String,
    pub client_key: String,
    server_cert: String,
    server_key: String,
}

impl Tls {
    /// New certificates; `auth_clients`: the server will ask for the client's.
    pub fn new(auth_clients: bool) -> Tls {
        Self::for_names(auth_clients, &["127.0.0.1", "localhost"])
    }

    /// The same, the server's certificate for `names` (host names or
    /// addresses).
    pub fn for_names(auth_clients: bool, names: &[&str]) -> Tls {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.distinguished_name
            .push(DnType::CommonName, "tempox test authority");
        let ca_key = KeyPair::generate().expect("a CA key");
        let ca_pem = ca.self_signed(&ca_key).expect("the CA certificate").pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |names: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>| {
            let mut params = CertificateParams::new(names).expect("certificate parameters");
            params.extended_key_usages = usages;
            let key = KeyPair::generate().expect("a key");
            let cert = params.signed_by(&key, &issuer).expect("a certificate");
            (cert.pem(), key.serialize_pem())
        };
        // Cluster nodes also present theirs as clients of each other's bus.
        let (server_cert, server_key) = leaf(
            names.iter().map(|&n| n.to_owned()).collect(),
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client_cert, client_key) = leaf(
            vec!["tempox-test-client".into()],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        Tls {
            auth_clients,
            ca: ca_pem,
            client_cert,
            client_key,
            server_cert,
            server_key,
        }
    }

    /// Writes the files into `dir`.
    fn write(&self, dir: &Path) {
        for (name, pem) in [
            ("ca.crt", &self.ca),
            ("server.crt", &self.server_cert),
            ("server.key", &self.server_key),
            ("client.crt", &self.client_cert),
            ("client.key", &self.client_key),
        ] {
            fs::write(dir.join(name), pem).expect("write a certificate file");
        }
    }

    /// `redis-cli`'s arguments to reach the server whose files are in `dir`.
    fn cli_args(dir: &Path) -> Vec<String> {
        let path = |name: &str| dir.join(name).display().to_string();
        vec![
            "--tls".into(),
            "--cacert".into(),
            path("ca.crt"),
            "--cert".into(),
            path("client.crt"),
            "--key".into(),
            path("client.key"),
        ]
    }
}

/// Why a start failed.
enum StartError {
    /// Someone else took the port: try another.
    PortTaken,
    Failed(String),
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers.
    ///
    /// Panics, with the server's log, if it does not start.
    pub fn start() -> RedisServer {
        Self::start_with(false, false, None, false)
    }

    /// Starts a server that speaks only TLS, with `tls`'s certificates.
    pub fn start_tls(tls: Tls) -> RedisServer {
        Self::start_with(false, false, Some(tls), false)
    }

    /// Starts a server that listens only on a Unix socket in its directory.
    pub fn start_unix() -> RedisServer {
        Self::start_with(false, false, None, true)
    }

    /// Starts a replica of `primary` (a plain server) and waits until it has
    /// the primary's data and follows it.
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let mut replica = Self::start_with(false, false, None, false);
        replica.cli(&["REPLICAOF", "127.0.0.1", &primary.port().to_string()]);
        replica.replica_of = Some(primary.port());
        replica.wait_synced();
        replica
    }

    /// Waits (bounded) until every replica of this primary has acknowledged
    /// all it was sent (replicas report their offset at least once a second).
    pub fn wait_acknowledged(&self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let info = self.cli(&["INFO", "replication"]);
            let field = |line: &str, name: &str| {
                line.split([',', ':'])
                    .find_map(|kv| kv.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
            };
            let sent = info
                .lines()
                .find_map(|l| l.strip_prefix("master_repl_offset:"))
                .map(|v| v.trim().to_owned());
            let replicas: Vec<Option<String>> = info
                .lines()
                .filter(|l| l.starts_with("slave") && l.contains("state="))
                .map(|l| field(l, "offset="))
                .collect();
            if !replicas.is_empty() && replicas.iter().all(|o| *o == sent) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replicas of {} did not acknowledge within {READY_WITHIN:?}:\n{info}",
                self.url()
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server's process (SIGSTOP) without closing anything: it
    /// answers nothing and acknowledges nothing until the returned guard is
    /// dropped (SIGCONT).
    pub fn pause(&self) -> Paused {
        let info = self.cli(&["INFO", "server"]);
        let pid = info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no process_id in INFO server:\n{info}"))
            .to_owned();
        signal("STOP", &pid);
        Paused { pid }
    }

    /// Waits (bounded) until this replica follows its primary: its link is
    /// up, and a key written on the primary reaches it.
    pub fn wait_synced(&self) {
        let primary = self.replica_of.expect("a replica");
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let info = self.cli(&["INFO", "replication"]);
            if info.contains("master_link_status:up") && !info.contains("master_sync_in_progress:1")
            {
                let on_primary = |args: &[&str]| {
                    stdout_of(
                        Command::new("timeout")
                            .args(["30", "redis-cli", "-p", &primary.to_string()])
                            .args(args),
                        &format!("redis-cli {args:?} on the primary"),
                    )
                };
                // Written again on every round until the replica has it.
                on_primary(&["SET", "tempox-fixture-sync", "1"]);
                let reached = self.cli(&["GET", "tempox-fixture-sync"]).trim() == "1";
                // A replica with AOF rewrites it after a sync; until that is
                // done what it applies is not yet in its files.
                let rewritten = || {
                    let persistence = self.cli(&["INFO", "persistence"]);
                    persistence.contains("aof_rewrite_in_progress:0")
                        && persistence.contains("aof_rewrite_scheduled:0")
                };
                if reached && rewritten() {
                    on_primary(&["DEL", "tempox-fixture-sync"]);
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the replica at {} did not follow its primary within {READY_WITHIN:?}:\n{info}\n{}",
                self.url(),
                self.log()
            );
            sleep(Duration::from_millis(10));
        }
    }

    fn start_with(
        cluster: bool,
        remove_at_exit: bool,
        tls: Option<Tls>,
        unix: bool,
    ) -> RedisServer {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("tempox-redis-")
                .tempdir()
                .expect("a temporary directory");
            let mut server = RedisServer {
                port: free_port(cluster),
                dir,
                cluster,
                remove_at_exit,
                tls: tls.clone(),
                unix,
                replica_of: None,
                watchdog: None,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(StartError::PortTaken) => {
                    last = server.log();
                    server.kill();
                }
                Err(StartError::Failed(why)) => panic!("{why}"),
            }
        }
        panic!("redis-server found no free port in {PORT_ATTEMPTS} attempts; last log:\n{last}");
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`, `rediss://` for a TLS server, or
    /// `unix://<socket>` for one on a Unix socket.
    pub fn url(&self) -> String {
        if self.unix {
            return format!("unix://{}", self.socket().display());
        }
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// The Unix socket of a server started with [`start_unix`](Self::start_unix).
    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The certificates of a TLS server.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// The data directory (AOF, `nodes.conf`, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether the server is running (started and not killed).
    pub fn is_running(&self) -> bool {
        self.watchdog.is_some()
    }

    /// Kills the server (SIGKILL, as a crash would) and waits until it is gone.
    /// Its data directory stays, for [`restart`](Self::restart).
    pub fn kill(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            // Closing the pipe makes the watchdog kill the server and wait for it.
            drop(watchdog.stdin.take());
            let _ = watchdog.wait();
        }
    }

    /// Kills the server if it runs, then starts it again on the same port with
    /// the same data directory (so what the AOF holds survives), and waits
    /// until it answers.
    ///
    /// Panics, with the log, if it does not come back.
    pub fn restart(&mut self) {
        self.kill();
        match self.spawn() {
            Ok(()) => {}
            Err(StartError::PortTaken) => panic!(
                "redis-server could not get port {} back on restart:\n{}",
                self.port,
                self.log()
            ),
            Err(StartError::Failed(why)) => panic!("{why}"),
        }
    }

    /// Runs `redis-cli <args>` on this server and returns what it printed.
    ///
    /// Panics if redis-cli fails.
    pub fn cli(&self, args: &[&str]) -> String {
        // Bounded: a server that stopped answering fails the test, not hangs it.
        stdout_of(
            Command::new("timeout")
                .args(["30", "redis-cli"])
                .args(self.cli_target())
                .args(args),
            &format!("redis-cli {args:?}"),
        )
    }

    /// The command line of `redis-cli` reaching this server (bounded), to
    /// run from a thread of its own.
    pub fn cli_command(&self) -> Vec<String> {
        let mut command = vec!["timeout".into(), "30".into(), "redis-cli".into()];
        command.extend(self.cli_target());
        command
    }

    /// `redis-cli`'s arguments to reach this server.
    fn cli_target(&self) -> Vec<String> {
        if self.unix {
            return vec!["-s".into(), self.socket().display().to_string()];
        }
        let mut args = vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
        ];
        args.extend(self.tls_cli_args());
        args
    }

    /// `redis-cli`'s TLS arguments for this server (none for a plain one).
    fn tls_cli_args(&self) -> Vec<String> {
        match &self.tls {
            Some(_) => Tls::cli_args(self.dir.path()),
            None => Vec::new(),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) -> Result<(), StartError> {
        let dir = self.dir.path();
        let offset = fs::metadata(self.log_path()).map_or(0, |m| m.len());
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            // A replica's first sync goes through a file and starts at once:
            // a replica that took it is online straight away (after a
            // diskless sync the primary streams writes only once the
            // replica's first acknowledgement came in, up to a second later;
            // and it waits 5 s for more replicas to share a sync).
            "--repl-diskless-sync",
            "no",
            "--repl-diskless-sync-delay",
            "0",
            "--dir",
            &dir.display().to_string(),
            "--logfile",
            &self.log_path().display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(tls) = &self.tls {
            tls.write(dir);
            let file = |name: &str| dir.join(name).display().to_string();
            // Only TLS: the plain port is closed.
            args[1] = "0".into();
            args.extend([
                "--tls-port".into(),
                self.port.to_string(),
                "--tls-cert-file".into(),
                file("server.crt"),
                "--tls-key-file".into(),
                file("server.key"),
                "--tls-ca-cert-file".into(),
                file("ca.crt"),
                "--tls-auth-clients".into(),
                if tls.auth_clients { "yes" } else { "no" }.into(),
            ]);
            if self.cluster {
                args.extend(["--tls-cluster".into(), "yes".into()]);
            }
        }
        if let Some(port) = self.replica_of {
            args.extend(["--replicaof".into(), "127.0.0.1".into(), port.to_string()]);
        }
        if self.unix {
            args[1] = "0".into();
            args.extend([
                "--unixsocket".into(),
                self.socket().display().to_string(),
                "--unixsocketperm".into(),
                "700".into(),
            ]);
        }
        if self.cluster {
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &dir.join("nodes.conf").display().to_string(),
                ]
                .map(str::to_owned),
            );
        }
        let stderr = fs::File::create(dir.join("stderr.log")).expect("stderr.log");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr);
        if self.remove_at_exit {
            command.env("TEMPOX_REDIS_RM", dir);
        }
        let watchdog = command.spawn().unwrap_or_else(|e| {
            panic!("cannot run redis-server (is it installed? scripts/test.sh installs it): {e}")
        });
        self.watchdog = Some(watchdog);
        self.wait_ready(offset)
    }

    /// Waits until this start logged that it accepts connections and the port
    /// answers `PING`. The log is ours, so a `PONG` then comes from our server.
    fn wait_ready(&self, offset: u64) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let log = self.log();
            let new = log
                .get(usize::try_from(offset).unwrap_or(0)..)
                .unwrap_or("");
            if new.contains("Address already in use")
                || new.contains("Could not create server TCP listening socket")
                || new.contains("Failed listening on port")
            {
                return Err(StartError::PortTaken);
            }
            let answers = || {
                if self.tls.is_none() && !self.unix {
                    ping(self.port)
                } else {
                    self.cli_ping()
                }
            };
            // "Ready to accept connections" on a port, "The server is now
            // ready to accept connections at <path>" on a socket.
            if new.contains("eady to accept connections") && answers() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let stderr =
                    fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
                return Err(StartError::Failed(format!(
                    "redis-server at {} was not ready within {READY_WITHIN:?}\n--- log ---\n{log}\n--- stderr ---\n{stderr}",
                    self.url()
                )));
            }
            sleep(Duration::from_millis(5));
        }
    }
}

impl RedisServer {
    /// Whether the server answers `PING` through `redis-cli` within 2 s.
    fn cli_ping(&self) -> bool {
        Command::new("timeout")
            .args(["2", "redis-cli"])
            .args(self.cli_target())
            .arg("PING")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"PONG"))
    }
}

/// A server stopped by [`RedisServer::pause`]; it runs again when this is
/// dropped.
pub struct Paused {
    pid: String,
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal("CONT", &self.pid);
    }
}

fn signal(signal: &str, pid: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three Redis Cluster masters on free loopback ports (with or without a
/// replica each), joined with `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three nodes, creates the cluster and waits until every node says
    /// `cluster_state:ok`. Stopped on drop.
    ///
    /// Panics, with the logs, if the cluster does not form.
    pub fn start() -> RedisCluster {
        Self::start_nodes(false, None, 0)
    }

    /// Starts three nodes that speak only TLS, clients and cluster bus alike,
    /// with `tls`'s certificates.
    pub fn start_tls(tls: Tls) -> RedisCluster {
        Self::start_nodes(false, Some(tls), 0)
    }

    /// Starts three masters and a replica of each, and waits until every
    /// master streams its writes to its replica.
    pub fn start_with_replicas() -> RedisCluster {
        let cluster = Self::start_nodes(false, None, 1);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let infos: Vec<String> = cluster
                .nodes
                .iter()
                .map(|n| n.cli(&["INFO", "replication"]))
                .collect();
            let masters = infos.iter().filter(|i| i.contains("role:master"));
            let ready = masters.clone().count() == 3
                && masters
                    .into_iter()
                    .all(|i| i.contains("connected_slaves:1") && i.contains("state=online"));
            if ready {
                return cluster;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster's replicas did not come online within {READY_WITHIN:?}:\n{}\n{}",
                infos.join("\n"),
                cluster.logs()
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// The nodes that are replicas.
    pub fn replicas(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|n| n.cli(&["INFO", "replication"]).contains("role:slave"))
            .collect()
    }

    /// One cluster for the whole test binary, started on first use and stopped
    /// (its files removed) when the test process exits. Share it only between
    /// tests that use distinct keys, e.g. through a key prefix each.
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(|| Self::start_nodes(true, None, 0))
    }

    /// Like [`shared`](Self::shared), a cluster that speaks only TLS (see
    /// [`start_tls`](Self::start_tls)) and asks clients for a certificate;
    /// its certificates are in `tls()`.
    pub fn shared_tls() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(|| Self::start_nodes(true, Some(Tls::new(true)), 0))
    }

    /// The certificates of a cluster that speaks TLS.
    pub fn tls(&self) -> Option<&Tls> {
        self.nodes.first().and_then(RedisServer::tls)
    }

    /// Three masters with `replicas` replicas each.
    fn start_nodes(remove_at_exit: bool, tls: Option<Tls>, replicas: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| RedisServer::start_with(true, remove_at_exit, tls.clone(), false))
            .collect();
        let cluster = RedisCluster { nodes };
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        // redis-cli waits for the nodes to meet as long as it takes: bounded here.
        let out = cluster.nodes[0].dir().join("cluster-create.log");
        let log = fs::File::create(&out).expect("cluster-create.log");
        let mut create = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .args(cluster.nodes[0].tls_cli_args())
            .stdin(Stdio::null())
            .stderr(log.try_clone().expect("cluster-create.log"))
            .stdout(log)
            .spawn()
            .expect("run redis-cli --cluster create");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = create.try_wait().expect("wait for redis-cli") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = create.kill();
                let _ = create.wait();
                break None;
            }
            sleep(Duration::from_millis(20));
        };
        if !status.is_some_and(|s| s.success()) {
            panic!(
                "redis-cli --cluster create {}:\n{}\n{}",
                if status.is_some() {
                    "failed"
                } else {
                    "did not finish within 30 s"
                },
                fs::read_to_string(&out).unwrap_or_default(),
                cluster.logs()
            );
        }
        cluster.wait_ok();
        cluster
    }

    /// Waits until every node says `cluster_state:ok`; panics with the logs
    /// after 20 s.
    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .nodes
            .iter()
            .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        {
            if Instant::now() > deadline {
                panic!(
                    "the redis cluster never reached cluster_state:ok\n{}",
                    self.logs()
                );
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Kills node `i` (SIGKILL, as a crash would); its data directory (AOF,
    /// `nodes.conf`) stays for [`restart`](Self::restart).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its port with its data, and waits until every
    /// node says `cluster_state:ok`.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
        self.wait_ok();
    }

    /// `redis://127.0.0.1:<port>/` (`rediss://` over TLS) of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- node {} ---\n{}", n.port(), n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A loopback port nobody listens on (and, for a cluster node, whose bus port
/// `port + 10000` is free too).
fn free_port(cluster: bool) -> u16 {
    for _ in 0..1000 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind a loopback port");
        if !cluster {
            return port;
        }
        if port <= 55_535 && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port");
}

/// Whether a server answers `PING` on `port` (bounded by short timeouts).
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// Runs `command` (no input) and returns what it printed; panics, naming it
/// as `what` with its stderr, unless it succeeded.
pub fn stdout_of(command: &mut Command, what: &str) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
