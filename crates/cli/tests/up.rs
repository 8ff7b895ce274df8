//! `comity up` as the README has a newcomer run it: three node processes,
//! the CLI against them, a node crash that `up` recovers from, Ctrl-C, and
//! a second `up` that finds the data where it was left.

mod common;

use common::{free_ports, run_cli, serial, signal, tail, BIN};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A `comity up` child process, killed if still running when dropped.
struct Up {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Up {
    fn spawn(data: &Path, scratch: &Path, base: u16, run: u32) -> Up {
        let out = scratch.join(format!("up-{run}.out"));
        let err = scratch.join(format!("up-{run}.err"));
        let child = Command::new(BIN)
            .arg("--data")
            .arg(data)
            .args(["up", "--port", &base.to_string()])
            .env_remove("COMITY_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn comity up");
        Up {
            child: Some(child),
            out,
            err,
        }
    }

    /// Spawns `up` and waits until it says the network is ready.
    async fn start(data: &Path, scratch: &Path, base: u16, run: u32) -> Up {
        let mut up = Up::spawn(data, scratch, base, run);
        up.wait_for(true, "Ctrl-C stops the network.", Duration::from_secs(180))
            .await;
        up
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("up running").id()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits until `up`'s standard error (or, with `stdout`, its standard
    /// output) says `what`; panics if `up` exits first.
    async fn wait_for(&mut self, stdout: bool, what: &str, timeout: Duration) {
        let path = if stdout { &self.out } else { &self.err };
        let deadline = Instant::now() + timeout;
        loop {
            if std::fs::read_to_string(path).is_ok_and(|s| s.contains(what)) {
                return;
            }
            let c = self.child.as_mut().expect("up running");
            if let Some(st) = c.try_wait().unwrap() {
                panic!("comity up exited ({st}); stderr:\n{}", tail(&self.err, 40));
            }
            assert!(
                Instant::now() < deadline,
                "comity up did not say {what:?} within {timeout:?}; stderr:\n{}",
                tail(&self.err, 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGINT (a terminal's Ctrl-C) and waits for `up` to exit.
    async fn interrupt(&mut self) -> ExitStatus {
        signal(self.pid(), libc::SIGINT);
        let mut c = self.child.take().expect("up running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "comity up did not stop within 60 s of Ctrl-C; stderr:\n{}",
                    tail(&self.err, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node processes `up` runs: pid of each `nodeI` it names.
    fn nodes(&self) -> Vec<(u32, String)> {
        children(self.pid())
            .into_iter()
            .filter_map(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                let node = cmd.split('/').find(|p| p.starts_with("node"))?;
                Some((pid, node.to_string()))
            })
            .collect()
    }
}

/// Live child processes of `parent`, from `/proc/*/stat`.
fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) && fields[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

/// A scratch directory, and the data directory `up` makes in it.
fn scratch_and_data() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix("comity-up-")
        .tempdir()
        .unwrap();
    let data = tmp.path().join("comity-data");
    (tmp, data)
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_three_nodes_restarts_a_crashed_one_and_stops_cleanly_on_ctrl_c() {
    let _serial = serial().await;
    let (tmp, data) = scratch_and_data();
    let scratch = tmp.path();
    let base = free_ports(3);
    let cli =
        |args: &'static [&'static str]| run_cli(&data, scratch, args, Duration::from_secs(60));
    let node_url = |i: u16| format!("https://127.0.0.1:{}", base + i);

    let mut up = Up::start(&data, scratch, base, 1).await;
    let mut nodes = up.nodes();
    nodes.sort_by(|a, b| a.1.cmp(&b.1));
    let names: Vec<&str> = nodes.iter().map(|n| n.1.as_str()).collect();
    assert_eq!(names, ["node0", "node1", "node2"], "{nodes:?}");

    // The README's tour.
    let put = cli(&["kv", "put", "hello", "world"]).await;
    assert!(put.status.success(), "{}", put.stderr);
    let get = cli(&["kv", "get", "hello", "--verify"]).await;
    assert!(
        get.status.success() && get.stdout.contains("world"),
        "{}\n{}",
        get.stdout,
        get.stderr
    );
    let status = cli(&["status"]).await;
    assert!(
        status.status.success() && status.stdout.contains("3 of 3 nodes answer; leader"),
        "{}\n{}",
        status.stdout,
        status.stderr
    );

    // A node crashes: `up` says so and starts it again, and it serves the
    // value written before (proved against the network identity).
    let (pid1, _) = nodes[1];
    signal(pid1, libc::SIGKILL);
    up.wait_for(
        false,
        "node1 exited (signal: 9 (SIGKILL)); restarting it",
        Duration::from_secs(30),
    )
    .await;
    let url1 = node_url(1);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let get = run_cli(
            &data,
            scratch,
            &["kv", "get", "hello", "--verify", "--node", &url1],
            Duration::from_secs(60),
        )
        .await;
        if get.status.success() && get.stdout.contains("world") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted node1 does not serve the value: {}\n{}\nup:\n{}",
            get.stdout,
            get.stderr,
            up.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let restarted = up.nodes();
    assert!(
        restarted
            .iter()
            .any(|(pid, n)| n == "node1" && *pid != pid1),
        "{restarted:?}"
    );

    // Ctrl-C stops every node cleanly.
    let st = up.interrupt().await;
    let err = up.stderr();
    assert!(
        st.success() && err.contains("stopped cleanly"),
        "{st}\n{err}"
    );
    for (pid, name) in restarted {
        assert!(
            !alive(pid),
            "{name} (pid {pid}) still runs after up stopped"
        );
    }

    // The next `up` restarts the same network, with its data.
    let mut up = Up::start(&data, scratch, base, 2).await;
    let get = cli(&["kv", "get", "hello", "--verify"]).await;
    assert!(
        get.status.success() && get.stdout.contains("world"),
        "{}\n{}",
        get.stdout,
        get.stderr
    );
    let st = up.interrupt().await;
    assert!(st.success(), "{st}\n{}", up.stderr());
}

/// A node that keeps exiting is left down after three restarts; when that
/// leaves too few to commit, `up` stops the rest and fails, naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_gives_up_on_nodes_that_keep_exiting_and_stops_without_a_majority() {
    let _serial = serial().await;
    let (tmp, data) = scratch_and_data();
    let scratch = tmp.path();
    let mut up = Up::start(&data, scratch, free_ports(3), 1).await;
    let nodes = up.nodes();
    // Nodes 1 and 2 crash and cannot start again (their configuration is gone).
    for (pid, name) in nodes.iter().filter(|n| n.1 != "node0") {
        std::fs::write(data.join(name).join("node.toml"), "not a configuration").unwrap();
        signal(*pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        if let Some(st) = up.child.as_mut().unwrap().try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "up still runs:\n{}", up.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let err = up.stderr();
    assert!(!st.success(), "{err}");
    for name in ["node1", "node2"] {
        assert_eq!(
            err.matches(&format!("{name} exited")).count(),
            4,
            "three restarts, then left down:\n{err}"
        );
        assert!(
            err.contains(&format!(
                "{name} exited (exit status: 1) again, after 3 restarts"
            )),
            "{err}"
        );
    }
    assert!(
        err.contains("too few nodes are left to commit anything"),
        "{err}"
    );
    assert!(
        err.contains("a majority of the nodes kept exiting"),
        "{err}"
    );
    for (pid, name) in nodes {
        assert!(
            !alive(pid),
            "{name} (pid {pid}) still runs after up stopped"
        );
    }
}
