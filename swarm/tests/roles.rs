//! The cloud-init of the swarm's roles, rendered by the real `tyrell roles render`:
//! valid cloud-config, the programs' configuration contract, and a broker configuration
//! that, run by the real mosquitto, refuses anonymous clients and keeps retained messages.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use testkit::servers::{temp_dir, write_password_file, Mosquitto};

/// `tyrell roles render ROLE --set k=v ...`
fn render(role: &str, sets: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(testkit::bin("tyrell"));
    // The role files as they are in the tree, not as embedded at tyrell's last build.
    cmd.env("TYRELL_ROLES_DIR", testkit::workspace_root().join("roles"));
    cmd.args(["roles", "render", role]);
    for (k, v) in sets {
        cmd.arg("--set").arg(format!("{k}={v}"));
    }
    let out = cmd.output().expect("run tyrell");
    assert!(out.status.success(), "tyrell roles render {role}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("#cloud-config\n"), "{role}: {text}");
    text
}

/// The rendered YAML as JSON (PyYAML from the project venv, the same parser family
/// cloud-init uses).
fn yaml_to_json(text: &str) -> serde_json::Value {
    let py = testkit::venv_tool("python");
    let mut child = Command::new(py)
        .args(["-c", "import json,sys,yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "not valid YAML:\n{text}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn file<'a>(doc: &'a serde_json::Value, path: &str) -> &'a str {
    doc["write_files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("no {path} in write_files"))["content"]
        .as_str()
        .unwrap()
}

fn env_of(content: &str) -> std::collections::BTreeMap<String, String> {
    content
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn every_swarm_role_renders_valid_cloud_config() {
    let schema = testkit::system_tool("cloud-init");
    for role in ["broker", "bee", "indexer", "router", "metrics"] {
        let text = render(role, &[]);
        let doc = yaml_to_json(&text);
        assert!(doc["write_files"].is_array() && doc["runcmd"].is_array(), "{role}");
        assert!(text.len() < 16 * 1024, "{role}: user data is {} bytes, EC2 takes 16 KB", text.len());
        let f = std::env::temp_dir().join(testkit::unique("ci"));
        std::fs::write(&f, &text).unwrap();
        let out = Command::new(&schema).args(["schema", "--config-file"]).arg(&f).output().unwrap();
        assert!(
            out.status.success(),
            "{role}: cloud-init schema: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn programs_get_their_contract_and_no_secrets() {
    let sets = [
        ("broker_host", "broker.internal"),
        ("broker_port", "1884"),
        ("metrics_host", "10.0.9.9"),
        ("router_port", "8081"),
    ];
    for (role, program) in [("bee", "bee"), ("indexer", "indexer"), ("router", "router")] {
        let doc = yaml_to_json(&render(role, &sets));
        let env = env_of(file(&doc, &format!("/etc/tyrell/{program}.env")));
        assert_eq!(env["BROKER_HOST"], "broker.internal");
        assert_eq!(env["BROKER_PORT"], "1884");
        assert_eq!(env["BROKER_PASSWORD_PARAM"], "/tyrell/swarm1/broker-password");
        assert!(
            !env.contains_key("BROKER_PASSWORD") && !env.contains_key("ROUTER_TOKEN"),
            "{role}: a secret value in user data"
        );
        let unit = file(&doc, &format!("/etc/systemd/system/tyrell-{program}.service"));
        assert!(unit.contains(&format!("EnvironmentFile=/etc/tyrell/{program}.env")), "{unit}");
        assert!(unit.contains(&format!("ExecStart=/usr/local/bin/{program}")), "{unit}");
        match role {
            "bee" => {
                assert!(unit.contains("AmbientCapabilities=CAP_NET_RAW"));
                assert_eq!(env["BEE_SHARE_K"], "all", "every bee pings every target unless the role says otherwise");
            }
            "indexer" => {
                assert_eq!(env["INFLUX_URL"], "http://10.0.9.9:8086");
                assert!(env["QUEUE_URL"].starts_with("https://sqs."));
            }
            "router" => {
                assert_eq!(env["ROUTER_LISTEN"], "0.0.0.0:8081");
                assert_eq!(env["ROUTER_TOKEN_PARAM"], "/tyrell/swarm1/router-token");
            }
            _ => {}
        }
    }
    // No metrics box: the indexer delivers to SQS only.
    let doc = yaml_to_json(&render("indexer", &[("metrics_host", "")]));
    assert_eq!(env_of(file(&doc, "/etc/tyrell/indexer.env"))["INFLUX_URL"], "");
}

#[test]
fn metrics_box_provisions_influxdb_and_grafana() {
    let doc = yaml_to_json(&render("metrics", &[]));
    let dash: serde_json::Value =
        serde_json::from_str(file(&doc, "/var/lib/grafana/dashboards/tyrell/pings.json")).expect("dashboard JSON");
    let source: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(testkit::workspace_root().join("roles/metrics/dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dash, source);
    let queries: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["query"].as_str().unwrap())
        .collect();
    assert!(queries.iter().any(|q| q.contains("rtt_avg") && q.contains("\"target\", \"agent\"")));
    assert!(queries.iter().any(|q| q.contains("loss") && q.contains("\"target\", \"agent\"")));
    // The record's schema-2 fields (the flow test runs every query against influxd).
    for field in ["rtt_p99", "rtt_jitter", "ttl", "resolve_ms", "late_ms", "clock_synced"] {
        assert!(queries.iter().any(|q| q.contains(&format!("\"{field}\""))), "no panel shows {field}");
    }
    let ds = file(&doc, "/etc/grafana/provisioning/datasources/tyrell.yaml");
    assert!(ds.contains("type: influxdb") && ds.contains("dbName: tyrell") && ds.contains("uid: tyrell-influx"));
    let text = render("metrics", &[]);
    assert!(text.contains("/tyrell/metrics/grafana-password"));
}

/// The mosquitto configuration the broker role renders (by default: the brokers end the
/// clients' TLS on 8883 themselves), with only the listeners' ports and the data,
/// password and TLS file paths moved into a temp dir (the TLS files: `server.crt`,
/// `server.key`, `ca.crt` there, as tyrell-broker-tls installs them on the box).
fn broker_config(port: u16, tls_port: u16, dir: &std::path::Path) -> String {
    let doc = yaml_to_json(&render("broker", &[]));
    let conf = file(&doc, "/etc/mosquitto/mosquitto.conf");
    assert!(conf.lines().any(|l| l.trim() == "allow_anonymous false"), "{conf}");
    assert!(conf.lines().any(|l| l.trim() == "listener 1883"), "{conf}");
    assert!(conf.lines().any(|l| l.trim() == "listener 8883"), "{conf}");
    conf.lines()
        .map(|l| match (l.split_whitespace().next(), l.split_whitespace().nth(1)) {
            (Some("listener"), Some("8883")) => format!("listener {tls_port} 127.0.0.1"),
            (Some("listener"), _) => format!("listener {port} 127.0.0.1"),
            (Some("certfile"), _) => format!("certfile {}", dir.join("server.crt").display()),
            (Some("keyfile"), _) => format!("keyfile {}", dir.join("server.key").display()),
            (Some("cafile"), _) => format!("cafile {}", dir.join("ca.crt").display()),
            (Some("password_file"), _) => format!("password_file {}", dir.join("passwd").display()),
            (Some("persistence_location"), _) => format!("persistence_location {}/", dir.join("data").display()),
            (Some("pid_file"), _) => format!("pid_file {}", dir.join("mosquitto.pid").display()),
            // The bridges tyrell-broker-bridge writes (none here: the first broker).
            (Some("include_dir"), _) => {
                std::fs::create_dir_all(dir.join("tyrell.d")).unwrap();
                format!("include_dir {}", dir.join("tyrell.d").display())
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Publishes a retained `watch` with mosquitto_pub: whether it succeeded, and its stderr.
/// With `cafile`, over TLS to `localhost` (the name on the test's server certificate),
/// verifying the broker against that CA.
fn try_pub(port: u16, creds: Option<(&str, &str)>, cafile: Option<&std::path::Path>) -> (bool, String) {
    let mut cmd = Command::new(testkit::system_tool("mosquitto_pub"));
    let host = if cafile.is_some() { "localhost" } else { "127.0.0.1" };
    cmd.args(["-h", host, "-p", &port.to_string(), "-t", "watch", "-m", "127.0.0.1", "-r", "-q", "1"]);
    if let Some((u, p)) = creds {
        cmd.args(["-u", u, "-P", p]);
    }
    if let Some(ca) = cafile {
        cmd.arg("--cafile").arg(ca);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn rendered_broker_refuses_anonymous_clients_and_persists() {
    let dir = temp_dir("broker-role");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(uid_of("mosquitto")), None).unwrap();
    // On the box, /usr/local/sbin/tyrell-broker-passwd builds this file from SSM.
    write_password_file(&dir.join("passwd"), USER, PASSWORD);
    // The TLS listener's files, as the swarm's first broker box makes them.
    make_ca(&dir, "ca", "tyrell test broker CA");
    make_server_cert(&dir, "ca", "server", "DNS:localhost");
    let (port, tls_port) = (testkit::free_port(), testkit::free_port());
    let conf = broker_config(port, tls_port, &dir);
    let broker = Mosquitto::start_with_config(&conf, port, &dir);
    // The clients' port speaks TLS only, with the certificate the swarm's CA signed.
    let (ok, err) = try_pub(tls_port, Some((USER, PASSWORD)), Some(&dir.join("ca.crt")));
    assert!(ok, "TLS with the swarm's CA was refused: {err}\n{}", broker.log_text());
    assert!(!try_pub(tls_port, Some((USER, PASSWORD)), None).0, "plain MQTT was accepted on the TLS port");

    let (ok, err) = try_pub(port, None, None);
    assert!(!ok, "an anonymous client was accepted");
    assert!(err.contains("not authori"), "{err}");
    assert!(!try_pub(port, Some((USER, "wrong")), None).0, "a wrong password was accepted");
    let (ok, err) = try_pub(port, Some((USER, PASSWORD)), None);
    assert!(ok, "the swarm's user was refused: {err}\n{}", broker.log_text());

    // Persistence: the retained watch list survives a broker restart.
    broker.stop();
    drop(broker);
    let broker = Mosquitto::start_with_config(&conf, port, &dir);
    assert_eq!(mqtt_sub(port, "watch", 1, 5), vec!["watch 127.0.0.1".to_string()], "{}", broker.log_text());
    std::thread::sleep(Duration::from_millis(10));
}

fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("the mosquitto user (Debian's mosquitto package)")
}
